//! Envelope encryption of one record version: a fresh DEK encrypts the
//! body; the KEK wraps the DEK. Both ciphertexts are bound to the record id,
//! type and version, and the body also to the KEK id and version.
//!
//! Stored layout (version 1): `[1][u32 BE length of wrapped DEK][wrapped DEK
//! envelope][body envelope]`.

use zeroize::Zeroizing;

use super::{KeyringError, Purpose};
use crate::crypto::{Aad, Envelope, Key256};

const FORMAT: u8 = 1;

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
    wrapped_dek: Envelope,
    body: Envelope,
}

fn body_aad(context: &RecordContext<'_>, wrapped_dek: &Envelope) -> Aad {
    context
        .aad("strongroom/v1/record")
        .part(wrapped_dek.key_id().as_bytes())
        .number(u64::from(wrapped_dek.key_version()))
}

impl SealedRecord {
    pub(crate) fn seal(
        kek: &Key256,
        purpose: Purpose,
        kek_version: u32,
        context: &RecordContext<'_>,
        plaintext: &[u8],
    ) -> Result<Self, KeyringError> {
        let dek = Key256::random()?;
        let wrapped_dek = Envelope::seal(
            kek,
            &purpose.key_id(),
            kek_version,
            &context.aad("strongroom/v1/dek"),
            dek.expose_secret(),
        )?;
        let body = Envelope::seal(&dek, "dek", 1, &body_aad(context, &wrapped_dek), plaintext)?;
        Ok(Self { wrapped_dek, body })
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
            .open(&dek, &body_aad(context, &self.wrapped_dek))?)
    }

    /// Moves the DEK from `old_kek` to `new_kek`. The body is re-encrypted
    /// under the same DEK because its AAD names the KEK version.
    pub(crate) fn rewrap(
        &self,
        old_kek: &Key256,
        new_kek: &Key256,
        new_version: u32,
        purpose: Purpose,
        context: &RecordContext<'_>,
    ) -> Result<Self, KeyringError> {
        let dek = self.unwrap_dek(old_kek, purpose, context)?;
        let plaintext = self
            .body
            .open(&dek, &body_aad(context, &self.wrapped_dek))?;
        let wrapped_dek = Envelope::seal(
            new_kek,
            &purpose.key_id(),
            new_version,
            &context.aad("strongroom/v1/dek"),
            dek.expose_secret(),
        )?;
        let body = Envelope::seal(&dek, "dek", 1, &body_aad(context, &wrapped_dek), &plaintext)?;
        Ok(Self { wrapped_dek, body })
    }

    /// The KEK version that wraps this record's DEK.
    pub fn kek_version(&self) -> u32 {
        self.wrapped_dek.key_version()
    }

    pub fn encode(&self) -> Vec<u8> {
        let wrapped = self.wrapped_dek.encode();
        let body = self.body.encode();
        let mut out = Vec::with_capacity(5 + wrapped.len() + body.len());
        out.push(FORMAT);
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
        if format != FORMAT {
            return Err(KeyringError::Integrity);
        }
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(KeyringError::Integrity)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| KeyringError::Integrity)?;
        let (wrapped, body) = rest.split_at_checked(len).ok_or(KeyringError::Integrity)?;
        Ok(Self {
            wrapped_dek: Envelope::decode(wrapped)?,
            body: Envelope::decode(body)?,
        })
    }
}
