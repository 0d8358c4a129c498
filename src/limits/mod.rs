//! Rate-limit policies as replicated state: set and deleted through Raft
//! (`Command::SetLimit`, `Command::DeleteLimit`), stored in the state machine's `meta`
//! column family (so a snapshot carries them), the same on every node after a restart or a
//! leader change. Pure data and its checks, plus the state machine's reads and writes of
//! it; enforcement (shares, leases, the adaptive factor) builds on the cores in
//! `aether_guard`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::storage::codec::{decode, encode};
use crate::storage::sm_db::{SmWriteBatch, CF_META};
use crate::storage::{SmDb, StorageError};

/// Most policies a cluster holds (each is checked on every request it covers).
pub const MAX_POLICIES: usize = 64;
/// Longest policy name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The apply rules that know policies: a cluster adopts them once every voter runs code
/// that does (`Command::AdoptRules`).
pub const POLICY_RULES_VERSION: u32 = 3;

/// Key prefix of policies in the `meta` column family.
const KEY_PREFIX: &[u8] = b"limit/";

/// The operations a policy can cover (the service layer's, by family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Method {
    Append,
    Read,
    Subscribe,
    WorkflowWrite,
    WorkflowRead,
    Ingest,
    TelemetryQuery,
    Admin,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Append,
        Method::Read,
        Method::Subscribe,
        Method::WorkflowWrite,
        Method::WorkflowRead,
        Method::Ingest,
        Method::TelemetryQuery,
        Method::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Append => "Append",
            Method::Read => "Read",
            Method::Subscribe => "Subscribe",
            Method::WorkflowWrite => "WorkflowWrite",
            Method::WorkflowRead => "WorkflowRead",
            Method::Ingest => "Ingest",
            Method::TelemetryQuery => "TelemetryQuery",
            Method::Admin => "Admin",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown method {s:?}: one of {}", names.join(", "))
            })
    }
}

/// What a policy counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyBy {
    /// One count for every request the policy covers.
    Shared,
    /// One per caller (the authenticated subject, else the peer address).
    Caller,
    /// One per stream or series prefix: a series up to and including its first `/`
    /// (`sat-7/battery` → `sat-7/`), a stream up to and including its first `-`
    /// (`orders-17` → `orders-`), or the whole name.
    StreamPrefix,
    /// One per method.
    Method,
}

impl KeyBy {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyBy::Shared => "shared",
            KeyBy::Caller => "caller",
            KeyBy::StreamPrefix => "stream-prefix",
            KeyBy::Method => "method",
        }
    }
}

impl FromStr for KeyBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            KeyBy::Shared,
            KeyBy::Caller,
            KeyBy::StreamPrefix,
            KeyBy::Method,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("key {s:?}: shared, caller, stream-prefix or method"))
    }
}

/// How a policy counts. Rates are integers (thousandths per second) so that a policy is
/// exact, comparable and the same bytes on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    /// A burst of `burst` passes at once; `refill_millis` thousandths of a token come back
    /// per second (0.27/s = 270).
    TokenBucket { burst: u64, refill_millis: u64 },
    /// At most `limit` per `window_ms`, counted over `window_count` sub-windows.
    SlidingWindow {
        limit: u64,
        window_ms: u64,
        window_count: u32,
    },
}

impl Algorithm {
    /// The long-run rate it admits, per second.
    pub fn rate_per_sec(&self) -> f64 {
        match *self {
            Algorithm::TokenBucket { refill_millis, .. } => refill_millis as f64 / 1e3,
            Algorithm::SlidingWindow {
                limit, window_ms, ..
            } => limit as f64 * 1e3 / window_ms.max(1) as f64,
        }
    }

    /// `BURST,RATE` (RATE per second, up to three decimals: `100,0.27`).
    pub fn token_bucket(spec: &str) -> Result<Algorithm, String> {
        let (burst, rate) = spec
            .split_once(',')
            .ok_or_else(|| format!("token bucket {spec:?}: give BURST,RATE"))?;
        let burst = burst
            .trim()
            .parse()
            .map_err(|_| format!("token bucket burst {burst:?} is not a whole number"))?;
        let refill_millis = thousandths(rate.trim())
            .ok_or_else(|| format!("token bucket rate {rate:?}: a number with up to 3 decimals"))?;
        Ok(Algorithm::TokenBucket {
            burst,
            refill_millis,
        })
    }

