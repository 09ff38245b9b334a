//! Group commit: concurrent writers share one flush instead of each paying
//! for its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Counts applied writes and the highest count known to be durable.
///
/// A failed flush poisons it for good. After `fsync` reports an error,
/// Linux may have dropped the unwritten pages and cleared the error, so a
/// later flush can succeed without the earlier writes ever reaching the
/// device (PostgreSQL's "fsyncgate", 2018). Those writes were applied and
/// may be what later ones build on (the audit chain), so nothing after them
/// may be acknowledged: every later write fails until the process restarts
/// and the store is reopened from what really is on disk.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    applied: AtomicU64,
    durable: Mutex<u64>,
    failed: AtomicBool,
}

impl GroupCommit {
    /// Call after a write has been applied (visible, maybe not durable).
    /// Returns once that write is durable, flushing with `flush` unless a
    /// flush that began after the write has already covered it. After any
    /// flush has failed, fails at once with `poisoned()`.
    pub(crate) fn wait_durable<E>(
        &self,
        flush: impl FnOnce() -> Result<(), E>,
        poisoned: impl FnOnce() -> E,
    ) -> Result<(), E> {
        let mine = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        let mut durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_poisoned() {
            return Err(poisoned());
        }
        if *durable >= mine {
            return Ok(());
        }
        // Every write numbered up to `target` was applied before this load,
        // so the flush below covers all of them.
        let target = self.applied.load(Ordering::SeqCst);
        if let Err(e) = flush() {
            self.failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
        *durable = target;
        Ok(())
    }

    /// Whether a flush has failed: no write may be applied any more.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn concurrent_writers_share_flushes() {
        let gc = Arc::new(GroupCommit::default());
        let flushes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let gc = Arc::clone(&gc);
                let flushes = Arc::clone(&flushes);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        gc.wait_durable(
                            || {
                                flushes.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                Ok::<(), ()>(())
                            },
                            || (),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        // Without sharing every one of the 800 writes would flush on its own.
        assert!((1..800).contains(&n), "{n} flushes for 800 writes");
    }

    #[test]
    fn a_failed_flush_fails_every_later_write_without_flushing_again() {
        let gc = GroupCommit::default();
        assert_eq!(gc.wait_durable(|| Err("disk"), || "poisoned"), Err("disk"));
        let mut flushed = false;
        let later = gc.wait_durable(
            || {
                flushed = true;
                Ok(())
            },
            || "poisoned",
        );
        assert_eq!(later, Err("poisoned"));
        assert!(
            !flushed,
            "a flush after a failed one may report lost writes as durable"
        );
        assert!(gc.is_poisoned());
    }
}
