//! The one telemetry query path (`telemetry::query`, which gRPC and GraphQL both call) on a
//! real state machine, exact against the raw points counted directly: calendar buckets
//! between explicit edges (Berlin days of 23, 24 and 25 hours, Kathmandu midnights off the
//! hour, edges off the minute), equal to fixed-width buckets where the edges are regular;
//! MAD anomalies beside z-score ones; drift found from rollups where raw points expired.

use std::collections::BTreeMap;

use aetherops::raft::state_machine::StateMachine;
use aetherops::raft::{Command, Entry, LogId, Request};
use aetherops::telemetry::anomaly::{AnomalyKind, AnomalyMethod};
use aetherops::telemetry::command::TelemetryCommand;
use aetherops::telemetry::drift::Direction;
use aetherops::telemetry::points::segments_of;
use aetherops::telemetry::query::{
    query, BucketOut, DriftSpec, QueryError, QueryResult, QuerySpec, Tier, TierChoice,
    MAX_QUERY_ANOMALIES, MAX_QUERY_BUCKETS,
};
use aetherops::telemetry::retention::RetentionPolicy;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const SEC: i64 = 1_000_000_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// A state machine of its own, fed entries directly (no node: the query is a function of
/// the applied state).
struct Store {
    _dir: tempfile::TempDir,
    sm: StateMachine,
    index: u64,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        Store {
            _dir: dir,
            sm,
            index: 0,
        }
    }

    async fn apply(&mut self, commit_time_ns: i64, commands: Vec<TelemetryCommand>) {
        self.index += 1;
        self.sm
            .apply([Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                payload: EntryPayload::Normal(Request {
                    commit_time_ns,
                    dedupe_window_ns: 1,
                    commands: commands.into_iter().map(Command::Telemetry).collect(),
                }),
            }])
            .await
            .unwrap();
    }

    /// Keeps every tier of `prefix` forever.
    async fn keep_forever(&mut self, at: i64, prefix: &str) {
        self.apply(
            at,
            vec![TelemetryCommand::SetRetention(policy(prefix, 0, 0))],
        )
        .await;
    }

    async fn ingest(&mut self, at: i64, series: &str, truth: &BTreeMap<i64, f64>) {
        let ts: Vec<i64> = truth.keys().copied().collect();
        let vals: Vec<f64> = truth.values().copied().collect();
        let segs = segments_of(series, &ts, &vals).unwrap();
        self.apply(at, vec![TelemetryCommand::Ingest(segs)]).await;
    }

    fn query(&self, q: &QuerySpec) -> Result<QueryResult, QueryError> {
        query(&self.sm.store().db(), q)
    }
}

fn policy(prefix: &str, raw_ms: u64, minute_ms: u64) -> RetentionPolicy {
    RetentionPolicy {
        prefix: prefix.into(),
        raw_ms,
        minute_ms,
        hour_ms: 0,
        lateness_ms: 0,
    }
}

/// Deterministic pseudo-noise in [-0.5, 0.5).
fn noise(i: i64) -> f64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// Local midnight starting `date` (`YYYY-MM-DD`) in `zone`, in ns since the epoch.
fn midnight(date: &str, zone: &str) -> i64 {
    let d: jiff::civil::Date = date.parse().unwrap();
    d.in_tz(zone).unwrap().timestamp().as_nanosecond() as i64
}

/// Local midnights of `days` consecutive days from `first`.
fn midnights(first: &str, days: usize, zone: &str) -> Vec<i64> {
    let mut d: jiff::civil::Date = first.parse().unwrap();
    let mut out = Vec::new();
    for _ in 0..days {
        out.push(d.in_tz(zone).unwrap().timestamp().as_nanosecond() as i64);
        d = d.tomorrow().unwrap();
    }
    out
}

fn utc(s: &str) -> i64 {
    aetherops::time::parse_time_ns(s).unwrap()
}

