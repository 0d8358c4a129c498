//! Rate limits on the request path: every operation asks [`Guards::admit`] before it runs.
//! The policies are the cluster's (replicated, `crate::limits`); each node enforces its
//! share of each policy's rate and burst with the pure limiters of `aether_guard`, with no
//! call to another node on the request path.
//!
//! Each policy's limiter runs at this node's *share* of the policy times the cluster's
//! *adaptive factor*. The share is leased from the leader (`raft::lease`) every
//! [`RELOAD_EVERY`], in proportion to this node's recent demand (units asked per second,
//! refused ones included), so that an uneven spread of clients still gets the whole rate
//! while the shares in force never exceed it. A node whose lease ran out (no leader, or the
//! leader cannot be reached) falls back to `min(last share, 1/N)` for N members for one lease
//! (N nodes together then admit at most the policy's rate plus its burst, whatever the spread
//! of clients), then to the minimum (0.1%): a node cut off from the leader cannot write
//! anyway, and a dead node's share goes back to the others. Before its first grant a node
//! enforces the minimum too; the first request for a new policy follows at once. N counts
//! every member, learners included: each serves clients, each holds a share.
//! The adaptive factor is the leader's, carried with every lease: when the leader's
//! proposer queue is over 80% full every node's share tightens.
//! A shadow policy counts what it would refuse and refuses nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_guard::{
    BucketState, Factor, Keyed, Limiter, LimiterState, SlidingWindow, TokenBucket, WindowState,
};
use serde::{Deserialize, Serialize};

use super::{Caller, Principal, ServiceError};
use crate::limits::{Algorithm, KeyBy, LimitPolicy, Method};
use crate::raft::lease::{LeaseAsk, LeaseGrant, PolicyAsk, LEASE};

/// Keys one policy tracks at most (idle keys are dropped first; see `aether_guard`).
const MAX_KEYS_PER_POLICY: usize = 100_000;
/// How often a node reloads the policies it enforces and renews its leases.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);
/// Reloads between two writes of the limiters' state (every 5 s; and on shutdown).
pub const SAVE_EVERY_RELOADS: u64 = 20;
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

    /// What the most drained key has left, and how many keys are held.
    fn lowest(&self, now_ns: u64) -> (Option<u64>, usize) {
        match self {
            PolicyLimiter::Bucket(l) => (l.min_remaining(now_ns), l.len()),
            PolicyLimiter::Window(l) => (l.min_remaining(now_ns), l.len()),
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
    /// The last share leased from the leader, and when the lease runs out (this node's
    /// clock, counted from before the request was sent, so it ends before the leader's).
    lease: Option<(Factor, Instant)>,
    /// Units asked since the last lease request, refused ones included.
    asked: u64,
    /// Units asked per second, smoothed, in thousandths.
    demand_milli: u64,
}

impl Enforced {
    /// The share this node enforces at `now` (`aether_guard::lease::enforced`): the lease
    /// while it runs, `min(last, 1/N)` for one lease after, then (and before the first
    /// grant) the minimum.
    fn share(&self, members: usize, origin: Instant, now: Instant) -> Factor {
        let ns = |t: Instant| t.saturating_duration_since(origin).as_nanos() as u64;
        aether_guard::lease::enforced(
            self.lease.map(|(share, until)| (share, ns(until))),
            members,
            LEASE.as_nanos() as u64,
            ns(now),
        )
    }
}

/// What one policy does on this node, for metrics and `limits status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyCounts {
    pub name: String,
    /// This node's share of the policy (leased, the fallback, or the minimum), in ppm.
    pub share_ppm: u32,
    /// The cluster's adaptive factor, in ppm.
    pub factor_ppm: u32,
    /// Whether the share is a lease that still runs (else the fallback or the minimum).
    pub leased: bool,
    /// Tokens (or requests) left: of the shared key, or of the most drained key.
    pub tokens_left: u64,
    /// Keys the policy tracks.
    pub keys: usize,
    /// Units asked per second lately, refused ones included.
    pub demand_per_sec: f64,
    /// The rate this node admits: the policy's rate × share × factor.
    pub admits_per_sec: f64,
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

struct Inner {
    /// Where lease times are counted from.
    origin: Instant,
    policies: Vec<Enforced>,
    /// Voters of the cluster (N of the fallback share 1/N).
    members: usize,
    /// The cluster's adaptive factor, as the last lease carried it.
    factor: Factor,
    /// The leader's proposer utilization that factor follows (0..1).
    utilization: f64,
    /// When demand was last measured (the last lease request).
    last_ask: Option<Instant>,
    /// When a lease or a fallback ends next: admission rescales then, whether or not the
    /// renewal loop has run (a share must never outlive its lease on this node).
    next_change: Option<Instant>,
    /// Limiter state read back at start, taken by the first `update` that enforces the
    /// same policies.
    restored: Option<StoredGuards>,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            origin: Instant::now(),
            policies: Vec::new(),
            members: 1,
            factor: Factor::ONE,
            utilization: 0.0,
            last_ask: None,
            next_change: None,
            restored: None,
        }
    }
}

