//! Subscriptions: read from a position until caught up, then follow live.
//!
//! A subscriber never holds events in memory beyond one page (bounded in events and bytes)
//! and its buffer (bounded in events and bytes): it reads what the state machine stored,
//! sends it (waiting when the client is slow), and when it reaches the end waits for the
//! applied position to move. Reading from the store after every notification, rather than
//! fanning events out of the apply path, is what makes "no gap, no duplicate" hold by
//! construction: positions are read in order, exactly once.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::read::{read_all, read_stream, stream_head, PageLimit, ReadDirection};
use super::read_pool::{ReadPool, ReadTaskFailed};
use super::StoreState;
use crate::model::RecordedEvent;
use crate::storage::{SmStore, StorageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stream(String),
    All,
}

#[derive(Debug)]
pub enum Item {
    Event(Box<Delivery>),
    /// The catch-up read reached the end of what is stored; `next` is the position (or
    /// stream version) the next event will carry.
    CaughtUp {
        next: u64,
    },
}

/// An event on its way to the subscriber. It holds its share of the subscriber's byte
/// buffer until it is dropped, i.e. handed on to the transport.
#[derive(Debug)]
pub struct Delivery {
    pub event: RecordedEvent,
    _space: OwnedSemaphorePermit,
}

/// How much one subscription may hold: one page read from the store, and a buffer of
/// events read but not yet taken by the subscriber (`buffer_bytes`; the channel bounds
/// their number).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub page: PageLimit,
    pub buffer_bytes: u32,
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionEnd {
    #[error("subscriber went away")]
    Closed,
    #[error("node is shutting down")]
    Shutdown,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Read(#[from] ReadTaskFailed),
}

/// Runs one subscription until the subscriber disconnects or the node stops.
///
/// `applied` changes after every applied write (and after a snapshot install); only the
/// change is used, not the value, so any watch of the state machine's progress will do.
/// Pages are read on `reads` (off the runtime's workers).
pub async fn run<T: Send + Sync>(
    store: Arc<SmStore>,
    reads: ReadPool,
    mut applied: watch::Receiver<T>,
    target: Target,
    from: Option<u64>,
    bounds: Bounds,
    tx: mpsc::Sender<Item>,
) -> Result<(), SubscriptionEnd> {
    let mut next = match from {
        Some(p) => p,
        None => end_of(&store, &target)?,
    };
    let buffer = Arc::new(Semaphore::new(bounds.buffer_bytes as usize));
    let mut caught_up = false;
    loop {
        // Mark the current value as seen *before* reading, so a write that lands after the
        // read wakes us below.
        applied.borrow_and_update();
        let (st, tg) = (store.clone(), target.clone());
        let page = reads
            .run(move || {
                let db = st.db();
                match &tg {
                    Target::All => {
                        let end = StoreState::load(&db)?.next_global_position;
                        read_all(&db, Some(next), ReadDirection::Forwards, bounds.page, end)
                    }
                    Target::Stream(s) => {
                        read_stream(&db, s, Some(next), ReadDirection::Forwards, bounds.page)
                    }
                }
            })
            .await??;
        // More is stored already: read on without waiting for a write.
        let more = page.next.is_some();
        for e in page.events {
            next = match &target {
                Target::All => e.global_position + 1,
                Target::Stream(_) => e.stream_version + 1,
            };
            // An event larger than the whole buffer takes all of it.
            let weight = u32::try_from(e.size_bytes())
                .unwrap_or(u32::MAX)
                .min(bounds.buffer_bytes);
            let space = tokio::select! {
                space = buffer.clone().acquire_many_owned(weight) => {
                    space.map_err(|_| SubscriptionEnd::Shutdown)?
                }
                _ = tx.closed() => return Err(SubscriptionEnd::Closed),
            };
            let delivery = Delivery {
                event: e,
                _space: space,
            };
            tx.send(Item::Event(Box::new(delivery)))
                .await
                .map_err(|_| SubscriptionEnd::Closed)?;
        }
        if more {
            continue;
        }
        if !caught_up {
            caught_up = true;
            tx.send(Item::CaughtUp { next })
                .await
                .map_err(|_| SubscriptionEnd::Closed)?;
        }
        tokio::select! {
            changed = applied.changed() => changed.map_err(|_| SubscriptionEnd::Shutdown)?,
            _ = tx.closed() => return Err(SubscriptionEnd::Closed),
        }
    }
}

/// Where "from now on" starts for a target.
fn end_of(store: &SmStore, target: &Target) -> Result<u64, StorageError> {
    let db = store.db();
    Ok(match target {
        Target::All => StoreState::load(&db)?.next_global_position,
        Target::Stream(s) => stream_head(&db, s)?.map_or(0, |v| v + 1),
    })
}