/// The buckets `[b_i, b_{i+1})` that hold points, with their values, counted directly.
fn reference(truth: &BTreeMap<i64, f64>, bounds: &[i64]) -> Vec<(i64, i64, Vec<f64>)> {
    bounds
        .windows(2)
        .map(|b| {
            (
                b[0],
                b[1],
                truth.range(b[0]..b[1]).map(|(_, v)| *v).collect(),
            )
        })
        .filter(|(_, _, v): &(i64, i64, Vec<f64>)| !v.is_empty())
        .collect()
}

/// Every bucket holds exactly the points counted directly: count, extremes, first, last;
/// the mean to rounding.
fn check(got: &[BucketOut], want: &[(i64, i64, Vec<f64>)]) {
    let spans = |g: &[BucketOut]| g.iter().map(|b| (b.start_ns, b.end_ns)).collect::<Vec<_>>();
    assert_eq!(
        spans(got),
        want.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
        "bucket spans"
    );
    for (b, (start, _, vals)) in got.iter().zip(want) {
        let m = &b.moments;
        assert_eq!(m.count(), vals.len() as u64, "count at {start}");
        let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(
            (m.min(), m.max()),
            (Some(min), Some(max)),
            "extremes at {start}"
        );
        assert_eq!(m.first().map(|f| f.1), vals.first().copied());
        assert_eq!(m.last().map(|l| l.1), vals.last().copied());
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let got_mean = m.mean().unwrap();
        assert!(
            (got_mean - mean).abs() <= 1e-12 * mean.abs(),
            "mean at {start}: {got_mean} vs {mean}"
        );
    }
}

/// A point every 53 s (never on a minute edge for long) over `[from, to)`.
fn points(from: i64, to: i64, truth: &mut BTreeMap<i64, f64>) {
    let mut t = from + 7 * SEC;
    let mut i = 0;
    while t < to {
        truth.insert(t, 50.0 + 10.0 * (i as f64 * 0.01).sin() + noise(i));
        t += 53 * SEC;
        i += 1;
    }
}

/// Two spells of data around Berlin's 2026 DST changes (29 March: 23 h; 25 October: 25 h),
/// every tier kept; `now` a month after.
async fn dst_store() -> (Store, BTreeMap<i64, f64>) {
    let mut s = Store::new();
    let now = utc("2026-11-28T00:00:00Z");
    s.keep_forever(now, "cal/").await;
    let mut truth = BTreeMap::new();
    points(
        utc("2026-03-26T12:00:00Z"),
        utc("2026-04-01T12:00:00Z"),
        &mut truth,
    );
    points(
        utc("2026-10-22T12:00:00Z"),
        utc("2026-10-28T12:00:00Z"),
        &mut truth,
    );
    s.ingest(now, "cal/x", &truth).await;
    (s, truth)
}

fn with_edges(series: &str, start: i64, end: i64, edges: Vec<i64>) -> QuerySpec {
    QuerySpec {
        edges: Some(edges),
        ..QuerySpec::range(series, start, end)
    }
}