impl Inner {
    /// Sets every limiter to its share times the cluster's factor, as of `now`, and notes
    /// when a share changes next on its own (a lease ending, a fallback ending).
    fn rescale(&mut self, now: Instant) {
        let (members, factor, origin) = (self.members, self.factor, self.origin);
        let mut next: Option<Instant> = None;
        for e in &mut self.policies {
            let share = e.share(members, origin, now);
            e.limiter.get().set_factor(share.times(factor));
            if let Some((_, until)) = e.lease {
                let change = [until, until + LEASE].into_iter().find(|t| *t > now);
                next = match (next, change) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        self.next_change = next;
    }
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
        // The token's subject: one caller's connections, on every node, share a limit.
        (Principal::User(id), _) => format!("sub:{}", id.subject),
        // Without authentication, the peer's address (not its port: one client's
        // connections share a limit).
        (Principal::Anonymous, Some(peer)) => peer.ip().to_string(),
        (Principal::Anonymous, None) => "anonymous".to_owned(),
    }
}

impl Guards {
    /// Takes the cluster's policies as applied here and the number of members, at wall-clock
    /// `now_ns` (for limiter state) and monotonic `now` (for leases). Unchanged policies keep
    /// their limiters' state and leases; changed ones start afresh, at the minimum share
    /// until the leader grants one (the next renewal, right after this update).
    pub fn update(&self, policies: Vec<LimitPolicy>, members: usize, now_ns: u64, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.members = members.max(1);
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
            let enforced = match kept {
                Some(e) => e,
                None => match limiter(&policy, stored, now_ns) {
                    Ok(limiter) => Enforced {
                        policy,
                        limiter,
                        refused: 0,
                        shadow_refused: 0,
                        lease: None,
                        asked: 0,
                        demand_milli: 0,
                    },
                    Err(e) => {
                        tracing::error!(policy = %policy.name, "cannot enforce: {e}");
                        continue;
                    }
                },
            };
            inner.policies.push(enforced);
        }
        // State of policies not in force yet (a restarted node may not have re-applied
        // them when it first reloads) waits for a later update.
        if !restored.is_empty() {
            inner.restored = Some(StoredGuards { policies: restored });
        }
        inner.rescale(now);
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
        if let Some(at) = inner.next_change {
            let now = Instant::now();
            if now >= at {
                inner.rescale(now);
            }
        }
        // Demand counts every covered policy, whichever refuses first.
        for e in inner
            .policies
            .iter_mut()
            .filter(|e| e.policy.covers(method))
        {
            e.asked = e.asked.saturating_add(cost);
        }
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

