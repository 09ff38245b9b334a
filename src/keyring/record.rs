//! Envelope encryption of one record version: a fresh DEK encrypts the
//! body; the KEK wraps the DEK. Both ciphertexts are bound to the record id,
//! type and version, and the body also to the KEK id and version.
//!
//! Stored layout: `[format][u32 BE length of wrapped DEK][wrapped DEK
//! envelope][body envelope]`. In format 1 the body's AAD also names the
//! KEK version, so moving the DEK to another KEK re-encrypted the body; in
//! format 2 (written since issue 14) it does not, so a rewrap only unwraps
//! and wraps the DEK and never decrypts the record. The body stays bound
//! to the DEK all the same: another wrapped DEK opens to another key.

use zeroize::Zeroizing;

use super::{KeyringError, Purpose};
use crate::crypto::{Aad, Envelope, Key256};

/// The format written; [`FORMAT_KEK_BOUND`] is still read.
const FORMAT: u8 = 2;
/// The first format, whose body AAD names the KEK version.
const FORMAT_KEK_BOUND: u8 = 1;

/// Where a ciphertext lives: moving it anywhere else fails authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordContext<'a> {
    pub id: &'a str,
    pub record_type: &'a str,
    pub version: u64,
}

impl RecordContext<'_> {
    fn aad(&self, domain: &'static str) -> Aad {
        Aad::new(domain)
            .part(self.id.as_bytes())
            .part(self.record_type.as_bytes())
            .number(self.version)
    }
}

/// A record version at rest: wrapped DEK and encrypted body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    format: u8,
    wrapped_dek: Envelope,
    body: Envelope,
}

fn body_aad(format: u8, context: &RecordContext<'_>, wrapped_dek: &Envelope) -> Aad {
    if format == FORMAT_KEK_BOUND {
        context
            .aad("strongroom/v1/record")
            .part(wrapped_dek.key_id().as_bytes())
            .number(u64::from(wrapped_dek.key_version()))
    } else {
        context.aad("strongroom/v2/record")
    }
}

fn wrap_dek(
    kek: &Key256,
    purpose: Purpose,
    kek_version: u32,
    context: &RecordContext<'_>,
    dek: &Key256,
) -> Result<Envelope, KeyringError> {
    Ok(Envelope::seal(
        kek,
        &purpose.key_id(),
        kek_version,
        &context.aad("strongroom/v1/dek"),
        dek.expose_secret(),
    )?)
}

impl SealedRecord {
    pub(crate) fn seal(
        kek: &Key256,
        purpose: Purpose,
        kek_version: u32,
        context: &RecordContext<'_>,
        plaintext: &[u8],
    ) -> Result<Self, KeyringError> {
        Self::seal_as(FORMAT, kek, purpose, kek_version, context, plaintext)
    }

    fn seal_as(
        format: u8,
        kek: &Key256,
        purpose: Purpose,
        kek_version: u32,
        context: &RecordContext<'_>,
        plaintext: &[u8],
    ) -> Result<Self, KeyringError> {
        let dek = Key256::random()?;
        let wrapped_dek = wrap_dek(kek, purpose, kek_version, context, &dek)?;
        let body = Envelope::seal(
            &dek,
            "dek",
            1,
            &body_aad(format, context, &wrapped_dek),
            plaintext,
        )?;
        Ok(Self {
            format,
            wrapped_dek,
            body,
        })
    }

    fn unwrap_dek(
        &self,
        kek: &Key256,
        purpose: Purpose,
        context: &RecordContext<'_>,
    ) -> Result<Key256, KeyringError> {
        if self.wrapped_dek.key_id() != purpose.key_id() {
            return Err(KeyringError::Integrity);
        }
        let dek_bytes = self
            .wrapped_dek
            .open(kek, &context.aad("strongroom/v1/dek"))?;
        Ok(Key256::try_from_slice(&dek_bytes)?)
    }

    pub(crate) fn open(
        &self,
        kek: &Key256,
        purpose: Purpose,
        context: &RecordContext<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let dek = self.unwrap_dek(kek, purpose, context)?;
        Ok(self
            .body
            .open(&dek, &body_aad(self.format, context, &self.wrapped_dek))?)
    }

