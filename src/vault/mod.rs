//! Records and tokens at rest: sealing through the keyring, metadata, blind
//! indexes, token records, updates and erasure.
//!
//! Every write is returned as a transaction, so the API commits it together
//! with its audit entry. Nothing here decides who may do what (that is
//! `access`) and nothing here writes plaintext: bodies are sealed, indexes
//! and token keys are HMACs. Record metadata (owner, erasure, subject) and
//! token records (owner, target, revocation, uses) decide what a caller
//! gets, so they are sealed with the keyring's state key, bound to their
//! store key: edited or moved on disk, they are an integrity error.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::{Clock, rfc3339};
use crate::crypto::{HmacKey, random_array};
use crate::keyring::{
    Either, Keyring, KeyringError, Purpose, RecordContext, SealedRecord, UnsealedKeys,
};
use crate::records::{RecordData, RecordType};
use crate::store::{Store, StoreError, StoredAs, Transaction};
use crate::tokens::{self, TokenFormat, TokenRecord, TokenTarget};

/// Errors of the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("not found")]
    NotFound,
    #[error("erased")]
    Erased,
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored vault record is corrupt")]
    Corrupt,
    #[error("could not mint a unique token")]
    TokenSpace,
}

/// A record's public metadata, stored in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordMeta {
    pub id: String,
    pub record_type: RecordType,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The principal that created it.
    pub owner: String,
    pub subject_ref: Option<String>,
    pub erased_at: Option<String>,
    /// Its blind-index entries (store keys; HMACs, not values).
    pub index_keys: Vec<String>,
    /// Its tokens (store keys; HMACs, not tokens).
    pub token_keys: Vec<String>,
    /// The stored bytes this metadata was read from or written as.
    #[serde(skip)]
    pub(crate) stored: StoredAs,
    /// The sealed body, when it is stored with the metadata (the packed
    /// format); `None` for a tombstone or a record of the earlier format,
    /// whose body is under `rec/<id>/body`.
    #[serde(skip)]
    pub(crate) body: StoredAs,
}

/// `rec/<id>` in the packed format: metadata and sealed body under one key,
/// in the binary state encoding, with index and token keys as their
/// digests. Records written before it are JSON metadata with the body
/// under `rec/<id>/body`; both are read, and any write of a record turns
/// it into the packed format.
#[derive(Serialize, Deserialize)]
struct PackedRecord<'a> {
    id: String,
    record_type: RecordType,
    version: u64,
    created_at: String,
    updated_at: String,
    owner: String,
    subject_ref: Option<String>,
    erased_at: Option<String>,
    /// `bi/<field>/<hex digest>/<id>` as (field, digest).
    index: Vec<(String, [u8; 32])>,
    /// `tk/<hex digest>` as the digest.
    tokens: Vec<[u8; 32]>,
    /// Borrowed when written (no copy of the sealed body), owned when read.
    body: Option<Cow<'a, [u8]>>,
}

/// A token record in the binary state encoding.
#[derive(Serialize, Deserialize)]
struct PackedToken {
    generic: bool,
    id: String,
    format: TokenFormat,
    owner: String,
    created_at: i64,
    expires_at: Option<i64>,
    max_uses: Option<u64>,
    uses: u64,
    revoked: bool,
}

const INDEX_PREFIX: &str = "bi/";
/// The index field of a record's subject.
const SUBJECT_FIELD: &str = "subject_ref";
const TOKEN_PREFIX: &str = "tk/";

fn digest_of(hex_digest: &str) -> Result<[u8; 32], VaultError> {
    crate::crypto::bytes32_from_hex(hex_digest).ok_or(VaultError::Corrupt)
}

impl<'a> PackedRecord<'a> {
    fn new(meta: &RecordMeta, body: Option<&'a [u8]>) -> Result<Self, VaultError> {
        let index = meta
            .index_keys
            .iter()
            .map(|key| {
                let rest = key
                    .strip_prefix(INDEX_PREFIX)
                    .and_then(|rest| rest.strip_suffix(meta.id.as_str()))
                    .and_then(|rest| rest.strip_suffix('/'))
                    .ok_or(VaultError::Corrupt)?;
                let (field, digest) = rest.split_once('/').ok_or(VaultError::Corrupt)?;
                Ok((field.to_owned(), digest_of(digest)?))
            })
            .collect::<Result<_, VaultError>>()?;
        let tokens = meta
            .token_keys
            .iter()
            .map(|key| digest_of(key.strip_prefix(TOKEN_PREFIX).ok_or(VaultError::Corrupt)?))
            .collect::<Result<_, VaultError>>()?;
        Ok(Self {
            id: meta.id.clone(),
            record_type: meta.record_type,
            version: meta.version,
            created_at: meta.created_at.clone(),
            updated_at: meta.updated_at.clone(),
            owner: meta.owner.clone(),
            subject_ref: meta.subject_ref.clone(),
            erased_at: meta.erased_at.clone(),
            index,
            tokens,
            body: body.map(Cow::Borrowed),
        })
    }