    /// Whether any policy is in force.
    pub fn any(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What to ask the leader: per policy, the demand since the last request (smoothed)
    /// and the share held now. Measuring demand restarts here.
    pub fn lease_ask(&self, me: crate::raft::NodeId, now: Instant) -> LeaseAsk {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = inner
            .last_ask
            .map_or(RELOAD_EVERY, |t| now.saturating_duration_since(t))
            .max(Duration::from_millis(1));
        inner.last_ask = Some(now);
        let (members, origin) = (inner.members, inner.origin);
        let policies = inner
            .policies
            .iter_mut()
            .map(|e| {
                let rate = (u128::from(e.asked) * 1_000 * 1_000_000_000 / elapsed.as_nanos())
                    .min(u128::from(u64::MAX / 2)) as u64;
                // Half the last measure, half the new one: a burst does not swing the
                // shares at once, a sustained change moves them within a second.
                e.demand_milli = (e.demand_milli + rate) / 2;
                e.asked = 0;
                PolicyAsk {
                    name: e.policy.name.clone(),
                    demand_milli: e.demand_milli,
                    holding_ppm: e.share(members, origin, now).ppm(),
                    // Rounded up: the leader must not think the lease ends before it does.
                    holding_left_ms: e.lease.map_or(0, |(_, until)| {
                        until
                            .saturating_duration_since(now)
                            .as_nanos()
                            .div_ceil(1_000_000) as u64
                    }),
                }
            })
            .collect();
        LeaseAsk { from: me, policies }
    }

    /// Takes the leader's grant to a request sent at `sent`. The lease is counted from
    /// `sent`, less one renewal period, so that it runs out here before it does in the
    /// leader's book even though expiry is only noticed at the next renewal.
    pub fn apply_lease(&self, grant: &LeaseGrant, sent: Instant, now: Instant) {
        // Never longer than this node's own lease (a peer's number is not trusted further).
        let lease = Duration::from_millis(grant.lease_ms).min(LEASE);
        let until = sent
            .checked_add(lease.saturating_sub(RELOAD_EVERY))
            .unwrap_or(sent);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(f) = Factor::from_ppm(grant.factor_ppm) {
            inner.factor = f;
        }
        inner.utilization = f64::from(grant.utilization_ppm.min(1_000_000)) / 1e6;
        for (name, ppm) in &grant.shares {
            let Ok(share) = Factor::from_ppm(*ppm) else {
                continue;
            };
            if let Some(e) = inner.policies.iter_mut().find(|e| e.policy.name == *name) {
                e.lease = Some((share, until));
            }
        }
        inner.rescale(now);
    }

    /// Lets leases that ran out fall back (without a grant: no leader reachable).
    pub fn expire(&self, now: Instant) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rescale(now);
    }

    /// The cluster's adaptive factor and the leader's utilization it follows.
    pub fn factor(&self) -> (Factor, f64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.factor, inner.utilization)
    }

    /// Per policy: this node's share, factor, tokens left, demand and refusals.
    pub fn counts(&self, now_ns: u64, now: Instant) -> Vec<PolicyCounts> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (members, factor, origin) = (inner.members, inner.factor, inner.origin);
        inner
            .policies
            .iter_mut()
            .map(|e| {
                // No key is copied: this runs under the admission lock.
                let (lowest, keys) = e.limiter.lowest(now_ns);
                let tokens_left = match e.policy.key {
                    KeyBy::Shared => e.limiter.get().remaining(&String::new(), now_ns),
                    _ => {
                        lowest.unwrap_or_else(|| e.limiter.get().remaining(&String::new(), now_ns))
                    }
                };
                let share = e.share(members, origin, now);
                PolicyCounts {
                    name: e.policy.name.clone(),
                    share_ppm: share.ppm(),
                    admits_per_sec: e.policy.algorithm.rate_per_sec()
                        * share.times(factor).as_f64(),
                    factor_ppm: factor.ppm(),
                    leased: e.lease.is_some_and(|(_, until)| now < until),
                    tokens_left,
                    keys,
                    demand_per_sec: e.demand_milli as f64 / 1e3,
                    refused: e.refused,
                    shadow_refused: e.shadow_refused,
                }
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

    /// The leader's grant of `ppm` of every policy in force, asked at `t`.
    fn lease_all(g: &Guards, ppm: u32, t: Instant) {
        let shares = g
            .lease_ask(1, t)
            .policies
            .into_iter()
            .map(|p| (p.name, ppm))
            .collect();
        let grant = LeaseGrant {
            factor_ppm: 1_000_000,
            utilization_ppm: 0,
            lease_ms: 60_000,
            shares,
        };
        g.apply_lease(&grant, t, t);
    }

    fn anon(ip: &str) -> Caller {
        Caller::anonymous(Some(format!("{ip}:1234").parse().unwrap()))
    }

    #[test]
    fn a_policy_refuses_past_its_burst_with_the_retry_time() {
        let g = Guards::default();
        g.update(
            vec![policy("p", KeyBy::Shared, vec![], false)],
            1,
            0,
            Instant::now(),
        );
        lease_all(&g, 1_000_000, Instant::now());
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
        assert_eq!(g.counts(0, Instant::now())[0].refused, 2);
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
            Instant::now(),
        );
        lease_all(&g, 1_000_000, Instant::now());
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
        let counts = g.counts(0, Instant::now());
        assert_eq!(counts[2].shadow_refused, 6);
        assert_eq!(counts[2].refused, 0);

        // Three members: this node's share is a third of the burst (1 of 4, rounded down
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
            Instant::now(),
        );
        lease_all(&g, 333_333, Instant::now());
        assert_eq!(g.counts(0, Instant::now())[0].share_ppm, 333_333);
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
        g.update(vec![p.clone()], 1, SEC, Instant::now());
        lease_all(&g, 1_000_000, Instant::now());
        let c = anon("127.0.0.1");
        for _ in 0..4 {
            g.admit(&c, Method::Append, None, 1, SEC).unwrap();
        }
        let stored: StoredGuards =
            serde_json::from_str(&serde_json::to_string(&g.export()).unwrap()).unwrap();

        let restarted = Guards::default();
        restarted.restore_later(stored.clone());
        restarted.update(vec![p.clone()], 1, SEC + SEC / 10, Instant::now());
        lease_all(&restarted, 1_000_000, Instant::now());
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
        fresh.update(vec![changed], 1, SEC, Instant::now());
        lease_all(&fresh, 1_000_000, Instant::now());
        for _ in 0..5 {
            fresh.admit(&c, Method::Append, None, 1, SEC).unwrap();
        }
    }