    /// Moves the DEK from `old_kek` to `new_kek`. The body is left as it
    /// is, never decrypted; only a record of the first format, whose body
    /// AAD names the KEK version, has its body decrypted and encrypted
    /// again under the same DEK, once, into the current format.
    pub(crate) fn rewrap(
        &self,
        old_kek: &Key256,
        new_kek: &Key256,
        new_version: u32,
        purpose: Purpose,
        context: &RecordContext<'_>,
    ) -> Result<Self, KeyringError> {
        let dek = self.unwrap_dek(old_kek, purpose, context)?;
        let wrapped_dek = wrap_dek(new_kek, purpose, new_version, context, &dek)?;
        let body = if self.format == FORMAT_KEK_BOUND {
            let plaintext = self
                .body
                .open(&dek, &body_aad(self.format, context, &self.wrapped_dek))?;
            Envelope::seal(
                &dek,
                "dek",
                1,
                &body_aad(FORMAT, context, &wrapped_dek),
                &plaintext,
            )?
        } else {
            self.body.clone()
        };
        Ok(Self {
            format: FORMAT,
            wrapped_dek,
            body,
        })
    }

    /// The KEK version that wraps this record's DEK.
    pub fn kek_version(&self) -> u32 {
        self.wrapped_dek.key_version()
    }

    pub fn encode(&self) -> Vec<u8> {
        let wrapped = self.wrapped_dek.encode();
        let body = self.body.encode();
        let mut out = Vec::with_capacity(5 + wrapped.len() + body.len());
        out.push(self.format);
        // A wrapped 32-byte DEK envelope is well under u32::MAX bytes.
        out.extend_from_slice(
            &u32::try_from(wrapped.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyringError> {
        let (&format, rest) = bytes.split_first().ok_or(KeyringError::Integrity)?;
        if format != FORMAT && format != FORMAT_KEK_BOUND {
            return Err(KeyringError::Integrity);
        }
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(KeyringError::Integrity)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| KeyringError::Integrity)?;
        let (wrapped, body) = rest.split_at_checked(len).ok_or(KeyringError::Integrity)?;
        Ok(Self {
            format,
            wrapped_dek: Envelope::decode(wrapped)?,
            body: Envelope::decode(body)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CONTEXT: RecordContext<'static> = RecordContext {
        id: "card_0123456789abcdef01234567",
        record_type: "card",
        version: 3,
    };

    /// A rewrap moves the DEK and leaves the encrypted body byte for byte:
    /// the record is never decrypted for it.
    #[test]
    fn a_rewrap_moves_the_dek_and_leaves_the_body_as_it_is() {
        let (old, new) = (Key256::random().unwrap(), Key256::random().unwrap());
        let sealed = SealedRecord::seal(&old, Purpose::Card, 1, &CONTEXT, b"pan").unwrap();
        let moved = sealed
            .rewrap(&old, &new, 2, Purpose::Card, &CONTEXT)
            .unwrap();
        assert_eq!(moved.body, sealed.body);
        assert_ne!(moved.wrapped_dek, sealed.wrapped_dek);
        assert_eq!(moved.kek_version(), 2);
        let decoded = SealedRecord::decode(&moved.encode()).unwrap();
        assert_eq!(
            &*decoded.open(&new, Purpose::Card, &CONTEXT).unwrap(),
            b"pan"
        );
        assert!(decoded.open(&old, Purpose::Card, &CONTEXT).is_err());
        // Still bound to its place.
        let elsewhere = RecordContext {
            version: 4,
            ..CONTEXT
        };
        assert!(decoded.open(&new, Purpose::Card, &elsewhere).is_err());
    }

    /// A record of the first format (whose body AAD names the KEK version)
    /// still opens, and a rewrap brings it into the current format once.
    #[test]
    fn a_first_format_record_opens_and_is_rewrapped_into_the_current_one() {
        let (old, new) = (Key256::random().unwrap(), Key256::random().unwrap());
        let first =
            SealedRecord::seal_as(FORMAT_KEK_BOUND, &old, Purpose::Kyc, 1, &CONTEXT, b"kyc")
                .unwrap();
        let stored = first.encode();
        assert_eq!(stored[0], 1);
        let read = SealedRecord::decode(&stored).unwrap();
        assert_eq!(&*read.open(&old, Purpose::Kyc, &CONTEXT).unwrap(), b"kyc");
        let moved = read.rewrap(&old, &new, 2, Purpose::Kyc, &CONTEXT).unwrap();
        assert_eq!(moved.encode()[0], FORMAT);
        assert_eq!(&*moved.open(&new, Purpose::Kyc, &CONTEXT).unwrap(), b"kyc");
        // A first-format body under a second-format label does not open.
        let mut relabelled = stored.clone();
        relabelled[0] = FORMAT;
        let relabelled = SealedRecord::decode(&relabelled).unwrap();
        assert!(relabelled.open(&old, Purpose::Kyc, &CONTEXT).is_err());
        assert!(SealedRecord::decode(&[3, 0, 0, 0, 0]).is_err());
    }
}