#[tokio::test]
async fn berlin_days_of_23_and_25_hours_hold_exactly_their_raw_points() {
    let (s, truth) = dst_store().await;
    let tz = "Europe/Berlin";
    // Every local midnight from 27 March to 28 October: days without data are left out.
    let first = midnight("2026-03-27", tz);
    let days = (midnight("2026-10-28", tz) - first) / DAY + 1;
    let edges = midnights("2026-03-27", days as usize + 1, tz);
    let (start, end) = (edges[0], *edges.last().unwrap());
    let spring = midnight("2026-03-29", tz);
    let autumn = midnight("2026-10-25", tz);
    assert!(edges.contains(&spring) && edges.contains(&autumn));
    let r = s
        .query(&with_edges("cal/x", start, end, edges.clone()))
        .unwrap();
    check(&r.buckets, &reference(&truth, &edges));
    assert_eq!(r.bucket_ns, 0);
    let day = |t: i64| r.buckets.iter().find(|b| b.start_ns == t).unwrap();
    assert_eq!(day(spring).end_ns - spring, 23 * HOUR);
    assert_eq!(day(autumn).end_ns - autumn, 25 * HOUR);
    // A 23 h day holds 23 hours of points, a 25 h day 25: counted directly above, and
    // here in round numbers (a point every 53 s).
    let per = |hours: u64| (hours * 3600 / 53)..=(hours * 3600 / 53 + 1);
    assert!(per(23).contains(&day(spring).moments.count()));
    assert!(per(25).contains(&day(autumn).moments.count()));
    // Whole days come from the hour tier (local midnights there are on the hour).
    assert!(r.buckets[1..r.buckets.len() - 1]
        .iter()
        .all(|b| b.tier == Tier::Hour));
    assert_eq!(r.summary.count(), truth.range(start..end).count() as u64);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[tokio::test]
async fn edges_off_the_hour_and_off_the_minute_are_served_by_finer_tiers() {
    let (s, truth) = dst_store().await;
    // Kathmandu is UTC+05:45: its midnights fall at 18:15 UTC, inside hour buckets.
    let edges = midnights("2026-03-27", 6, "Asia/Kathmandu");
    assert_eq!(edges[0] % HOUR, 15 * MIN);
    let r = s
        .query(&with_edges("cal/x", edges[0], edges[5], edges.clone()))
        .unwrap();
    check(&r.buckets, &reference(&truth, &edges));
    assert!(r.buckets.iter().all(|b| b.tier == Tier::Hour));
    // Edges anywhere (off the minute, uneven), the range's start and end added as edges
    // where not given: every point of the range is in one bucket.
    let (start, end) = (utc("2026-03-28T03:17:09Z"), utc("2026-03-30T20:00:01Z"));
    let inner = vec![
        utc("2026-03-28T03:59:59.5Z"),
        utc("2026-03-28T22:00:00Z"),
        utc("2026-03-29T00:00:13Z"),
        utc("2026-03-29T00:01:00Z"),
        utc("2026-03-30T19:00:00Z"),
    ];
    let r = s
        .query(&with_edges("cal/x", start, end, inner.clone()))
        .unwrap();
    let mut bounds = vec![start];
    bounds.extend(&inner);
    bounds.push(end);
    check(&r.buckets, &reference(&truth, &bounds));
    assert_eq!(r.summary.count(), truth.range(start..end).count() as u64);
    // The same with start and end given: the same answer.
    let again = s.query(&with_edges("cal/x", start, end, bounds)).unwrap();
    assert_eq!(again, r);
}

#[tokio::test]
async fn regular_edges_answer_exactly_as_fixed_width_buckets() {
    let (s, _) = dst_store().await;
    let start = utc("2026-03-27T05:00:00Z");
    for (from, width, n) in [
        (start, 2 * HOUR, 40),
        (start, 10 * MIN, 300),
        (start + 20 * MIN, HOUR, 50),
        (start + 7 * SEC, MIN, 500),
        (start, DAY, 5),
    ] {
        let end = from + width * n;
        let fixed = s
            .query(&QuerySpec {
                bucket_ns: width,
                median: width == MIN,
                ..QuerySpec::range("cal/x", from, end)
            })
            .unwrap();
        // Fixed-width buckets are aligned to multiples of the width: the edges are too.
        let first = from - from.rem_euclid(width);
        let edges: Vec<i64> = (1..n + 1)
            .map(|k| first + k * width)
            .filter(|e| *e > from && *e < end)
            .collect();
        let cal = s
            .query(&QuerySpec {
                median: width == MIN,
                ..with_edges("cal/x", from, end, edges)
            })
            .unwrap();
        assert!(!fixed.buckets.is_empty());
        // The first fixed bucket starts at its aligned start, before the range, and the
        // last ends at its aligned end: calendar buckets at the range's start and end.
        // Otherwise bit for bit the same.
        let mut fixed_buckets = fixed.buckets.clone();
        fixed_buckets[0].start_ns = from.max(fixed_buckets[0].start_ns);
        let last = fixed_buckets.len() - 1;
        fixed_buckets[last].end_ns = end.min(fixed_buckets[last].end_ns);
        assert_eq!(cal.buckets, fixed_buckets, "{width} ns from {from}");
        assert_eq!(cal.summary, fixed.summary);
        assert_eq!(cal.raw_points, fixed.raw_points);
    }
}

#[tokio::test]
async fn random_edges_hold_exactly_their_raw_points() {
    let (s, truth) = dst_store().await;
    let lo = utc("2026-03-27T00:00:00Z");
    let hi = utc("2026-03-31T00:00:00Z");
    // Edges on the hour, on the minute and anywhere, mixed.
    let edge = prop_oneof![
        (0..(hi - lo) / HOUR).prop_map(move |h| lo + h * HOUR),
        (0..(hi - lo) / MIN).prop_map(move |m| lo + m * MIN),
        (0..hi - lo).prop_map(move |t| lo + t),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::btree_set(edge, 2..40), |edges| {
            let bounds: Vec<i64> = edges.into_iter().collect();
            let (start, end) = (bounds[0], *bounds.last().unwrap());
            let r = s
                .query(&with_edges("cal/x", start, end, bounds.clone()))
                .unwrap();
            check(&r.buckets, &reference(&truth, &bounds));
            prop_assert_eq!(r.summary.count(), truth.range(start..end).count() as u64);
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn mad_anomalies_are_scored_and_signed_beside_z_scores() {
    let mut s = Store::new();
    let now = utc("2026-11-28T00:00:00Z");
    let start = now - HOUR;
    let mut truth: BTreeMap<i64, f64> = (0..2000)
        .map(|i| (start + i * SEC, 10.0 + noise(i)))
        .collect();
    let (spike, dip) = (start + 500 * SEC, start + 1500 * SEC);
    truth.insert(spike, 30.0);
    truth.insert(dip, -5.0);
    s.ingest(now, "mad/x", &truth).await;
    let range = QuerySpec {
        bucket_ns: 10 * MIN,
        ..QuerySpec::range("mad/x", start, start + 2000 * SEC)
    };
    let r = s
        .query(&QuerySpec {
            anomaly_mad: Some(3.5),
            ..range.clone()
        })
        .unwrap();
    let got: Vec<_> = r
        .anomalies
        .iter()
        .map(|a| (a.ts_ns, a.value, a.kind, a.method))
        .collect();
    assert_eq!(
        got,
        vec![
            (spike, 30.0, AnomalyKind::High, AnomalyMethod::Mad),
            (dip, -5.0, AnomalyKind::Low, AnomalyMethod::Mad),
        ]
    );
    // Median ≈ 10, MAD ≈ 0.25: the spike scores about 0.6745 · 20 / 0.25 ≈ 54.
    assert!(
        (40.0..70.0).contains(&r.anomalies[0].score),
        "{:?}",
        r.anomalies
    );
    assert!(r.anomalies[1].score < -40.0, "{:?}", r.anomalies);
    // Both methods in one answer, in time order.
    let both = s
        .query(&QuerySpec {
            anomaly_mad: Some(3.5),
            anomaly_z: Some(6.0),
            ..range.clone()
        })
        .unwrap();
    let methods: Vec<_> = both.anomalies.iter().map(|a| (a.ts_ns, a.method)).collect();
    assert_eq!(
        methods,
        vec![
            (spike, AnomalyMethod::ZScore),
            (spike, AnomalyMethod::Mad),
            (dip, AnomalyMethod::ZScore),
            (dip, AnomalyMethod::Mad),
        ]
    );
    assert!(both.anomalies[0].score > 6.0 && both.anomalies[2].score < -6.0);
}

/// A threshold that flags every point answers with at most `MAX_QUERY_ANOMALIES`, the
/// earliest, and says so.
#[tokio::test]
async fn anomalies_are_bounded_and_the_cut_is_said() {
    let mut s = Store::new();
    let now = utc("2026-11-28T00:00:00Z");
    let n = MAX_QUERY_ANOMALIES as i64 + 20_000;
    let start = now - HOUR;
    // 0, 10, 0, 10, …: median 5, MAD 5, every score ±0.6745.
    let truth: BTreeMap<i64, f64> = (0..n)
        .map(|i| (start + i * 10_000_000, if i % 2 == 0 { 0.0 } else { 10.0 }))
        .collect();
    s.ingest(now, "mad/all", &truth).await;
    let r = s
        .query(&QuerySpec {
            bucket_ns: 10 * MIN,
            anomaly_mad: Some(0.5),
            ..QuerySpec::range("mad/all", start, now)
        })
        .unwrap();
    assert_eq!(r.anomalies.len(), MAX_QUERY_ANOMALIES);
    assert_eq!(r.anomalies[0].ts_ns, start);
    assert!(r.anomalies.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
    assert!(
        r.notes
            .iter()
            .any(|m| m.contains(&format!("{n} anomalies found"))),
        "{:?}",
        r.notes
    );
}

/// Two days of 10 s points with a level shift at a known time, or none, imported under a
/// policy that keeps raw points 1 h: queried 3 days later, only rollups remain.
async fn drift_store(shift_at: Option<i64>) -> (Store, i64, i64) {
    let mut s = Store::new();
    let start = utc("2026-11-01T00:00:00Z");
    let end = start + 2 * DAY;
    s.apply(
        start,
        vec![TelemetryCommand::SetRetention(policy(
            "drift/",
            3_600_000,
            30 * 24 * 3_600_000,
        ))],
    )
    .await;
    let truth: BTreeMap<i64, f64> = (0..(2 * DAY / (10 * SEC)))
        .map(|i| {
            let t = start + i * 10 * SEC;
            let level = if shift_at.is_some_and(|s| t >= s) {
                103.0
            } else {
                100.0
            };
            (t, level + noise(i))
        })
        .collect();
    s.ingest(end + MIN, "drift/x", &truth).await;
    // Time moves on (another series' point): raw points of drift/x expire.
    let later = end + 3 * DAY;
    let one: BTreeMap<i64, f64> = [(later, 1.0)].into();
    s.ingest(later, "drift/clock", &one).await;
    (s, start, end)
}

#[tokio::test]
async fn drift_is_found_from_rollups_within_a_window_of_the_shift() {
    let shift = utc("2026-11-02T06:20:00Z"); // 30 h 20 min in
    let (s, start, end) = drift_store(Some(shift)).await;
    let q = QuerySpec {
        bucket_ns: 6 * HOUR,
        drift: Some(DriftSpec {
            window_ns: HOUR,
            threshold: None,
        }),
        ..QuerySpec::range("drift/x", start, end)
    };
    let r = s.query(&q).unwrap();
    assert_eq!(r.raw_points, 0, "raw points expired");
    assert_eq!(r.drift.len(), 1, "{:?}", r.drift);
    let d = r.drift[0];
    assert_eq!(d.direction, Direction::Up);
    assert!((d.start_ns - shift).abs() <= 2 * HOUR, "{d:?}");
    assert!(
        d.alarm_ns >= d.start_ns && d.alarm_ns - shift <= 2 * HOUR,
        "{d:?}"
    );
    assert!((d.mean_before - 100.0).abs() < 0.1, "{d:?}");
    assert!((d.mean_after - 103.0).abs() < 0.1, "{d:?}");
    // A flat noisy series: nothing, whatever the window.
    let (flat, start, end) = drift_store(None).await;
    for window in [10 * MIN, HOUR, 3 * HOUR] {
        let r = flat
            .query(&QuerySpec {
                bucket_ns: 6 * HOUR,
                drift: Some(DriftSpec {
                    window_ns: window,
                    threshold: None,
                }),
                ..QuerySpec::range("drift/x", start, end)
            })
            .unwrap();
        assert!(r.drift.is_empty(), "{window}: {:?}", r.drift);
    }
    // Too few windows for a baseline: said, not guessed.
    let r = s
        .query(&QuerySpec {
            drift: Some(DriftSpec {
                window_ns: 12 * HOUR,
                threshold: None,
            }),
            ..q.clone()
        })
        .unwrap();
    assert!(r.drift.is_empty());
    assert!(
        r.notes.iter().any(|n| n.contains("no drift can be found")),
        "{:?}",
        r.notes
    );
}

#[tokio::test]
async fn bad_shapes_are_refused_with_a_reason() {
    let (s, _) = dst_store().await;
    let (a, b) = (utc("2026-03-27T00:00:00Z"), utc("2026-03-28T00:00:00Z"));
    let base = QuerySpec::range("cal/x", a, b);
    let too_many: Vec<i64> = (0..=MAX_QUERY_BUCKETS + 1).map(|i| a + i).collect();
    for (q, msg) in [
        (
            with_edges("cal/x", a, b, vec![a + HOUR, a + HOUR]),
            "increase strictly",
        ),
        (
            with_edges("cal/x", a, b, vec![a + 2 * HOUR, a + HOUR]),
            "increase strictly",
        ),
        (with_edges("cal/x", a, b, vec![a - 1]), "outside the range"),
        (with_edges("cal/x", a, b, vec![b + 1]), "outside the range"),
        (with_edges("cal/x", a, b, too_many), "the limit is"),
        (
            QuerySpec {
                bucket_ns: HOUR,
                ..with_edges("cal/x", a, b, vec![a + HOUR])
            },
            "exclude a bucket width",
        ),
        (
            QuerySpec {
                target_points: 10,
                ..with_edges("cal/x", a, b, vec![a + HOUR])
            },
            "exclude a bucket width",
        ),
        (base.clone(), "bucket edges"),
        (
            QuerySpec {
                anomaly_mad: Some(-1.0),
                ..with_edges("cal/x", a, b, vec![])
            },
            "anomaly_mad must be a positive",
        ),
        (
            QuerySpec {
                anomaly_z: Some(f64::NAN),
                ..with_edges("cal/x", a, b, vec![])
            },
            "anomaly_z must be a positive",
        ),
        (
            QuerySpec {
                drift: Some(DriftSpec {
                    window_ns: 0,
                    threshold: None,
                }),
                ..with_edges("cal/x", a, b, vec![])
            },
            "must be > 0",
        ),
        (
            QuerySpec {
                drift: Some(DriftSpec {
                    window_ns: 1,
                    threshold: None,
                }),
                ..with_edges("cal/x", a, b, vec![])
            },
            "drift windows requested",
        ),
        (
            QuerySpec {
                drift: Some(DriftSpec {
                    window_ns: HOUR,
                    threshold: Some(0.0),
                }),
                ..with_edges("cal/x", a, b, vec![])
            },
            "threshold must be positive",
        ),
    ] {
        match s.query(&q) {
            Err(QueryError::Invalid(m)) => assert!(m.contains(msg), "{msg}: {m}"),
            other => panic!("{msg}: {other:?}"),
        }
    }
    // No edges but the range's: one bucket over the whole range.
    let one = s.query(&with_edges("cal/x", a, b, vec![])).unwrap();
    assert_eq!(one.buckets.len(), 1);
    assert_eq!((one.buckets[0].start_ns, one.buckets[0].end_ns), (a, b));
    // A forced tier applies bucket by bucket as well.
    let raw = s
        .query(&QuerySpec {
            tier: TierChoice::Raw,
            ..with_edges("cal/x", a, b, vec![a + 7 * HOUR])
        })
        .unwrap();
    assert!(raw.buckets.iter().all(|b| b.tier == Tier::Raw));
    assert_eq!(raw.buckets.len(), 2);
}