    fn into_meta(self, stored: &[u8]) -> RecordMeta {
        let index_keys = self
            .index
            .iter()
            .map(|(field, digest)| {
                format!("{INDEX_PREFIX}{field}/{}/{}", hex::encode(digest), self.id)
            })
            .collect();
        let token_keys = self
            .tokens
            .iter()
            .map(|digest| format!("{TOKEN_PREFIX}{}", hex::encode(digest)))
            .collect();
        RecordMeta {
            id: self.id,
            record_type: self.record_type,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            owner: self.owner,
            subject_ref: self.subject_ref,
            erased_at: self.erased_at,
            index_keys,
            token_keys,
            stored: StoredAs::new(stored),
            body: StoredAs(self.body.map(|body| Arc::from(body.into_owned()))),
        }
    }
}

impl PackedToken {
    fn new(record: &TokenRecord) -> Self {
        let (generic, id) = match &record.target {
            TokenTarget::Record { id } => (false, id.clone()),
            TokenTarget::Generic { id } => (true, id.clone()),
        };
        Self {
            generic,
            id,
            format: record.format,
            owner: record.owner.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            max_uses: record.max_uses,
            uses: record.uses,
            revoked: record.revoked,
        }
    }

    fn into_record(self, stored: &[u8]) -> TokenRecord {
        TokenRecord {
            target: if self.generic {
                TokenTarget::Generic { id: self.id }
            } else {
                TokenTarget::Record { id: self.id }
            },
            format: self.format,
            owner: self.owner,
            created_at: self.created_at,
            expires_at: self.expires_at,
            max_uses: self.max_uses,
            uses: self.uses,
            revoked: self.revoked,
            stored: StoredAs::new(stored),
        }
    }
}

/// A record's sealed body: the record, and whether it is a canary
/// (`crate::canary`). The mark is inside the ciphertext, and every record
/// written since canaries exist carries it, `0` or `1`: a canary's body is
/// as long as a real record's with the same data, and its metadata, id and
/// tokens are made the same way. Bodies written before are the record
/// alone (read as not a canary).
#[derive(Serialize)]
struct MarkedBody<'a> {
    record: &'a RecordData,
    canary: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenedBody {
    record: RecordData,
    canary: u8,
}

/// A record as opened for a caller: its data, and whether it is a canary.
/// Every path that opens a record for a caller hands this to
/// `AppState::touched` (`api::canaries`), which raises the alarm for a
/// canary; nothing else may treat a canary differently.
pub struct Opened {
    pub data: RecordData,
    canary: bool,
}

impl Opened {
    /// Whether this record is a canary: known only once its body is opened.
    pub fn is_canary(&self) -> bool {
        self.canary
    }
}

/// What creating a record produces.
pub struct Created {
    pub meta: RecordMeta,
    pub token: String,
    pub pan_token: Option<String>,
    pub fingerprint: Option<String>,
    pub tx: Transaction,
}

/// Where records (their metadata with the sealed body, or an earlier
/// format's body under `rec/<id>/body`) are stored.
pub const RECORD_PREFIX: &str = "rec/";
/// Where sealed generic values are stored.
pub const GENERIC_PREFIX: &str = "gen/";

/// Where a DEK-wrapped value of the vault is, as a rewrap reads it.
enum SealedAt {
    /// In a record's (packed) metadata.
    Packed(RecordMeta),
    /// Under `rec/<id>/body`, for a record of the earlier format.
    LegacyBody(RecordMeta),
    /// A generic value.
    Generic(String),
}

fn meta_key(id: &str) -> String {
    format!("rec/{id}")
}

fn body_key(id: &str) -> String {
    format!("rec/{id}/body")
}

