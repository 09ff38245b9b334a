//! Group commit: concurrent writers share one flush instead of each paying
//! for its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Counts applied writes and the highest count known to be durable.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    applied: AtomicU64,
    durable: Mutex<u64>,
}

impl GroupCommit {
    /// Call after a write has been applied (visible, maybe not durable).
    /// Returns once that write is durable, flushing with `flush` unless a
    /// flush that began after the write has already covered it.
    pub(crate) fn wait_durable<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mine = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        let mut durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        if *durable >= mine {
            return Ok(());
        }
        // Every write numbered up to `target` was applied before this load,
        // so the flush below covers all of them.
        let target = self.applied.load(Ordering::SeqCst);
        flush()?;
        *durable = target;
        Ok(())
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
                        gc.wait_durable(|| {
                            flushes.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            Ok::<(), ()>(())
                        })
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
    fn a_failed_flush_is_reported_and_retried_by_the_next_writer() {
        let gc = GroupCommit::default();
        assert!(gc.wait_durable(|| Err::<(), _>("disk")).is_err());
        let mut flushed = false;
        gc.wait_durable(|| {
            flushed = true;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(flushed);
    }
}
