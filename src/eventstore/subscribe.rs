//! Subscriptions: read from a position until caught up, then follow live.
//!
//! A subscriber never holds events in memory beyond one page and its bounded channel: it
//! reads what the state machine stored, sends it (waiting when the client is slow), and
//! when it reaches the end waits for the applied position to move. Reading from the store
//! after every notification, rather than fanning events out of the apply path, is what makes
//! "no gap, no duplicate" hold by construction: positions are read in order, exactly once.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::read::{read_all, read_stream, stream_head, ReadDirection};
use super::StoreState;
use crate::model::RecordedEvent;
use crate::storage::{SmStore, StorageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stream(String),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Box<RecordedEvent>),
    /// The catch-up read reached the end of what is stored; `next` is the position (or
    /// stream version) the next event will carry.
    CaughtUp {
        next: u64,
    },
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
}

/// Runs one subscription until the subscriber disconnects or the node stops.
///
/// `applied` changes after every applied write (and after a snapshot install); only the
/// change is used, not the value, so any watch of the state machine's progress will do.
pub async fn run<T: Send + Sync>(
    store: Arc<SmStore>,
    mut applied: watch::Receiver<T>,
    target: Target,
    from: Option<u64>,
    page_size: usize,
    tx: mpsc::Sender<Item>,
) -> Result<(), SubscriptionEnd> {
    let mut next = match from {
        Some(p) => p,
        None => end_of(&store, &target)?,
    };
    let mut caught_up = false;
    loop {
        // Mark the current value as seen *before* reading, so a write that lands after the
        // read wakes us below.
        applied.borrow_and_update();
        let db = store.db();
        let page = match &target {
            Target::All => {
                let end = StoreState::load(&db)?.next_global_position;
                read_all(&db, Some(next), ReadDirection::Forwards, page_size, end)?
            }
            Target::Stream(s) => {
                read_stream(&db, s, Some(next), ReadDirection::Forwards, page_size)?
            }
        };
        drop(db);
        let full = page.events.len() >= page_size;
        for e in page.events {
            next = match &target {
                Target::All => e.global_position + 1,
                Target::Stream(_) => e.stream_version + 1,
            };
            tx.send(Item::Event(Box::new(e)))
                .await
                .map_err(|_| SubscriptionEnd::Closed)?;
        }
        if full {
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