fn generic_key(id: &str) -> String {
    format!("{GENERIC_PREFIX}{id}")
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, VaultError> {
    serde_json::to_vec(value).map_err(|_| VaultError::Corrupt)
}

/// Whether `text` has the shape of an id this vault issues: one of
/// `prefixes` and 24 lowercase hex digits (12 random bytes).
pub fn has_issued_shape(text: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| {
        text.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() == 24
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

/// Whether `id` has the shape [`new_id`] gives a record.
fn is_record_id(id: &str) -> bool {
    has_issued_shape(id, &RecordType::ALL.map(RecordType::id_prefix))
}

fn new_id(prefix: &str) -> Result<String, VaultError> {
    Ok(format!(
        "{prefix}{}",
        hex::encode(random_array::<12>().map_err(KeyringError::from)?)
    ))
}

/// The records and tokens of one vault.
pub struct Vault {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
}

impl Vault {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            keyring,
            clock,
        }
    }

    /// The unsealed key set; its blind-index and token keys are built for
    /// each use and cannot outlive it.
    fn keys(&self) -> Result<Arc<UnsealedKeys>, VaultError> {
        Ok(self.keyring.keys()?)
    }

    /// The stored (authenticated) form of a record's metadata and sealed
    /// body (`None`: a tombstone).
    fn seal_meta(&self, meta: &RecordMeta, body: Option<&[u8]>) -> Result<Vec<u8>, VaultError> {
        let key = meta_key(&meta.id);
        Ok(self
            .keyring
            .keys()?
            .state_key()?
            .seal_binary(key.as_bytes(), &PackedRecord::new(meta, body)?)?)
    }

    /// The metadata stored under `key`, in either format.
    fn open_meta(&self, key: &str, stored: &[u8]) -> Result<RecordMeta, VaultError> {
        let opened = self
            .keyring
            .keys()?
            .state_key()?
            .open_either::<PackedRecord, RecordMeta>(key.as_bytes(), stored)?;
        Ok(match opened {
            Either::Binary(packed) => packed.into_meta(stored),
            Either::Json(meta) => RecordMeta {
                stored: StoredAs::new(stored),
                body: StoredAs::default(),
                ..meta
            },
        })
    }

    /// The stored (authenticated) form of a token record.
    fn seal_token(&self, key: &str, record: &TokenRecord) -> Result<Vec<u8>, VaultError> {
        Ok(self
            .keyring
            .keys()?
            .state_key()?
            .seal_binary(key.as_bytes(), &PackedToken::new(record))?)
    }

    fn open_token(&self, key: &str, stored: &[u8]) -> Result<TokenRecord, VaultError> {
        let opened = self
            .keyring
            .keys()?
            .state_key()?
            .open_either::<PackedToken, TokenRecord>(key.as_bytes(), stored)?;
        Ok(match opened {
            Either::Binary(packed) => packed.into_record(stored),
            Either::Json(record) => TokenRecord {
                stored: StoredAs::new(stored),
                ..record
            },
        })
    }

    /// A precondition that `key` still holds what `stored` was read from
    /// (or, for a value never read, its encoding `encode()`).
    fn still(
        key: &str,
        stored: &StoredAs,
        encode: impl FnOnce() -> Result<Vec<u8>, VaultError>,
    ) -> Result<Transaction, VaultError> {
        let bytes = match stored.bytes() {
            Some(bytes) => bytes.to_vec(),
            None => encode()?,
        };
        Ok(Transaction::new().expect(key, Some(bytes)))
    }

    fn seal(
        &self,
        id: &str,
        data: &RecordData,
        version: u64,
        canary: bool,
    ) -> Result<Vec<u8>, VaultError> {
        let record_type = data.record_type();
        let plaintext = Zeroizing::new(to_json(&MarkedBody {
            record: data,
            canary: u8::from(canary),
        })?);
        let context = RecordContext {
            id,
            record_type: record_type.as_str(),
            version,
        };
        Ok(self
            .keyring
            .seal_record(record_type.purpose(), &context, &plaintext)?
            .encode())
    }

    /// The blind-index store key of `value` for search field `field`.
    pub fn index_prefix(index_key: &HmacKey, field: &str, value: &str) -> String {
        let tag = index_key.sign(format!("strongroom/v1/blind-index\0{field}\0{value}").as_bytes());
        format!("bi/{field}/{}/", hex::encode(tag.0))
    }

    /// A record's index entries: its searchable fields' and its subject's
    /// (field `subject_ref`, which `POST /v1/search` does not offer: it is
    /// what `/v1/subjects/{subject_ref}` finds records by).
    fn index_keys(
        index_key: &HmacKey,
        id: &str,
        data: &RecordData,
        subject_ref: Option<&str>,
    ) -> Vec<String> {
        let mut keys: Vec<String> = data
            .index_values()
            .iter()
            .map(|(field, value)| format!("{}{id}", Self::index_prefix(index_key, field, value)))
            .collect();
        if let Some(subject) = subject_ref {
            keys.push(format!(
                "{}{id}",
                Self::index_prefix(index_key, SUBJECT_FIELD, subject)
            ));
        }
        keys
    }

    /// The blind-index digest of a subject (hex): what holds, closes and
    /// the subject index name it by, never the `subject_ref` itself.
    pub fn subject_digest(&self, subject_ref: &str) -> Result<String, VaultError> {
        let prefix = Self::index_prefix(&*self.keys()?.index_key()?, SUBJECT_FIELD, subject_ref);
        prefix
            .strip_prefix(&format!("{INDEX_PREFIX}{SUBJECT_FIELD}/"))
            .and_then(|rest| rest.strip_suffix('/'))
            .map(str::to_owned)
            .ok_or(VaultError::Corrupt)
    }

    /// The live records of a subject, found through the subject index and
    /// counted only where the record's authenticated metadata lists the
    /// entry (as [`Vault::search`]). Records stored before the subject
    /// index existed are found once the sweeper has indexed them
    /// ([`Vault::prepare_subject_index`]).
    pub fn subject_records(&self, subject_ref: &str) -> Result<Vec<RecordMeta>, VaultError> {
        self.search(SUBJECT_FIELD, subject_ref)
    }

    /// For a live record with a subject but no subject-index entry (stored
    /// before the index existed): the write that adds it, on condition
    /// that the record is still as read. `None`: nothing to add.
    pub fn prepare_subject_index(
        &self,
        meta: &RecordMeta,
    ) -> Result<Option<Transaction>, VaultError> {
        let (Some(subject), None) = (&meta.subject_ref, &meta.erased_at) else {
            return Ok(None);
        };
        let key = format!(
            "{}{}",
            Self::index_prefix(&*self.keys()?.index_key()?, SUBJECT_FIELD, subject),
            meta.id
        );
        if meta.index_keys.contains(&key) {
            return Ok(None);
        }
        let mut indexed = RecordMeta {
            stored: StoredAs::default(),
            ..meta.clone()
        };
        indexed.index_keys.push(key.clone());
        let stored = self.seal_meta(&indexed, meta.body.bytes())?;
        Ok(Some(
            self.expect_meta(meta)?
                .put(meta_key(&meta.id), stored)
                .put(key, Vec::new()),
        ))
    }

    /// A page of at most `limit` records' metadata after record id
    /// `after` (every record, tombstones included), and the id to go on
    /// from (`None`: the last page).
    pub fn records_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<String>), VaultError> {
        let start = after.map(meta_key);
        let page = self
            .store
            .scan(b"rec/", start.as_deref().map(str::as_bytes), limit)?;
        let next = match page.last() {
            Some((key, _)) if page.len() == limit => {
                Some(String::from_utf8_lossy(key.get(4..).unwrap_or_default()).into_owned())
            }
            _ => None,
        };
        let mut metas = Vec::with_capacity(page.len());
        for (key, bytes) in page {
            // `rec/<id>/body` of a record of the earlier format is not
            // metadata.
            let Ok(key) = std::str::from_utf8(&key) else {
                continue;
            };
            let Some(id) = key.strip_prefix("rec/").filter(|id| is_record_id(id)) else {
                continue;
            };
            let meta = self.open_meta(key, &bytes)?;
            if meta.id != id {
                return Err(VaultError::Corrupt);
            }
            metas.push(meta);
        }
        Ok((metas, next))
    }

    fn token_record(&self, target: TokenTarget, format: TokenFormat, owner: &str) -> TokenRecord {
        TokenRecord {
            target,
            format,
            owner: owner.to_owned(),
            created_at: self.clock.now().unix_timestamp(),
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked: false,
            stored: StoredAs::default(),
        }
    }

    /// Seals a new record (version 1) and mints its token, and for a card
    /// its format-preserving PAN token and fingerprint.
    pub fn prepare_create(
        &self,
        owner: &str,
        subject_ref: Option<String>,
        data: &RecordData,
    ) -> Result<Created, VaultError> {
        self.prepare_record(owner, subject_ref, data, false)
    }

    /// [`Vault::prepare_create`] for a canary: made the same way in every
    /// respect (id, tokens, metadata, index entries), marked as a canary
    /// only inside its sealed body.
    pub fn prepare_canary(
        &self,
        owner: &str,
        subject_ref: Option<String>,
        data: &RecordData,
    ) -> Result<Created, VaultError> {
        self.prepare_record(owner, subject_ref, data, true)
    }

    fn prepare_record(
        &self,
        owner: &str,
        subject_ref: Option<String>,
        data: &RecordData,
        canary: bool,
    ) -> Result<Created, VaultError> {
        let keys = self.keys()?;
        let (index_key, token_key) = (keys.index_key()?, keys.token_key()?);
        let record_type = data.record_type();
        let id = new_id(record_type.id_prefix())?;
        let body = self.seal(&id, data, 1, canary)?;
        let now = rfc3339(self.clock.now());
        let index_keys = Self::index_keys(&index_key, &id, data, subject_ref.as_deref());
        let mut tx = Transaction::new();
        for key in &index_keys {
            tx = tx.put(key.clone(), Vec::new());
        }

        let token = tokens::random_token().map_err(KeyringError::from)?;
        let token_store_key = tokens::token_key_for(&token_key, &token);
        let record = self.token_record(
            TokenTarget::Record { id: id.clone() },
            TokenFormat::Random,
            owner,
        );
        tx = tx.expect(token_store_key.clone(), None).put(
            token_store_key.clone(),
            self.seal_token(&token_store_key, &record)?,
        );
        let mut token_keys = vec![token_store_key];

        let (mut pan_token, mut fingerprint) = (None, None);
        match data {
            RecordData::Card(card) => {
                fingerprint = Some(tokens::fingerprint(&token_key, owner, &card.pan));
                if let Some((fpe, key)) = self.unique_pan_token(&token_key, &card.pan)? {
                    let record = self.token_record(
                        TokenTarget::Record { id: id.clone() },
                        TokenFormat::FormatPreserving,
                        owner,
                    );
                    tx = tx
                        .expect(key.clone(), None)
                        .put(key.clone(), self.seal_token(&key, &record)?);
                    token_keys.push(key);
                    pan_token = Some(fpe);
                }
            }
            RecordData::BankAccount(bank) => {
                fingerprint = Some(tokens::fingerprint(&token_key, owner, bank.number()));
            }
            RecordData::Kyc(_) => {}
        }
        let mut meta = RecordMeta {
            id: id.clone(),
            record_type,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
            owner: owner.to_owned(),
            subject_ref,
            erased_at: None,
            index_keys,
            token_keys,
            stored: StoredAs::default(),
            body: StoredAs::default(),
        };
        let stored = self.seal_meta(&meta, Some(&body))?;
        meta.stored = StoredAs::new(&stored);
        meta.body = StoredAs::new(&body);
        tx = tx.expect(meta_key(&id), None).put(meta_key(&id), stored);
        Ok(Created {
            meta,
            token,
            pan_token,
            fingerprint,
            tx,
        })
    }

    /// A format-preserving token no other token has, and its store key;
    /// `None` if the PAN leaves too few random digits.
    fn unique_pan_token(
        &self,
        token_key: &HmacKey,
        pan: &str,
    ) -> Result<Option<(String, String)>, VaultError> {
        for _ in 0..32 {
            let Some(candidate) =
                tokens::format_preserving_candidate(pan).map_err(KeyringError::from)?
            else {
                return Ok(None);
            };
            let key = tokens::token_key_for(token_key, &candidate);
            if self.store.get(key.as_bytes())?.is_none() {
                return Ok(Some((candidate, key)));
            }
        }
        Err(VaultError::TokenSpace)
    }

    /// A record's metadata.
    /// The metadata of a record that has not been erased
    /// ([`VaultError::Erased`] otherwise).
    pub fn live_meta(&self, id: &str) -> Result<RecordMeta, VaultError> {
        let meta = self.meta(id)?;
        match meta.erased_at {
            Some(_) => Err(VaultError::Erased),
            None => Ok(meta),
        }
    }

    pub fn meta(&self, id: &str) -> Result<RecordMeta, VaultError> {
        // Only an id of the shape this vault issues names a record: anything
        // else (say `card_…/body`, which would reach the record's body key)
        // is not found before the store is touched.
        if !is_record_id(id) {
            return Err(VaultError::NotFound);
        }
        let key = meta_key(id);
        let bytes = self
            .store
            .get(key.as_bytes())?
            .ok_or(VaultError::NotFound)?;
        let meta = self.open_meta(&key, &bytes)?;
        if meta.id != id {
            return Err(VaultError::Corrupt);
        }
        Ok(meta)
    }

    /// The sealed body (ciphertext and wrapped DEK) stored for `meta`:
    /// with the metadata, or for a record of the earlier format under
    /// `rec/<id>/body`. `None` once erased.
    pub fn sealed_body(&self, meta: &RecordMeta) -> Result<Option<Vec<u8>>, VaultError> {
        Ok(match meta.body.bytes() {
            Some(bytes) => Some(bytes.to_vec()),
            None if meta.erased_at.is_some() => None,
            None => self.store.get(body_key(&meta.id).as_bytes())?,
        })
    }

    /// Decrypts a live record. The caller answers for what it does with a
    /// canary: see [`Opened`].
    pub fn open(&self, meta: &RecordMeta) -> Result<Opened, VaultError> {
        if meta.erased_at.is_some() {
            return Err(VaultError::Erased);
        }
        // Packed records carry their body (no copy); earlier ones read it.
        let sealed = match meta.body.bytes() {
            Some(body) => SealedRecord::decode(body)?,
            None => SealedRecord::decode(&self.sealed_body(meta)?.ok_or(VaultError::Corrupt)?)?,
        };
        let context = RecordContext {
            id: &meta.id,
            record_type: meta.record_type.as_str(),
            version: meta.version,
        };
        let plaintext = self
            .keyring
            .open_record(meta.record_type.purpose(), &context, &sealed)?;
        let opened = Self::read_body(&plaintext)?;
        if opened.data.record_type() != meta.record_type {
            return Err(VaultError::Corrupt);
        }
        Ok(opened)
    }

    /// A body's plaintext: marked (`{"record":…,"canary":0|1}`), or the
    /// record alone as written before canaries.
    fn read_body(plaintext: &[u8]) -> Result<Opened, VaultError> {
        if let Ok(body) = serde_json::from_slice::<OpenedBody>(plaintext) {
            return match body.canary {
                0 | 1 => Ok(Opened {
                    data: body.record,
                    canary: body.canary == 1,
                }),
                _ => Err(VaultError::Corrupt),
            };
        }
        let data: RecordData =
            serde_json::from_slice(plaintext).map_err(|_| VaultError::Corrupt)?;
        Ok(Opened {
            data,
            canary: false,
        })
    }

    /// Writes `data` as the next version under a new DEK; the previous
    /// version's body and index entries are replaced. A canary stays one
    /// (`previous` is the version as opened).
    pub fn prepare_update(
        &self,
        meta: &RecordMeta,
        previous: &Opened,
        data: &RecordData,
        subject_ref: Option<String>,
    ) -> Result<(RecordMeta, Transaction), VaultError> {
        let keys = self.keys()?;
        let index_key = keys.index_key()?;
        let version = meta.version + 1;
        let body = self.seal(&meta.id, data, version, previous.canary)?;
        let index_keys = Self::index_keys(&index_key, &meta.id, data, subject_ref.as_deref());
        let mut updated = RecordMeta {
            version,
            updated_at: rfc3339(self.clock.now()),
            subject_ref,
            index_keys: index_keys.clone(),
            stored: StoredAs::default(),
            body: StoredAs::default(),
            ..meta.clone()
        };
        let key = meta_key(&meta.id);
        let stored = self.seal_meta(&updated, Some(&body))?;
        let mut tx = self
            .expect_meta(meta)?
            .put(key.clone(), stored.clone())
            .merge(Self::drop_legacy_body(meta));
        updated.stored = StoredAs::new(&stored);
        updated.body = StoredAs::new(&body);
        for key in meta.index_keys.iter().filter(|k| !index_keys.contains(k)) {
            tx = tx.delete(key.clone());
        }
        for key in &index_keys {
            tx = tx.put(key.clone(), Vec::new());
        }
        Ok((updated, tx))
    }

    /// Erasure: the sealed body (and with it the wrapped DEK) and the index
    /// entries are deleted; the metadata stays as a tombstone so tokens
    /// answer `erased`.
    ///
    /// The tombstone keeps no `subject_ref` in clear: only its HMAC under
    /// the blind-index key ([`Vault::erased_subject_ref`]), enough to
    /// answer "was this subject's record erased?" and nothing more.
    pub fn prepare_erase(&self, meta: &RecordMeta) -> Result<Transaction, VaultError> {
        let subject_ref = match &meta.subject_ref {
            Some(subject) => Some(self.erased_subject_ref(subject)?),
            None => None,
        };
        let erased = RecordMeta {
            erased_at: Some(rfc3339(self.clock.now())),
            index_keys: Vec::new(),
            stored: StoredAs::default(),
            body: StoredAs::default(),
            subject_ref,
            ..meta.clone()
        };
        let key = meta_key(&meta.id);
        let mut tx = self
            .expect_meta(meta)?
            .put(key.clone(), self.seal_meta(&erased, None)?)
            .merge(Self::drop_legacy_body(meta));
        for key in &meta.index_keys {
            tx = tx.delete(key.clone());
        }
        Ok(tx)
    }

    /// The sealed value at `key` (read as `value`, under
    /// [`RECORD_PREFIX`] or [`GENERIC_PREFIX`]), with its purpose and
    /// where it is; `None` for an entry that holds none (a tombstone, the
    /// metadata of a record whose body is stored apart).
    fn sealed_at(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<(Purpose, SealedAt, SealedRecord)>, VaultError> {
        let key = std::str::from_utf8(key).map_err(|_| VaultError::Corrupt)?;
        if let Some(id) = key.strip_prefix(GENERIC_PREFIX) {
            return Ok(Some((
                Purpose::Generic,
                SealedAt::Generic(id.to_owned()),
                SealedRecord::decode(value)?,
            )));
        }
        let rest = key.strip_prefix(RECORD_PREFIX).ok_or(VaultError::Corrupt)?;
        if let Some(id) = rest.strip_suffix("/body") {
            let meta = self.meta(id)?;
            if meta.erased_at.is_some() || meta.body.bytes().is_some() {
                // A body left behind: nothing opens it any more.
                return Ok(None);
            }
            let purpose = meta.record_type.purpose();
            return Ok(Some((
                purpose,
                SealedAt::LegacyBody(meta),
                SealedRecord::decode(value)?,
            )));
        }
        let meta = self.open_meta(key, value)?;
        if meta.id != rest {
            return Err(VaultError::Corrupt);
        }
        let Some(body) = meta.body.bytes() else {
            return Ok(None);
        };
        let sealed = SealedRecord::decode(body)?;
        Ok(Some((
            meta.record_type.purpose(),
            SealedAt::Packed(meta),
            sealed,
        )))
    }

    /// The KEK (purpose and version) the DEK stored at `key` (read as
    /// `value`) is wrapped under; `None` when the entry holds no DEK.
    pub fn wrapped_under(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<(Purpose, u32)>, VaultError> {
        Ok(self
            .sealed_at(key, value)?
            .map(|(purpose, _, sealed)| (purpose, sealed.kek_version())))
    }

    /// The writes that move the DEK stored at `key` (read as `value`) onto
    /// the newest KEK of its purpose, on the condition that the entry (and
    /// its record) is still as read; `None` when it already is there or
    /// holds none. The record is not decrypted, and its version and times
    /// stay as they are: a rewrap is not a change of the data.
    pub fn rewrap_entry(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Transaction>, VaultError> {
        let Some((purpose, at, sealed)) = self.sealed_at(key, value)? else {
            return Ok(None);
        };
        let rewrapped = match &at {
            SealedAt::Packed(meta) | SealedAt::LegacyBody(meta) => self.keyring.rewrap_record(
                purpose,
                &RecordContext {
                    id: &meta.id,
                    record_type: meta.record_type.as_str(),
                    version: meta.version,
                },
                &sealed,
            )?,
            SealedAt::Generic(id) => self.keyring.rewrap_record(
                purpose,
                &RecordContext {
                    id,
                    record_type: "generic",
                    version: 1,
                },
                &sealed,
            )?,
        };
        let Some(rewrapped) = rewrapped else {
            return Ok(None);
        };
        let body = rewrapped.encode();
        let tx = Transaction::new().expect(key, Some(value.to_vec()));
        Ok(Some(match at {
            SealedAt::Packed(meta) => {
                let stored = self.seal_meta(&meta, Some(&body))?;
                tx.put(key, stored)
            }
            SealedAt::LegacyBody(meta) => tx.merge(self.expect_meta(&meta)?).put(key, body),
            SealedAt::Generic(_) => tx.put(key, body),
        }))
    }

    /// What an erased record's tombstone keeps of `subject_ref`:
    /// `hmac:` and the hex HMAC-SHA256 of it under the blind-index key.
    pub fn erased_subject_ref(&self, subject_ref: &str) -> Result<String, VaultError> {
        let mut message = b"strongroom erased subject\0".to_vec();
        message.extend_from_slice(subject_ref.as_bytes());
        Ok(format!(
            "hmac:{}",
            hex::encode(self.keys()?.index_key()?.sign(&message).0)
        ))
    }

    /// Ids of live records whose `field` has the normalised `value`.
    ///
    /// An index entry is only a pointer and is not itself authenticated: a
    /// hit counts only when the record's authenticated metadata lists that
    /// very entry and the record is live. An entry copied to point at
    /// another record, or pointing at nothing, is skipped and logged, so a
    /// planted entry can neither redirect a search nor break it.
    pub fn search(&self, field: &str, value: &str) -> Result<Vec<RecordMeta>, VaultError> {
        let prefix = Self::index_prefix(&*self.keys()?.index_key()?, field, value);
        let mut hits = Vec::new();
        for (key, _) in self.store.scan_prefix(prefix.as_bytes())? {
            let id = key
                .get(prefix.len()..)
                .and_then(|id| std::str::from_utf8(id).ok())
                .unwrap_or_default();
            let listed = match self.meta(id) {
                Ok(meta) => meta
                    .index_keys
                    .iter()
                    .any(|k| k.as_bytes() == key.as_slice())
                    .then_some(meta),
                Err(VaultError::NotFound) => None,
                Err(e) => return Err(e),
            };
            match listed {
                Some(meta) if meta.erased_at.is_none() => hits.push(meta),
                Some(_) => {}
                None => tracing::warn!(
                    field,
                    "a search index entry points at no record that lists it; skipped"
                ),
            }
        }
        Ok(hits)
    }

    /// Seals a single generic value and mints its token. A deterministic
    /// token that already exists for this owner and value is returned as it
    /// is (`tx` is then empty).
    pub fn prepare_generic_token(
        &self,
        owner: &str,
        value: &[u8],
        format: TokenFormat,
        ttl_seconds: Option<u64>,
        max_uses: Option<u64>,
    ) -> Result<(String, TokenRecord, Transaction), VaultError> {
        let keys = self.keys()?;
        let token_key = keys.token_key()?;
        let token = match format {
            TokenFormat::Deterministic => {
                tokens::deterministic_token(&token_key, owner, "generic", value)
            }
            _ => tokens::random_token().map_err(KeyringError::from)?,
        };
        let key = tokens::token_key_for(&token_key, &token);
        if format == TokenFormat::Deterministic
            && let Some((_, existing)) = self.token(&token)?
        {
            return Ok((token, existing, Transaction::new()));
        }
        let id = new_id("gen_")?;
        let context = RecordContext {
            id: &id,
            record_type: "generic",
            version: 1,
        };
        let sealed = self
            .keyring
            .seal_record(Purpose::Generic, &context, value)?;
        let now = self.clock.now().unix_timestamp();
        let record = TokenRecord {
            expires_at: ttl_seconds
                .map(|t| now.saturating_add(i64::try_from(t).unwrap_or(i64::MAX))),
            max_uses,
            ..self.token_record(TokenTarget::Generic { id: id.clone() }, format, owner)
        };
        let stored = self.seal_token(&key, &record)?;
        let tx = Transaction::new()
            .put(generic_key(&id), sealed.encode())
            .expect(key.clone(), None)
            .put(key, stored);
        Ok((token, record, tx))
    }

    /// A token's record and store key.
    pub fn token(&self, token: &str) -> Result<Option<(String, TokenRecord)>, VaultError> {
        if !tokens::looks_like_token(token) {
            return Ok(None);
        }
        let key = tokens::token_key_for(&*self.keys()?.token_key()?, token);
        let Some(bytes) = self.store.get(key.as_bytes())? else {
            return Ok(None);
        };
        let record = self.open_token(&key, &bytes)?;
        Ok(Some((key, record)))
    }

    /// Decrypts a generic value.
    pub fn open_generic(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let bytes = self
            .store
            .get(generic_key(id).as_bytes())?
            .ok_or(VaultError::Erased)?;
        let sealed = SealedRecord::decode(&bytes)?;
        let context = RecordContext {
            id,
            record_type: "generic",
            version: 1,
        };
        Ok(self
            .keyring
            .open_record(Purpose::Generic, &context, &sealed)?)
    }

    /// The write that counts one use of a token with a use limit.
    pub fn prepare_use(&self, key: &str, record: &TokenRecord) -> Result<Transaction, VaultError> {
        let used = TokenRecord {
            uses: record.uses + 1,
            stored: StoredAs::default(),
            ..record.clone()
        };
        Ok(self
            .expect_token(key, record)?
            .put(key, self.seal_token(key, &used)?))
    }

    /// A precondition that the token at `key` is still `record` (not
    /// revoked, used or changed since it was read): a relay reserves it
    /// with its audit entries, so a revocation acknowledged first stops it.
    pub fn expect_token(&self, key: &str, record: &TokenRecord) -> Result<Transaction, VaultError> {
        Self::still(key, &record.stored, || self.seal_token(key, record))
    }

    /// A precondition that record `meta` is as read (not erased or changed
    /// since).
    pub fn expect_meta(&self, meta: &RecordMeta) -> Result<Transaction, VaultError> {
        Self::still(&meta_key(&meta.id), &meta.stored, || {
            self.seal_meta(meta, meta.body.bytes())
        })
    }

    /// The delete of `rec/<id>/body` for a record read in the earlier
    /// format (whose body lived there); nothing for a packed one.
    fn drop_legacy_body(meta: &RecordMeta) -> Transaction {
        if meta.body.bytes().is_none() && meta.erased_at.is_none() {
            Transaction::new().delete(body_key(&meta.id))
        } else {
            Transaction::new()
        }
    }

    /// The write that revokes a token.
    pub fn prepare_revoke(
        &self,
        key: &str,
        record: &TokenRecord,
    ) -> Result<Transaction, VaultError> {
        let revoked = TokenRecord {
            revoked: true,
            stored: StoredAs::default(),
            ..record.clone()
        };
        Ok(Transaction::new().put(key, self.seal_token(key, &revoked)?))
    }

    /// The token record stored under store key `key` (one of a record's
    /// `token_keys`).
    pub fn token_at(&self, key: &str) -> Result<Option<TokenRecord>, VaultError> {
        if !key.starts_with(TOKEN_PREFIX) {
            return Err(VaultError::Corrupt);
        }
        match self.store.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(self.open_token(key, &bytes)?)),
        }
    }

    /// The sealed generic value `id`, as stored; `None` once erased.
    pub fn sealed_generic(&self, id: &str) -> Result<Option<Vec<u8>>, VaultError> {
        if !has_issued_shape(id, &["gen_"]) {
            return Err(VaultError::NotFound);
        }
        Ok(self.store.get(generic_key(id).as_bytes())?)
    }

    /// A precondition that generic value `id` is still stored as `sealed`
    /// (not erased since it was read).
    pub fn expect_generic(id: &str, sealed: Vec<u8>) -> Transaction {
        Transaction::new().expect(generic_key(id), Some(sealed))
    }

    /// The erasure of a generic value: its sealed value (and with it the
    /// wrapped DEK) is deleted and its token revoked, on condition that the
    /// token is still as read. The token then answers `erased`
    /// ([`Vault::is_erased_generic`]).
    pub fn prepare_erase_generic(
        &self,
        key: &str,
        record: &TokenRecord,
    ) -> Result<Transaction, VaultError> {
        let TokenTarget::Generic { id } = &record.target else {
            return Err(VaultError::NotFound);
        };
        Ok(self
            .expect_token(key, record)?
            .merge(self.prepare_revoke(key, record)?)
            .delete(generic_key(id)))
    }

    /// Whether `record` is a generic value's token whose value was erased:
    /// revoked (authenticated) and its sealed value gone.
    pub fn is_erased_generic(&self, record: &TokenRecord) -> Result<bool, VaultError> {
        match &record.target {
            TokenTarget::Generic { id } if record.revoked => {
                Ok(self.store.get(generic_key(id).as_bytes())?.is_none())
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A marked body reads back with its mark; a body written before
    /// canaries (the record alone) reads as not a canary; any other mark is
    /// corrupt. A canary's body is exactly as long as a real one's.
    #[test]
    fn bodies_carry_the_canary_mark_at_the_same_length() {
        let record = RecordData::parse(
            RecordType::Kyc,
            serde_json::json!({"legal_name": {"given": "Ada", "family": "Lovelace"}, "date_of_birth": "1815-12-10"}),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let real = to_json(&MarkedBody {
            record: &record,
            canary: 0,
        })
        .unwrap();
        let canary = to_json(&MarkedBody {
            record: &record,
            canary: 1,
        })
        .unwrap();
        assert_eq!(real.len(), canary.len());
        assert!(!Vault::read_body(&real).unwrap().is_canary());
        assert!(Vault::read_body(&canary).unwrap().is_canary());
        assert!(
            Vault::read_body(&to_json(&record).unwrap())
                .is_ok_and(|o| !o.is_canary() && o.data == record)
        );
        let odd = to_json(&MarkedBody {
            record: &record,
            canary: 2,
        })
        .unwrap();
        assert!(matches!(Vault::read_body(&odd), Err(VaultError::Corrupt)));
    }

    /// postcard stores an enum variant by its position and a struct's
    /// fields in order. These stored (and MAC'd) forms are pinned byte for
    /// byte, so reordering `RecordType`, `TokenFormat` or a field fails
    /// here instead of changing what stored values mean.
    #[test]
    fn the_packed_forms_are_pinned() {
        let token = PackedToken {
            generic: false,
            id: "card_1".into(),
            format: TokenFormat::FormatPreserving,
            owner: "prn_1".into(),
            created_at: 5,
            expires_at: Some(7),
            max_uses: None,
            uses: 2,
            revoked: true,
        };
        assert_eq!(
            hex::encode(postcard::to_allocvec(&token).unwrap()),
            // generic, "card_1", format 2, "prn_1", 5 (zigzag 10),
            // Some(7) (zigzag 14), None, 2, true
            "00".to_owned()
                + "06636172645f31"
                + "02"
                + "0570726e5f31"
                + "0a"
                + "010e"
                + "00"
                + "02"
                + "01"
        );
        for (format, index) in [
            (TokenFormat::Random, 0u8),
            (TokenFormat::Deterministic, 1),
            (TokenFormat::FormatPreserving, 2),
        ] {
            assert_eq!(postcard::to_allocvec(&format).unwrap(), [index]);
        }
        for (record_type, index) in [
            (RecordType::Card, 0u8),
            (RecordType::BankAccount, 1),
            (RecordType::Kyc, 2),
        ] {
            assert_eq!(postcard::to_allocvec(&record_type).unwrap(), [index]);
        }
        let record = PackedRecord {
            id: "kyc_1".into(),
            record_type: RecordType::Kyc,
            version: 3,
            created_at: "a".into(),
            updated_at: "b".into(),
            owner: "prn_1".into(),
            subject_ref: Some("s".into()),
            erased_at: None,
            index: vec![("pan".into(), [7; 32])],
            tokens: vec![[9; 32]],
            body: Some(Cow::Owned(vec![1, 2])),
        };
        assert_eq!(
            hex::encode(postcard::to_allocvec(&record).unwrap()),
            "056b79635f31".to_owned()
                + "02"
                + "03"
                + "0161"
                + "0162"
                + "0570726e5f31"
                + "010173"
                + "00"
                + "01"
                + "0370616e"
                + &"07".repeat(32)
                + "01"
                + &"09".repeat(32)
                + "01020102"
        );
    }
}