    /// `LIMIT,WINDOW,COUNT` (WINDOW as `10s`, `1m`, `500ms`).
    pub fn sliding_window(spec: &str) -> Result<Algorithm, String> {
        let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
        let [limit, window, count] = parts[..] else {
            return Err(format!(
                "sliding window {spec:?}: give LIMIT,WINDOW,COUNT (e.g. 1000,10s,10)"
            ));
        };
        Ok(Algorithm::SlidingWindow {
            limit: limit
                .parse()
                .map_err(|_| format!("sliding window limit {limit:?} is not a whole number"))?,
            window_ms: crate::time::parse_duration_ms(window)
                .map_err(|e| format!("sliding window: {e} (e.g. 500ms, 10s, 1m, 1h)"))?,
            window_count: count
                .parse()
                .map_err(|_| format!("sliding window count {count:?} is not a whole number"))?,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::TokenBucket {
                burst,
                refill_millis,
            } => write!(
                f,
                "token bucket: burst {burst}, {}.{:03}/s",
                refill_millis / 1000,
                refill_millis % 1000
            ),
            Algorithm::SlidingWindow {
                limit,
                window_ms,
                window_count,
            } => write!(
                f,
                "sliding window: {limit} per {window_ms} ms over {window_count} sub-windows"
            ),
        }
    }
}

/// `1.5` → 1500; at most three decimals, no sign.
fn thousandths(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 3 {
        return None;
    }
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = format!("{frac:0<3}").parse().ok()?;
    whole.checked_mul(1000)?.checked_add(frac)
}

/// A rate-limit policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitPolicy {
    pub name: String,
    /// The methods it covers; empty: all.
    pub methods: Vec<Method>,
    pub key: KeyBy,
    pub algorithm: Algorithm,
    /// Counts and reports what it would refuse, without refusing.
    pub shadow: bool,
}

impl LimitPolicy {
    /// The checks a policy passes wherever it enters (a client, a peer's `Propose`) and
    /// again in apply.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        let mut methods = self.methods.clone();
        methods.sort();
        methods.dedup();
        if methods.len() != self.methods.len() {
            return Err(format!("policy {:?} lists a method twice", self.name));
        }
        match self.algorithm {
            Algorithm::TokenBucket {
                burst,
                refill_millis,
            } => {
                if burst == 0 || burst > 1_000_000_000 {
                    return Err("a token bucket's burst is 1 to 1e9".into());
                }
                if refill_millis == 0 || refill_millis > 1_000_000_000_000 {
                    return Err("a token bucket's rate is 0.001 to 1e9 per second".into());
                }
            }
            Algorithm::SlidingWindow {
                limit,
                window_ms,
                window_count,
            } => {
                if limit == 0 || limit > 1_000_000_000 {
                    return Err("a sliding window's limit is 1 to 1e9".into());
                }
                if !(10..=86_400_000).contains(&window_ms) {
                    return Err("a sliding window is 10 ms to 24 h long".into());
                }
                if !(1..=1000).contains(&window_count) || window_ms / u64::from(window_count) < 1 {
                    return Err(
                        "a sliding window has 1 to 1000 sub-windows of 1 ms at least".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the policy covers `method`.
    pub fn covers(&self, method: Method) -> bool {
        self.methods.is_empty() || self.methods.contains(&method)
    }
}

pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a policy name is 1 to {MAX_NAME_BYTES} bytes, not {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "policy name {name:?}: letters, digits, '-', '_' and '.' only"
        ));
    }
    Ok(())
}

fn key(name: &str) -> Vec<u8> {
    [KEY_PREFIX, name.as_bytes()].concat()
}

/// Every policy, by name.
pub fn load_all(db: &SmDb) -> Result<Vec<LimitPolicy>, StorageError> {
    let meta = db.cf(CF_META)?;
    let mut out = Vec::new();
    for item in db.db().prefix_iterator_cf(meta, KEY_PREFIX) {
        let (k, v) = item?;
        if !k.starts_with(KEY_PREFIX) {
            break;
        }
        out.push(decode("limit policy", &v)?);
    }
    Ok(out)
}

/// What applying a policy change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyOutcome {
    /// Set; `replaced` when a policy of that name existed.
    Set { replaced: bool },
    /// Deleted; `existed` false when there was none of that name.
    Deleted { existed: bool },
    /// Refused (a replicated decision); nothing was written.
    Refused { reason: String },
}

/// Applies policy changes in the state machine, within one entry: the entry's earlier
/// changes are seen by its later ones (the batch is not readable until it is written).
pub struct PolicyApplier<'a> {
    db: &'a SmDb,
    /// The policies as of the entry's last change, loaded on first use.
    current: Option<std::collections::BTreeMap<String, LimitPolicy>>,
}

impl<'a> PolicyApplier<'a> {
    pub fn new(db: &'a SmDb) -> Self {
        PolicyApplier { db, current: None }
    }

    fn current(
        &mut self,
    ) -> Result<&mut std::collections::BTreeMap<String, LimitPolicy>, StorageError> {
        if self.current.is_none() {
            let all = load_all(self.db)?;
            self.current = Some(all.into_iter().map(|p| (p.name.clone(), p)).collect());
        }
        Ok(self.current.get_or_insert_with(Default::default))
    }

