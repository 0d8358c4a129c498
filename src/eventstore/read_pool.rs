//! Where reads of the store run: on tokio's blocking pool, a bounded number at a time.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Runs reads off the async runtime's workers, at most `max_concurrent` at a time.
///
/// A read of a few MiB from RocksDB takes milliseconds of CPU and IO; on a worker thread it
/// would hold up every task queued there — with `worker_threads = 1`, Raft's heartbeats
/// too, and a leader that misses them loses its followers. On the blocking pool it does
/// not. The slots bound the reads (each holding up to one page, `max_read_bytes`) that are
/// in memory at once; further reads wait for a slot.
#[derive(Clone)]
pub struct ReadPool {
    slots: Arc<Semaphore>,
    max: usize,
}

/// A read task ended without an answer (it panicked, or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("read task failed: {0}")]
pub struct ReadTaskFailed(String);

impl ReadPool {
    pub fn new(max_concurrent: usize) -> Self {
        let max = max_concurrent.max(1);
        ReadPool {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Share of the slots in use, 0.0..=1.0 (part of the node's queue health).
    pub fn utilization(&self) -> f64 {
        let in_use = self.max.saturating_sub(self.slots.available_permits());
        in_use as f64 / self.max as f64
    }

    /// Runs `read` on the blocking pool once a slot is free.
    pub async fn run<R, F>(&self, read: F) -> std::result::Result<R, ReadTaskFailed>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ReadTaskFailed(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let r = read();
            drop(slot);
            r
        })
        .await
        .map_err(|e| ReadTaskFailed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// On a runtime with a single worker thread (`worker_threads = 1` in production), a read
    /// that blocks its thread must not block the runtime: here the read waits for a signal
    /// that only a task on that one worker can send. Were the read run on the worker, the
    /// signal would never come and the read would give up (`false`).
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_read_leaves_the_runtime_free() {
        let pool = ReadPool::new(2);
        let (tx, rx) = mpsc::channel::<()>();
        let read = pool.run(move || rx.recv_timeout(Duration::from_secs(60)).is_ok());
        let signal = async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        };
        let (got, ()) = tokio::join!(read, signal);
        assert!(got.unwrap(), "the read held the runtime's only worker");
        assert_eq!(pool.utilization(), 0.0, "the slot is back");
    }

    /// With one slot, a second read starts only after the first has finished.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_wait_for_a_free_slot() {
        let pool = ReadPool::new(1);
        let first_done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let done = first_done.clone();
        let first = pool.run(move || {
            let ok = rx.recv_timeout(Duration::from_secs(60)).is_ok();
            done.store(true, Ordering::SeqCst);
            ok
        });
        let done = first_done.clone();
        let second = pool.run(move || done.load(Ordering::SeqCst));
        let signal = async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        };
        let (a, b, ()) = tokio::join!(first, second, signal);
        assert!(a.unwrap());
        assert!(
            b.unwrap(),
            "the second read ran while the first held the only slot"
        );
    }
}
