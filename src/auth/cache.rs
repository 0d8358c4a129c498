//! Tokens already verified, so that a client sending the same token on every request pays
//! for its signature once. Bounded in entries; an entry lives until its token would stop
//! verifying (`exp` + leeway). Keyed by a SHA-256 of the plane and the token — a collision
//! would let one token pass as another, so the hash must be cryptographic — and never
//! holding the token itself. Pure: time is an argument.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::identity::Identity;
use super::verify::Plane;

pub type CacheKey = [u8; 32];

/// The cache key of `token` verified for `plane`.
pub fn key(plane: Plane, token: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update([plane as u8]);
    h.update(token.as_bytes());
    h.finalize().into()
}

struct Entry {
    identity: Arc<Identity>,
    /// Seconds since the epoch after which the token no longer verifies.
    valid_until: u64,
    seq: u64,
}

pub struct VerifiedCache {
    capacity: usize,
    entries: HashMap<CacheKey, Entry>,
    /// Entries by the time they go stale (then insertion): the first is evicted first, so
    /// stale entries go before live ones, and then the one closest to going stale.
    by_expiry: BTreeMap<(u64, u64), CacheKey>,
    next_seq: u64,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            capacity,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        debug_assert_eq!(self.entries.len(), self.by_expiry.len());
        self.entries.len()
    }

    /// The identity a token verified to, if it still verifies at `now_secs`.
    pub fn get(&mut self, key: &CacheKey, now_secs: u64) -> Option<Arc<Identity>> {
        let e = self.entries.get(key)?;
        if now_secs <= e.valid_until {
            return Some(e.identity.clone());
        }
        self.remove(key);
        None
    }

    pub fn insert(&mut self, key: CacheKey, identity: Arc<Identity>, valid_until: u64) {
        if self.capacity == 0 {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((valid_until, seq), key);
        self.entries.insert(
            key,
            Entry {
                identity,
                valid_until,
                seq,
            },
        );
        assert!(self.entries.len() <= self.capacity);
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.entries.remove(key) {
            self.by_expiry.remove(&(e.valid_until, e.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(sub: &str) -> Arc<Identity> {
        Arc::new(Identity {
            subject: sub.into(),
            roles: Default::default(),
            stream_prefixes: None,
            series_prefixes: None,
            expires_at: 0,
            target: None,
        })
    }

    #[test]
    fn entries_live_until_their_token_expires_and_the_stalest_go_first() {
        let mut c = VerifiedCache::new(3);
        let (a, b, d, e) = (
            key(Plane::Client, "a"),
            key(Plane::Client, "b"),
            key(Plane::Client, "d"),
            key(Plane::Client, "e"),
        );
        assert_ne!(key(Plane::Client, "a"), key(Plane::Node, "a"));
        c.insert(a, ident("a"), 100);
        c.insert(b, ident("b"), 50);
        c.insert(d, ident("d"), 200);
        assert_eq!(c.get(&b, 50).unwrap().subject, "b");
        assert!(c.get(&b, 51).is_none(), "stale at exp + leeway");
        assert_eq!(c.len(), 2);
        c.insert(b, ident("b"), 50);
        // Full: the entry that goes stale first (b, already stale at 60) makes room.
        c.insert(e, ident("e"), 300);
        assert!(c.get(&b, 10).is_none());
        assert_eq!(c.len(), 3);
        // Full again: then the live entry closest to going stale (a).
        c.insert(b, ident("b2"), 400);
        assert!(c.get(&a, 10).is_none());
        assert_eq!(c.get(&b, 10).unwrap().subject, "b2");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_cache_of_zero_entries_keeps_nothing() {
        let mut c = VerifiedCache::new(0);
        c.insert(key(Plane::Client, "a"), ident("a"), 100);
        assert_eq!(c.len(), 0);
    }
}