    /// Demand is measured for the lease request; a grant sets the share and the cluster's
    /// factor; a lease that ran out falls back to min(last share, 1/N).
    #[test]
    fn leases_set_the_share_and_run_out_to_the_fallback() {
        let g = Guards::default();
        let t0 = Instant::now();
        g.update(vec![policy("p", KeyBy::Shared, vec![], false)], 3, SEC, t0);
        let c = anon("127.0.0.1");
        for _ in 0..10 {
            let _ = g.admit(&c, Method::Append, None, 1, SEC);
        }
        let ask = g.lease_ask(7, t0);
        assert_eq!(ask.from, 7);
        // 10 units over one renewal period (0.25 s) is 40/s; half of it the first time.
        assert_eq!(ask.policies[0].demand_milli, 20_000);
        assert_eq!(
            ask.policies[0].holding_ppm, 1_000,
            "no grant yet: the minimum"
        );
        let ask = g.lease_ask(7, t0 + Duration::from_secs(1));
        assert_eq!(ask.policies[0].demand_milli, 10_000, "no demand for 1 s");

        let grant = LeaseGrant {
            factor_ppm: 500_000,
            utilization_ppm: 900_000,
            // Longer than this node's own lease: taken as LEASE (1 s).
            lease_ms: 60_000,
            shares: vec![("p".into(), 1_000_000), ("gone".into(), 1_000_000)],
        };
        g.apply_lease(&grant, t0, t0);
        assert_eq!(g.factor(), (Factor::from_ppm(500_000).unwrap(), 0.9));
        let counts = &g.counts(100 * SEC, t0)[0];
        assert_eq!(
            (counts.share_ppm, counts.factor_ppm, counts.leased),
            (1_000_000, 500_000, true)
        );
        assert_eq!(counts.tokens_left, 2, "the whole burst of 4, halved");
        for _ in 0..2 {
            g.admit(&c, Method::Append, None, 1, 100 * SEC).unwrap();
        }
        assert!(g.admit(&c, Method::Append, None, 1, 100 * SEC).is_err());

        // The lease runs from when it was asked, less one renewal period (0.75 s); admission
        // itself notices its end, without waiting for the renewal loop.
        std::thread::sleep(Duration::from_millis(800).saturating_sub(t0.elapsed()));
        let admitted = (0..3)
            .filter(|_| g.admit(&c, Method::Append, None, 1, 200 * SEC).is_ok())
            .count();
        assert_eq!(
            admitted, 1,
            "the fallback's bucket holds a sixth of 4 tokens (never below one), not 2"
        );
        let counts = &g.counts(200 * SEC, Instant::now())[0];
        assert_eq!((counts.share_ppm, counts.leased), (333_333, false));
        // One lease later still: the minimum.
        g.expire(t0 + Duration::from_millis(1_800));
        let later = t0 + Duration::from_millis(1_800);
        assert_eq!(g.counts(300 * SEC, later)[0].share_ppm, 1_000);
    }
}
