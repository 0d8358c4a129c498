//! Commit heartbeats that carry the leader's next entries.
//!
//! openraft 0.9's replication stream keeps one AppendEntries in flight per follower, and
//! after every commit it sends the follower an AppendEntries without entries, only to tell
//! it the new commit index; entries appended meanwhile wait for that heartbeat's answer. On
//! a loaded machine a round trip costs about as much as one carrying entries (the time is
//! spent waiting for CPUs, not in the follower's handler), so every entry paid for two.
//!
//! So a heartbeat on a replication stream (`raft::network::PeerClient`) waits briefly
//! (`raft.carry_wait_ms`) for the leader's next entries and, when they come, goes out as a
//! full AppendEntries: the same vote, `prev_log_id` and commit index, and this leader's own
//! entries after `prev_log_id`. The follower's answer answers the heartbeat; a Success is
//! kept ([`Carried`]), and answers openraft's next AppendEntries of those entries, which then
//! does not travel again, unless it tells the follower a newer commit index. Nothing else
//! changes: no entry waits for a carry (openraft appends and syncs the log as before), and a
//! heartbeat with nothing to carry goes out as it was after the wait. Carried entries may
//! reach a follower before the leader's own log sync is done, as openraft's replication
//! sends them too: the leader counts itself toward a quorum only after its flush.
//!
//! Why the answers are the follower's own:
//! - The carried message is one this leader's replication could have sent: its vote, the
//!   heartbeat's `prev_log_id`, and entries that [`carriable`] checked are this leader's own
//!   (their log ids name the vote's leader, which a committed vote makes the only writer of
//!   such ids), contiguous from `prev_log_id`.
//! - A follower answers Success only once it holds `prev_log_id` under this vote and has
//!   the carried entries on disk (openraft answers after the log's flush). That is all a
//!   heartbeat with the same vote and `prev_log_id` asks; and it is what a later request of
//!   the same vote, `prev_log_id` and entries asks, or, if that request carries more, the
//!   partial success [`answer`] gives (the follower holds up to the last carried entry).
//! - Answering a later request from a kept Success is the same as the network delaying the
//!   follower's reply: Raft counts an acknowledgement whatever the follower voted since.
//! - openraft notes, for a reply, the time it called the network. That can be later than
//!   the carried message left (for a request answered from a kept Success), so its
//!   `millis_since_quorum_ack` metric may read fresher than it is, by up to the carrying
//!   message's round trip. Nothing here relies
//!   on it: leadership checks (`read_index`, the rate-limit leases) use openraft's own
//!   check-is-leader heartbeats, sent on clients that never carried entries, which neither
//!   wait nor carry.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};

use super::{Entry, LogId, NodeId, TypeConfig, Vote};

/// At most this many entries go with a heartbeat, and only if they are all the entries after
/// its `prev_log_id`: a caught-up follower's next entries. A follower further behind gets
/// them from openraft's own replication, which shrinks its messages when they do not get
/// through in time; a heartbeat carrying a large backlog would keep failing instead.
pub const MAX_ENTRIES: u64 = 16;
/// At most this many bytes of entries (as stored) go with a heartbeat (and never more than
/// `raft.max_payload_bytes`).
pub const MAX_BYTES: usize = 1 << 20;

/// A follower's Success to carried entries: it holds `prev` and every entry up to `last`
/// under `vote`, on disk, and was told the commit index `commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub vote: Vote,
    pub prev: LogId,
    pub last: LogId,
    pub commit: Option<LogId>,
}

/// Whether `entries`, read from this node's log after `prev`, may go out under `vote` with a
/// heartbeat: the vote is committed (this node leads under it), and the entries are the
/// leader's own and follow `prev` without a gap.
pub fn carriable(vote: &Vote, prev: LogId, entries: &[Entry]) -> bool {
    vote.is_committed()
        && !entries.is_empty()
        && entries.iter().enumerate().all(|(i, e)| {
            e.log_id.leader_id == *vote.leader_id()
                && Some(e.log_id.index) == prev.index.checked_add(1 + i as u64)
        })
}

