//! Rate limits on the request path: every operation asks [`Guards::admit`] before it runs.
//! The policies are the cluster's (replicated, `crate::limits`); each node enforces its
//! share of each policy's rate and burst with the pure limiters of `aether_guard`, with no
//! call to another node on the request path.
//!
//! The share is the safe one a node takes while it holds no lease: 1/N of the policy for N
//! voters, so that N nodes together admit at most the policy's rate plus its burst, whatever
//! the spread of clients. (Demand-proportional leases from the leader, so that an uneven
//! spread still gets the whole rate, and the adaptive factor are the rest of issue 11.)
//! A shadow policy counts what it would refuse and refuses nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_guard::{
    BucketState, Factor, Keyed, Limiter, LimiterState, SlidingWindow, TokenBucket, WindowState,
};
use serde::{Deserialize, Serialize};

use super::{Caller, Principal, ServiceError};
use crate::limits::{Algorithm, KeyBy, LimitPolicy, Method};

/// Keys one policy tracks at most (idle keys are dropped first; see `aether_guard`).
const MAX_KEYS_PER_POLICY: usize = 100_000;
/// How often a node reloads the policies it enforces.
pub const RELOAD_EVERY: Duration = Duration::from_millis(500);
/// Reloads between two writes of the limiters' state (every 5 s; and on shutdown).
pub const SAVE_EVERY_RELOADS: u64 = 10;
/// The file, in the data directory, that keeps the limiters' state across restarts.
pub const STATE_FILE: &str = "limits-state.json";

/// Wall-clock ns since the epoch: limiter state is kept in wall-clock time, because a
/// monotonic clock's origin changes across restarts.
pub fn wall_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes the limiters' state atomically (a crash leaves the old file or the new one).
pub fn save(data_dir: &std::path::Path, state: &StoredGuards) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, data_dir.join(STATE_FILE))
}

/// The limiters' state written before, if any. A file that does not parse is an error (the
/// caller starts afresh); each limiter's state is checked again when it is restored.
pub fn load(data_dir: &std::path::Path) -> std::io::Result<Option<StoredGuards>> {
    match std::fs::read(data_dir.join(STATE_FILE)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One policy's limiter, of its algorithm.
enum PolicyLimiter {
    Bucket(Keyed<String, TokenBucket>),
    Window(Keyed<String, SlidingWindow>),
}

impl PolicyLimiter {
    fn get(&mut self) -> &mut dyn Limiter<String> {
        match self {
            PolicyLimiter::Bucket(l) => l,
            PolicyLimiter::Window(l) => l,
        }
    }

    fn export(&self) -> StoredLimiter {
        match self {
            PolicyLimiter::Bucket(l) => StoredLimiter::Bucket(l.export()),
            PolicyLimiter::Window(l) => StoredLimiter::Window(l.export()),
        }
    }
}

/// A limiter's state as written to disk: its keys' buckets or windows, with wall-clock
/// times, so that a restart refills or expires only what really elapsed.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StoredLimiter {
    Bucket(LimiterState<TokenBucket, BucketState, String>),
    Window(LimiterState<SlidingWindow, WindowState, String>),
}

/// Every enforced policy's limiter state: what a node writes on shutdown and periodically.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredGuards {
    policies: Vec<(LimitPolicy, StoredLimiter)>,
}

/// One policy as this node enforces it.
struct Enforced {
    policy: LimitPolicy,
    limiter: PolicyLimiter,
    refused: u64,
    shadow_refused: u64,
}

/// What one policy did on this node, for metrics and `limits status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyCounts {
    pub name: String,
    pub share_ppm: u32,
    pub refused: u64,
    pub shadow_refused: u64,
}

