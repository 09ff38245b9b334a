//! Ephemeral card verification codes (PCI DSS 3.3.1.2: never stored after
//! authorization). A CVC attached to a card is held here, in this process's
//! memory only, until its first use by the relay, its expiry, a seal or a
//! restart, whichever comes first.
//!
//! Each CVC is sealed with AES-256-GCM under a key made from the system RNG
//! when the store is made (dropped at every [`CvcStore::clear`], and made
//! anew by the next put): never
//! derived from the root key, never written anywhere, so nothing on disk or
//! in a backup can ever open one. The AAD is the card id, so a ciphertext
//! moved to another card does not open. Nonces are a counter under that
//! key (unique by construction; the key and the counter are replaced
//! together). Plaintext exists only in zeroizing buffers. This module must
//! never log, audit or persist a CVC, nor hand one out except through
//! [`CvcStore::take`], which removes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::crypto::{Key256, NONCE_LEN, aead_open, aead_seal};

/// Default time a CVC is held, in seconds (config `[collect]
/// cvc_ttl_seconds`).
pub const DEFAULT_TTL_SECONDS: u32 = 900;
/// The longest a CVC may be held, in seconds.
pub const MAX_TTL_SECONDS: u32 = 3600;
/// Default number of CVCs held at once (config `[collect] max_cvcs`).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Why a CVC was not held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CvcError {
    /// Not 3 or 4 ASCII digits. The value is never repeated.
    #[error("a CVC is 3 or 4 digits")]
    Invalid,
    /// As many CVCs as allowed are held; one expires within
    /// `retry_after_secs`.
    #[error("too many CVCs held")]
    Full { retry_after_secs: u64 },
    /// No process key (the system RNG failed).
    #[error("no CVC key")]
    Unavailable,
}

/// The process-only key and the next nonce under it.
struct ProcessKey {
    key: Key256,
    next_nonce: u64,
}

impl ProcessKey {
    fn fresh() -> Option<Self> {
        Some(Self {
            key: Key256::random().ok()?,
            next_nonce: 0,
        })
    }

    /// A nonce never used under this key: a counter, big-endian.
    fn nonce(&mut self) -> Option<[u8; NONCE_LEN]> {
        let n = self.next_nonce;
        self.next_nonce = n.checked_add(1)?;
        let mut nonce = [0u8; NONCE_LEN];
        let counter = n.to_be_bytes();
        for (slot, byte) in nonce.iter_mut().rev().zip(counter.iter().rev()) {
            *slot = *byte;
        }
        Some(nonce)
    }
}

/// One held CVC: ciphertext and tag, its nonce, when it goes.
struct Held {
    nonce: [u8; NONCE_LEN],
    sealed: Vec<u8>,
    expires: OffsetDateTime,
    /// Which put this is, so the expiry queue only drops its own entry.
    serial: u64,
}

struct Inner {
    key: Option<ProcessKey>,
    held: HashMap<String, Held>,
    /// (expiry, serial) → card id: the order in which held CVCs go.
    expiries: BTreeMap<(OffsetDateTime, u64), String>,
    next_serial: u64,
    /// Bumped by every [`CvcStore::clear`] (a seal): a CVC taken before
    /// it is never given back after it.
    generation: u64,
}

impl Inner {
    /// Forgets every CVC whose time is up.
    fn drop_expired(&mut self, now: OffsetDateTime) {
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, serial), card_id) = entry.remove_entry();
            if self.held.get(&card_id).is_some_and(|h| h.serial == serial) {
                self.held.remove(&card_id);
            }
        }
    }

    fn forget(&mut self, card_id: &str) -> Option<Held> {
        let held = self.held.remove(card_id)?;
        self.expiries.remove(&(held.expires, held.serial));
        Some(held)
    }
}

/// A CVC taken for a relay: its value, when it would have expired, and
/// the store's generation when it was taken (see [`CvcStore::put_back`]).
pub struct TakenCvc {
    pub value: Zeroizing<String>,
    expires: OffsetDateTime,
    generation: u64,
}

/// The CVCs this process holds, each for a card id.
pub struct CvcStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    capacity: usize,
}