/// The answer a kept Success gives `rpc`, if it covers it: Success when `rpc` carries
/// exactly the carried entries, a partial success up to the last carried entry when `rpc`
/// carries them and more, and `None` otherwise (the request is sent). A request with a
/// newer commit index is sent too: answering it here would leave the follower without that
/// index until the next heartbeat (openraft sends no separate one when a request is due),
/// and its reads and applies would wait for it.
pub fn answer(
    carried: &Carried,
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Option<AppendEntriesResponse<NodeId>> {
    if rpc.vote != carried.vote
        || rpc.prev_log_id != Some(carried.prev)
        || rpc.leader_commit > carried.commit
    {
        return None;
    }
    let pos = carried
        .last
        .index
        .checked_sub(carried.prev.index.checked_add(1)?)?;
    let pos = usize::try_from(pos).ok()?;
    if rpc.entries.get(pos)?.log_id != carried.last {
        return None;
    }
    Some(if pos + 1 == rpc.entries.len() {
        AppendEntriesResponse::Success
    } else {
        AppendEntriesResponse::PartialSuccess(Some(carried.last))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn vote(term: u64, node: NodeId, committed: bool) -> Vote {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    }

    fn id(term: u64, node: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn entry(term: u64, node: NodeId, index: u64) -> Entry {
        Entry {
            log_id: id(term, node, index),
            payload: EntryPayload::Blank,
        }
    }

    fn request(v: Vote, prev: LogId, entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: v,
            prev_log_id: Some(prev),
            // The commit index the carried message told (`kept` below).
            leader_commit: Some(prev),
            entries,
        }
    }

    #[test]
    fn only_the_leaders_own_entries_after_prev_are_carried() {
        let v = vote(3, 1, true);
        let prev = id(2, 2, 10);
        assert!(carriable(&v, prev, &[entry(3, 1, 11), entry(3, 1, 12)]));
        // Not committed: this node may not lead under it.
        assert!(!carriable(&vote(3, 1, false), prev, &[entry(3, 1, 11)]));
        // Nothing to carry.
        assert!(!carriable(&v, prev, &[]));
        // Another leader's entry (an older term's, or another node's in the same term).
        assert!(!carriable(&v, prev, &[entry(2, 2, 11)]));
        assert!(!carriable(&v, prev, &[entry(3, 1, 11), entry(3, 2, 12)]));
        // A gap, or not starting right after prev.
        assert!(!carriable(&v, prev, &[entry(3, 1, 12)]));
        assert!(!carriable(&v, prev, &[entry(3, 1, 11), entry(3, 1, 13)]));
        // An index that cannot follow.
        assert!(!carriable(&v, id(3, 1, u64::MAX), &[entry(3, 1, 0)]));
    }

    #[test]
    fn a_kept_success_answers_only_requests_it_covers() {
        let v = vote(3, 1, true);
        let prev = id(3, 1, 10);
        let kept = Carried {
            vote: v,
            prev,
            last: id(3, 1, 12),
            commit: Some(prev),
        };
        let two = vec![entry(3, 1, 11), entry(3, 1, 12)];
        assert!(matches!(
            answer(&kept, &request(v, prev, two.clone())),
            Some(AppendEntriesResponse::Success)
        ));
        // More than was carried: the follower holds up to the last carried entry.
        let mut three = two.clone();
        three.push(entry(3, 1, 13));
        match answer(&kept, &request(v, prev, three)) {
            Some(AppendEntriesResponse::PartialSuccess(Some(m))) => assert_eq!(m, kept.last),
            other => panic!("expected a partial success, got {other:?}"),
        }
        // Fewer than were carried, none, another prev, another vote, other entries: sent.
        assert!(answer(&kept, &request(v, prev, vec![entry(3, 1, 11)])).is_none());
        assert!(answer(&kept, &request(v, prev, vec![])).is_none());
        assert!(answer(&kept, &request(v, id(3, 1, 11), vec![entry(3, 1, 12)])).is_none());
        assert!(answer(&kept, &request(vote(4, 1, true), prev, two.clone())).is_none());
        assert!(answer(
            &kept,
            &request(v, prev, vec![entry(3, 1, 11), entry(2, 2, 12)])
        )
        .is_none());
        let mut none = request(v, prev, two.clone());
        none.prev_log_id = None;
        assert!(answer(&kept, &none).is_none());
        // A newer commit index travels (an older one needs not).
        let mut newer = request(v, prev, two.clone());
        newer.leader_commit = Some(id(3, 1, 11));
        assert!(answer(&kept, &newer).is_none());
        let mut older = request(v, prev, two);
        older.leader_commit = Some(id(3, 1, 9));
        assert!(matches!(
            answer(&kept, &older),
            Some(AppendEntriesResponse::Success)
        ));
    }
}