/// The policies this node enforces, and their limiters.
#[derive(Clone, Default)]
pub struct Guards {
    inner: Arc<Mutex<Inner>>,
    /// Whether any policy is in force: without one, admission takes no lock.
    active: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct Inner {
    policies: Vec<Enforced>,
    share: Option<Factor>,
    /// Limiter state read back at start, taken by the first `update` that enforces the
    /// same policies.
    restored: Option<StoredGuards>,
}

/// A fresh limiter for `policy`, or the one stored for it (same policy) brought to `now_ns`.
fn limiter(
    policy: &LimitPolicy,
    stored: Option<StoredLimiter>,
    now_ns: u64,
) -> Result<PolicyLimiter, String> {
    let e = |e: aether_guard::GuardError| e.to_string();
    Ok(match (policy.algorithm, stored) {
        (
            Algorithm::TokenBucket {
                burst,
                refill_millis,
            },
            stored,
        ) => {
            let bucket = TokenBucket::from_nano(burst, refill_millis.saturating_mul(1_000_000))
                .map_err(e)?;
            PolicyLimiter::Bucket(match stored {
                Some(StoredLimiter::Bucket(st)) => {
                    Keyed::restore(bucket, MAX_KEYS_PER_POLICY, st, now_ns).map_err(e)?
                }
                _ => Keyed::new(bucket, MAX_KEYS_PER_POLICY).map_err(e)?,
            })
        }
        (
            Algorithm::SlidingWindow {
                limit,
                window_ms,
                window_count,
            },
            stored,
        ) => {
            let window =
                SlidingWindow::new(limit, window_ms * 1_000_000, window_count).map_err(e)?;
            PolicyLimiter::Window(match stored {
                Some(StoredLimiter::Window(st)) => {
                    Keyed::restore(window, MAX_KEYS_PER_POLICY, st, now_ns).map_err(e)?
                }
                _ => Keyed::new(window, MAX_KEYS_PER_POLICY).map_err(e)?,
            })
        }
    })
}

/// The part of a stream or series name a `stream-prefix` key counts: a series up to and
/// including its first `/` (`sat-7/battery` → `sat-7/`), a stream up to and including its
/// first `-` (`orders-17` → `orders-`), or the whole name.
pub fn prefix_of(name: &str) -> &str {
    match name.find('/').or_else(|| name.find('-')) {
        Some(i) => &name[..=i],
        None => name,
    }
}

fn caller_key(caller: &Caller) -> String {
    match (&caller.principal, caller.peer) {
        // Until authentication lands, the peer's address (not its port: one client's
        // connections share a limit).
        (Principal::Anonymous, Some(peer)) => peer.ip().to_string(),
        (Principal::Anonymous, None) => "anonymous".to_owned(),
    }
}

impl Guards {
    /// Takes the cluster's policies as applied here and this node's share (1/`voters`).
    /// Unchanged policies keep their limiters' state; changed ones start afresh.
    pub fn update(&self, policies: Vec<LimitPolicy>, voters: usize, now_ns: u64) {
        let share =
            Factor::from_ppm((1_000_000 / voters.max(1)).max(1_000) as u32).unwrap_or(Factor::ONE);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut old = std::mem::take(&mut inner.policies);
        let mut restored = inner.restored.take().unwrap_or_default().policies;
        for policy in policies {
            let kept = old
                .iter()
                .position(|e| e.policy == policy)
                .map(|i| old.swap_remove(i));
            // State written before a restart serves the same policy only.
            let stored = restored
                .iter()
                .position(|(p, _)| *p == policy)
                .map(|i| restored.swap_remove(i).1);
            let mut enforced = match kept {
                Some(e) => e,
                None => match limiter(&policy, stored, now_ns) {
                    Ok(limiter) => Enforced {
                        policy,
                        limiter,
                        refused: 0,
                        shadow_refused: 0,
                    },
                    Err(e) => {
                        tracing::error!(policy = %policy.name, "cannot enforce: {e}");
                        continue;
                    }
                },
            };
            enforced.limiter.get().set_factor(share);
            inner.policies.push(enforced);
        }
        // State of policies not in force yet (a restarted node may not have re-applied
        // them when it first reloads) waits for a later update.
        if !restored.is_empty() {
            inner.restored = Some(StoredGuards { policies: restored });
        }
        inner.share = Some(share);
        self.active.store(
            !inner.policies.is_empty(),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Admits `cost` units (requests, or points for ingest) of `method` on `resource` (a
    /// stream or series, when the operation has one), at wall-clock `now_ns`; or says which
    /// policy refused and when to retry.
    pub fn admit(
        &self,
        caller: &Caller,
        method: Method,
        resource: Option<&str>,
        cost: u64,
        now_ns: u64,
    ) -> Result<(), ServiceError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for e in inner
            .policies
            .iter_mut()
            .filter(|e| e.policy.covers(method))
        {
            let key = match e.policy.key {
                KeyBy::Shared => String::new(),
                KeyBy::Caller => caller_key(caller),
                KeyBy::StreamPrefix => resource.map(prefix_of).unwrap_or_default().to_owned(),
                KeyBy::Method => method.as_str().to_owned(),
            };
            let decision = match e.limiter.get().try_acquire(&key, cost, now_ns) {
                Ok(d) => d,
                // More than the policy's whole burst: it can never pass.
                Err(err) => {
                    if e.policy.shadow {
                        e.shadow_refused += 1;
                        continue;
                    }
                    e.refused += 1;
                    return Err(ServiceError::Invalid(format!(
                        "rate-limit policy {:?}: a request of {cost} is larger than it ever \
                         admits ({err}); send smaller requests",
                        e.policy.name
                    )));
                }
            };
            if decision.allowed {
                continue;
            }
            if e.policy.shadow {
                e.shadow_refused += 1;
                continue;
            }
            e.refused += 1;
            let retry_after_ms = decision.retry_after_ns.div_ceil(1_000_000);
            return Err(ServiceError::RateLimited {
                message: format!(
                    "rate-limit policy {:?} refused this {method} (this node's share; retry \
                     in {retry_after_ms} ms)",
                    e.policy.name
                ),
                retry_after_ms,
            });
        }
        Ok(())
    }

    /// Every limiter's state, to write to disk.
    pub fn export(&self) -> StoredGuards {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        StoredGuards {
            policies: inner
                .policies
                .iter()
                .map(|e| (e.policy.clone(), e.limiter.export()))
                .collect(),
        }
    }

    /// State read back at start: the first `update` restores the limiters of the policies
    /// that are unchanged.
    pub fn restore_later(&self, stored: StoredGuards) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restored = Some(stored);
    }

    /// Per policy: this node's share and what it refused.
    pub fn counts(&self) -> Vec<PolicyCounts> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let share = inner.share.unwrap_or(Factor::ONE).ppm();
        inner
            .policies
            .iter()
            .map(|e| PolicyCounts {
                name: e.policy.name.clone(),
                share_ppm: share,
                refused: e.refused,
                shadow_refused: e.shadow_refused,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn policy(name: &str, key: KeyBy, methods: Vec<Method>, shadow: bool) -> LimitPolicy {
        LimitPolicy {
            name: name.into(),
            methods,
            key,
            algorithm: Algorithm::TokenBucket {
                burst: 4,
                refill_millis: 2_000,
            },
            shadow,
        }
    }

    fn anon(ip: &str) -> Caller {
        Caller::anonymous(Some(format!("{ip}:1234").parse().unwrap()))
    }

    #[test]
    fn a_policy_refuses_past_its_burst_with_the_retry_time() {
        let g = Guards::default();
        g.update(vec![policy("p", KeyBy::Shared, vec![], false)], 1, 0);
        let c = anon("127.0.0.1");
        for _ in 0..4 {
            g.admit(&c, Method::Append, Some("s-1"), 1, SEC).unwrap();
        }
        match g.admit(&c, Method::Append, Some("s-1"), 1, SEC) {
            Err(ServiceError::RateLimited { retry_after_ms, .. }) => {
                assert_eq!(retry_after_ms, 500, "one token every 0.5 s")
            }
            other => panic!("{other:?}"),
        }
        g.admit(&c, Method::Append, Some("s-1"), 1, SEC + SEC / 2)
            .unwrap();
        assert!(matches!(
            g.admit(&c, Method::Append, None, 5, 10 * SEC),
            Err(ServiceError::Invalid(_))
        ));
        assert_eq!(g.counts()[0].refused, 2);
    }

    #[test]
    fn keys_methods_shares_and_shadow() {
        let g = Guards::default();
        g.update(
            vec![
                policy("by-caller", KeyBy::Caller, vec![Method::Append], false),
                policy(
                    "by-prefix",
                    KeyBy::StreamPrefix,
                    vec![Method::Ingest],
                    false,
                ),
                policy("shadow", KeyBy::Shared, vec![Method::Read], true),
            ],
            1,
            0,
        );
        let (a, b) = (anon("10.0.0.1"), anon("10.0.0.2"));
        for _ in 0..4 {
            g.admit(&a, Method::Append, None, 1, SEC).unwrap();
        }
        assert!(g.admit(&a, Method::Append, None, 1, SEC).is_err());
        g.admit(&b, Method::Append, None, 1, SEC)
            .expect("another caller has its own bucket");
        g.admit(&a, Method::TelemetryQuery, None, 1, SEC)
            .expect("a method no policy covers");
        g.admit(&a, Method::Ingest, Some("sat-7/battery"), 4, SEC)
            .unwrap();
        assert!(g
            .admit(&b, Method::Ingest, Some("sat-7/temp"), 1, SEC)
            .is_err());
        g.admit(&b, Method::Ingest, Some("sat-8/temp"), 1, SEC)
            .expect("another prefix");
        for _ in 0..10 {
            g.admit(&a, Method::Read, None, 1, SEC)
                .expect("a shadow policy refuses nothing");
        }
        let counts = g.counts();
        assert_eq!(counts[2].shadow_refused, 6);
        assert_eq!(counts[2].refused, 0);

        // Three voters: this node's share is a third of the burst (1 of 4, rounded down
        // but never below one), and policies that did not change keep their state.
        g.update(
            vec![policy(
                "by-caller",
                KeyBy::Caller,
                vec![Method::Append],
                false,
            )],
            3,
            SEC,
        );
        assert_eq!(g.counts()[0].share_ppm, 333_333);
        let c = anon("10.0.0.3");
        g.admit(&c, Method::Append, None, 1, SEC).unwrap();
        assert!(g.admit(&c, Method::Append, None, 1, SEC).is_err());
        assert!(
            g.admit(&a, Method::Append, None, 1, SEC).is_err(),
            "a's drained bucket was kept"
        );
        assert_eq!(prefix_of("orders-17"), "orders-");
        assert_eq!(prefix_of("sat-7/battery"), "sat-7/");
        assert_eq!(prefix_of("plain"), "plain");
    }

    /// A restart neither refills a drained bucket nor keeps state for a changed policy.
    #[test]
    fn state_written_before_a_restart_serves_the_same_policy_only() {
        let p = policy("p", KeyBy::Shared, vec![], false);
        let g = Guards::default();
        g.update(vec![p.clone()], 1, SEC);
        let c = anon("127.0.0.1");
        for _ in 0..4 {
            g.admit(&c, Method::Append, None, 1, SEC).unwrap();
        }
        let stored: StoredGuards =
            serde_json::from_str(&serde_json::to_string(&g.export()).unwrap()).unwrap();

        let restarted = Guards::default();
        restarted.restore_later(stored.clone());
        restarted.update(vec![p.clone()], 1, SEC + SEC / 10);
        assert!(
            restarted
                .admit(&c, Method::Append, None, 1, SEC + SEC / 10)
                .is_err(),
            "0.1 s later the bucket holds 0.2 tokens: still drained"
        );
        restarted
            .admit(&c, Method::Append, None, 1, SEC + SEC / 2)
            .expect("0.5 s later one token came back");

        let mut changed = p;
        changed.algorithm = Algorithm::TokenBucket {
            burst: 5,
            refill_millis: 2_000,
        };
        let fresh = Guards::default();
        fresh.restore_later(stored);
        fresh.update(vec![changed], 1, SEC);
        for _ in 0..5 {
            fresh.admit(&c, Method::Append, None, 1, SEC).unwrap();
        }
    }
}