    /// Sets (or replaces) a policy.
    pub fn set(
        &mut self,
        wb: &mut SmWriteBatch<'_>,
        policy: &LimitPolicy,
    ) -> Result<PolicyOutcome, StorageError> {
        if let Err(reason) = policy.validate() {
            return Ok(PolicyOutcome::Refused { reason });
        }
        let current = self.current()?;
        let replaced = current.contains_key(&policy.name);
        if !replaced && current.len() >= MAX_POLICIES {
            return Ok(PolicyOutcome::Refused {
                reason: format!("the cluster holds {MAX_POLICIES} policies, its limit"),
            });
        }
        wb.put(
            CF_META,
            &key(&policy.name),
            &encode("limit policy", policy)?,
        )?;
        current.insert(policy.name.clone(), policy.clone());
        Ok(PolicyOutcome::Set { replaced })
    }

    /// Deletes a policy.
    pub fn delete(
        &mut self,
        wb: &mut SmWriteBatch<'_>,
        name: &str,
    ) -> Result<PolicyOutcome, StorageError> {
        if let Err(reason) = check_name(name) {
            return Ok(PolicyOutcome::Refused { reason });
        }
        let existed = self.current()?.remove(name).is_some();
        if existed {
            wb.delete(CF_META, &key(name))?;
        }
        Ok(PolicyOutcome::Deleted { existed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(algorithm: Algorithm) -> LimitPolicy {
        LimitPolicy {
            name: "writes".into(),
            methods: vec![Method::Append, Method::Ingest],
            key: KeyBy::Caller,
            algorithm,
            shadow: false,
        }
    }

    #[test]
    fn specs_parse_exactly_or_say_what_is_wrong() {
        let ok: &[(&str, Algorithm)] = &[
            (
                "100,0.27",
                Algorithm::TokenBucket {
                    burst: 100,
                    refill_millis: 270,
                },
            ),
            (
                "5, 12",
                Algorithm::TokenBucket {
                    burst: 5,
                    refill_millis: 12_000,
                },
            ),
            (
                "1,.5",
                Algorithm::TokenBucket {
                    burst: 1,
                    refill_millis: 500,
                },
            ),
        ];
        for (spec, want) in ok {
            assert_eq!(Algorithm::token_bucket(spec).as_ref(), Ok(want), "{spec}");
        }
        for bad in ["100", "x,1", "1,0.0001", "1,-1", "1,", "1,1e3"] {
            assert!(Algorithm::token_bucket(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Algorithm::sliding_window("1000,10s,10"),
            Ok(Algorithm::SlidingWindow {
                limit: 1000,
                window_ms: 10_000,
                window_count: 10
            })
        );
        assert_eq!(
            Algorithm::sliding_window("3,500ms,5"),
            Ok(Algorithm::SlidingWindow {
                limit: 3,
                window_ms: 500,
                window_count: 5
            })
        );
        for bad in ["1000,10s", "1000,10,10", "x,1s,1", "1,1s,x", "1,1w,1"] {
            assert!(Algorithm::sliding_window(bad).is_err(), "{bad}");
        }
        assert_eq!("ingest".parse::<Method>(), Ok(Method::Ingest));
        assert!("Bogus".parse::<Method>().is_err());
        assert_eq!("stream-prefix".parse::<KeyBy>(), Ok(KeyBy::StreamPrefix));
    }

    #[test]
    fn policies_out_of_bounds_are_refused() {
        let tb = |burst, refill_millis| {
            policy(Algorithm::TokenBucket {
                burst,
                refill_millis,
            })
        };
        let sw = |limit, window_ms, window_count| {
            policy(Algorithm::SlidingWindow {
                limit,
                window_ms,
                window_count,
            })
        };
        assert_eq!(tb(10, 1000).validate(), Ok(()));
        assert_eq!(sw(10, 1000, 10).validate(), Ok(()));
        for bad in [
            tb(0, 1),
            tb(1, 0),
            sw(0, 1000, 1),
            sw(1, 5, 1),
            sw(1, 10, 11),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let mut twice = tb(1, 1);
        twice.methods = vec![Method::Append, Method::Append];
        assert!(twice.validate().is_err());
        for name in ["", "a b", "x/y", &"n".repeat(65)] {
            let mut p = tb(1, 1);
            p.name = name.into();
            assert!(p.validate().is_err(), "{name:?}");
        }
        assert!(tb(1, 1).covers(Method::Append) && !tb(1, 1).covers(Method::Read));
        let mut all = tb(1, 1);
        all.methods.clear();
        assert!(Method::ALL.iter().all(|m| all.covers(*m)));
    }
}