impl std::fmt::Debug for CvcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CvcStore")
            .field("held", &self.len())
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Whether `cvc` has the shape of any CVC: 3 or 4 ASCII digits.
fn well_formed(cvc: &str) -> bool {
    (3..=4).contains(&cvc.len()) && cvc.bytes().all(|b| b.is_ascii_digit())
}

impl CvcStore {
    /// A store that holds each CVC for `ttl` (at most [`MAX_TTL_SECONDS`];
    /// longer is cut to it) and at most `capacity` at once, under a fresh
    /// random key.
    pub fn new(clock: Arc<dyn Clock>, ttl: Duration, capacity: usize) -> Self {
        let max = Duration::seconds(i64::from(MAX_TTL_SECONDS));
        Self {
            inner: Mutex::new(Inner {
                key: ProcessKey::fresh(),
                held: HashMap::new(),
                expiries: BTreeMap::new(),
                next_serial: 0,
                generation: 0,
            }),
            clock,
            ttl: ttl.clamp(Duration::seconds(1), max),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `cvc` for `card_id` until [`CvcStore::take`], expiry or
    /// [`CvcStore::clear`]; a CVC already held for the card is replaced.
    /// Checks only the shape (3 or 4 digits); which length a card needs is
    /// the caller's business (it knows the brand).
    pub fn put(&self, card_id: &str, cvc: &str) -> Result<(), CvcError> {
        let expires = self.clock.now() + self.ttl;
        self.hold(card_id, cvc, expires, None)
    }

    /// Gives back a CVC [`CvcStore::take_until`] took, for a relay refused
    /// before anything was sent, with the expiry it had: giving back never
    /// makes a CVC live longer. Nothing happens if it has expired since, if
    /// a new CVC was attached for the card meanwhile (that one wins), or if
    /// the store was cleared (a seal) since it was taken: a seal forgets
    /// every CVC, in flight or not.
    pub fn put_back(&self, card_id: &str, taken: &TakenCvc) -> Result<(), CvcError> {
        if taken.expires <= self.clock.now() {
            return Ok(());
        }
        self.hold(card_id, &taken.value, taken.expires, Some(taken.generation))
    }

    fn hold(
        &self,
        card_id: &str,
        cvc: &str,
        expires: OffsetDateTime,
        given_back_from: Option<u64>,
    ) -> Result<(), CvcError> {
        if !well_formed(cvc) {
            return Err(CvcError::Invalid);
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.drop_expired(now);
        if let Some(generation) = given_back_from
            && (generation != inner.generation
                || inner.key.is_none()
                || inner.held.contains_key(card_id))
        {
            return Ok(());
        }
        if !inner.held.contains_key(card_id) && inner.held.len() >= self.capacity {
            let oldest = inner.expiries.keys().next().map_or(now, |(t, _)| *t);
            let wait = (oldest - now).whole_seconds();
            return Err(CvcError::Full {
                retry_after_secs: u64::try_from(wait).unwrap_or(0).max(1),
            });
        }
        if inner.key.is_none() {
            inner.key = ProcessKey::fresh();
        }
        let process_key = inner.key.as_mut().ok_or(CvcError::Unavailable)?;
        let nonce = process_key.nonce().ok_or(CvcError::Unavailable)?;
        let sealed = aead_seal(&process_key.key, &nonce, card_id.as_bytes(), cvc.as_bytes())
            .map_err(|_| CvcError::Unavailable)?;
        inner.forget(card_id);
        let serial = inner.next_serial;
        inner.next_serial = serial.wrapping_add(1);
        inner.expiries.insert((expires, serial), card_id.to_owned());
        inner.held.insert(
            card_id.to_owned(),
            Held {
                nonce,
                sealed,
                expires,
                serial,
            },
        );
        Ok(())
    }

    /// The CVC held for `card_id`, removed (single use); `None` if none is
    /// held, or it expired.
    pub fn take(&self, card_id: &str) -> Option<Zeroizing<String>> {
        self.take_until(card_id).map(|taken| taken.value)
    }

    /// [`CvcStore::take`], with the time the CVC would have expired (for
    /// [`CvcStore::put_back`]).
    pub fn take_until(&self, card_id: &str) -> Option<TakenCvc> {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.drop_expired(now);
        let held = inner.forget(card_id)?;
        let key = inner.key.as_ref()?;
        let plain = aead_open(&key.key, &held.nonce, card_id.as_bytes(), &held.sealed).ok()?;
        let generation = inner.generation;
        drop(inner);
        // `plain` zeroizes itself; the string is a zeroizing copy.
        let text = std::str::from_utf8(&plain).ok()?;
        Some(TakenCvc {
            value: Zeroizing::new(text.to_owned()),
            expires: held.expires,
            generation,
        })
    }

    /// Forgets the CVC held for `card_id`, if any (a put whose audit entry
    /// could not be written).
    pub fn discard(&self, card_id: &str) {
        self.lock().forget(card_id);
    }

    /// Whether a CVC is held for `card_id` now (it is not returned).
    pub fn holds(&self, card_id: &str) -> bool {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.drop_expired(now);
        inner.held.contains_key(card_id)
    }

    /// How many CVCs are held now.
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.drop_expired(now);
        inner.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every CVC and drops the key (on seal): even a ciphertext
    /// left in freed memory can no longer be opened, and a sealed server
    /// holds no CVC key. The next [`CvcStore::put`] makes a new one.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.held.clear();
        inner.expiries.clear();
        inner.key = None;
        inner.generation = inner.generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use time::macros::datetime;

    fn store(capacity: usize) -> (Arc<ManualClock>, CvcStore) {
        let clock = Arc::new(ManualClock::new(datetime!(2026-11-29 12:00 UTC)));
        let cvcs = CvcStore::new(clock.clone(), Duration::seconds(900), capacity);
        (clock, cvcs)
    }

    #[test]
    fn a_cvc_is_taken_once() {
        let (_, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        assert!(cvcs.holds("card_1"));
        assert_eq!(
            cvcs.take("card_1").as_deref().map(String::as_str),
            Some("123")
        );
        assert_eq!(cvcs.take("card_1"), None);
        assert!(!cvcs.holds("card_1"));
        assert!(cvcs.is_empty());
    }

    /// A CVC given back after a refused relay keeps its first expiry, and
    /// never replaces one attached meanwhile.
    #[test]
    fn a_cvc_given_back_lives_no_longer_than_it_would_have() {
        let (clock, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        clock.advance(Duration::seconds(600));
        let taken = cvcs.take_until("card_1").unwrap();
        cvcs.put_back("card_1", &taken).unwrap();
        clock.advance(Duration::seconds(300));
        assert_eq!(cvcs.take("card_1"), None, "expired at its first expiry");

        cvcs.put("card_2", "123").unwrap();
        let taken = cvcs.take_until("card_2").unwrap();
        cvcs.put("card_2", "9876").unwrap();
        cvcs.put_back("card_2", &taken).unwrap();
        assert_eq!(
            cvcs.take("card_2").as_deref().map(String::as_str),
            Some("9876")
        );

        cvcs.put("card_3", "123").unwrap();
        let taken = cvcs.take_until("card_3").unwrap();
        clock.advance(Duration::seconds(900));
        cvcs.put_back("card_3", &taken).unwrap();
        assert!(cvcs.is_empty(), "an expired CVC is not given back");

        // Taken, then a seal (and a new CVC for another card): the taken
        // one is not given back.
        cvcs.put("card_4", "123").unwrap();
        let taken = cvcs.take_until("card_4").unwrap();
        cvcs.clear();
        cvcs.put("card_5", "456").unwrap();
        cvcs.put_back("card_4", &taken).unwrap();
        assert!(!cvcs.holds("card_4"), "a seal forgets CVCs in flight too");
    }

    #[test]
    fn a_new_cvc_replaces_the_old_one() {
        let (_, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        cvcs.put("card_1", "4567").unwrap();
        assert_eq!(cvcs.len(), 1);
        assert_eq!(
            cvcs.take("card_1").as_deref().map(String::as_str),
            Some("4567")
        );
        assert_eq!(cvcs.take("card_1"), None);
    }

    #[test]
    fn gone_at_expiry_and_not_a_moment_before() {
        let (clock, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        cvcs.put("card_2", "321").unwrap();
        clock.advance(Duration::seconds(899));
        assert_eq!(
            cvcs.take("card_2").as_deref().map(String::as_str),
            Some("321")
        );
        clock.advance(Duration::seconds(1));
        assert_eq!(cvcs.take("card_1"), None);
        assert!(cvcs.is_empty());
        // A replacement restarts the clock; the old entry's expiry does not
        // remove the new one.
        cvcs.put("card_3", "111").unwrap();
        clock.advance(Duration::seconds(600));
        cvcs.put("card_3", "222").unwrap();
        clock.advance(Duration::seconds(400));
        assert_eq!(
            cvcs.take("card_3").as_deref().map(String::as_str),
            Some("222")
        );
    }

    #[test]
    fn cleared_on_seal_with_a_new_key() {
        let (_, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        let old_nonce_key = cvcs.lock().key.as_ref().map(|k| *k.key.expose_secret());
        cvcs.clear();
        assert_eq!(cvcs.take("card_1"), None);
        assert!(cvcs.is_empty());
        // No key while cleared (sealed); a new one at the next put.
        assert!(cvcs.lock().key.is_none());
        cvcs.put("card_1", "999").unwrap();
        let new_key = cvcs.lock().key.as_ref().map(|k| *k.key.expose_secret());
        assert!(new_key.is_some());
        assert_ne!(old_nonce_key, new_key);
        assert_eq!(
            cvcs.take("card_1").as_deref().map(String::as_str),
            Some("999")
        );
    }

    #[test]
    fn only_three_or_four_digits() {
        let (_, cvcs) = store(10);
        for bad in ["", "12", "12345", "12a", "１２３", " 123", "12.3", "-12"] {
            assert_eq!(cvcs.put("card_1", bad), Err(CvcError::Invalid), "{bad:?}");
        }
        assert!(cvcs.is_empty());
        assert!(cvcs.put("card_1", "0000").is_ok());
    }

    #[test]
    fn bounded_and_room_again_once_one_expires() {
        let (clock, cvcs) = store(2);
        cvcs.put("card_1", "123").unwrap();
        clock.advance(Duration::seconds(100));
        cvcs.put("card_2", "123").unwrap();
        assert_eq!(
            cvcs.put("card_3", "123"),
            Err(CvcError::Full {
                retry_after_secs: 800
            })
        );
        // Replacing one already held needs no room.
        assert!(cvcs.put("card_2", "456").is_ok());
        clock.advance(Duration::seconds(800));
        assert!(cvcs.put("card_3", "123").is_ok());
        assert_eq!(cvcs.len(), 2);
    }

    #[test]
    fn bound_to_the_card_and_the_process_key() {
        let (_, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        // Moved to another card, the ciphertext does not open.
        {
            let mut inner = cvcs.lock();
            let held = inner.held.remove("card_1").unwrap();
            inner.held.insert("card_2".into(), held);
        }
        assert_eq!(cvcs.take("card_2"), None);
        // Nothing of the plaintext is in the held bytes.
        cvcs.put("card_3", "987").unwrap();
        let inner = cvcs.lock();
        let held = &inner.held["card_3"];
        assert_eq!(held.sealed.len(), 3 + crate::crypto::TAG_LEN);
        assert!(!held.sealed.windows(3).any(|w| w == b"987"));
    }

    #[test]
    fn nonces_never_repeat_under_one_key() {
        let mut key = ProcessKey::fresh().unwrap();
        let a = key.nonce().unwrap();
        let b = key.nonce().unwrap();
        assert_ne!(a, b);
        assert_eq!(b[NONCE_LEN - 1], 1);
        key.next_nonce = u64::MAX;
        assert!(key.nonce().is_none());
    }

    #[test]
    fn debug_shows_no_value() {
        let (_, cvcs) = store(10);
        cvcs.put("card_1", "123").unwrap();
        let text = format!("{cvcs:?}");
        assert!(!text.contains("123") && text.contains("held: 1"), "{text}");
    }
}
