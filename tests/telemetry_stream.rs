//! Telemetry subscriptions at the service layer, on a real one-node cluster started in this
//! process (RocksDB, Raft, the state machine's feed): history then live with every point
//! once, resuming from cursors, late points, and a subscriber that never reads.
//!
//! There is no transport for this operation yet (GraphQL's `telemetryStream` will call
//! `Service::telemetry_subscribe`), so the tests call the service directly.

mod service_node;

use std::time::Duration;

use aetherops::node::Consistency;
use aetherops::service::telemetry_stream::{
    PointBatch, TelemetryStream, TelemetrySubscribe, STREAM_BUFFER_BATCHES,
};
use aetherops::service::ServiceError;
use aetherops::telemetry::stream::{Cursor, Position, FEED_ENTRIES};
use service_node::{caller, ingest, stamps, start, t0, value, Cluster, MS};

/// A guard against a hang, not a timed assertion: every wait below is on a condition.
const HANG: Duration = Duration::from_secs(120);

fn subscribe_req(series: &[&str], from: Option<i64>, batch: usize) -> TelemetrySubscribe {
    TelemetrySubscribe {
        series: series.iter().map(|s| s.to_string()).collect(),
        from_ns: from,
        resume: None,
        batch_size: batch,
        max_latency: Duration::from_millis(20),
        consistency: Consistency::Linearizable,
    }
}

/// A delivered point: (series, ts, value, live).
type Got = (String, i64, f64, bool);

fn points_of(b: &PointBatch) -> impl Iterator<Item = Got> + '_ {
    b.points.iter().map(move |p| {
        (
            b.series[p.series as usize].clone(),
            p.ts_ns,
            p.value,
            b.live,
        )
    })
}

/// Reads batches until one holds the point `(series, ts)` of write `stop`, which ends the
/// collection; returns the points and each batch's cursor (with how many points came
/// before it, the batch's included).
async fn until(rx: &mut TelemetryStream, stop: (&str, i64)) -> (Vec<Got>, Vec<(usize, Cursor)>) {
    let mut got = Vec::new();
    let mut cursors = Vec::new();
    loop {
        let b = tokio::time::timeout(HANG, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no batch after {} points ({:?}), {} queued",
                    got.len(),
                    got.last(),
                    rx.len()
                )
            })
            .expect("the stream is open")
            .expect("a batch, not an error");
        assert!(!b.points.is_empty(), "no empty batch is sent");
        got.extend(points_of(&b));
        cursors.push((got.len(), b.cursor));
        if got.iter().any(|g| g.0 == stop.0 && g.1 == stop.1) {
            return (got, cursors);
        }
    }
}

/// Points as expected: history of each series in ts order, then the writes in order.
fn expected(history: &[(&str, Vec<i64>)], live: &[(&str, Vec<i64>, u32)]) -> Vec<Got> {
    let mut out = Vec::new();
    for (s, ts) in history {
        out.extend(ts.iter().map(|t| (s.to_string(), *t, value(*t, 0), false)));
    }
    for (s, ts, w) in live {
        out.extend(ts.iter().map(|t| (s.to_string(), *t, value(*t, *w), true)));
    }
    out
}

/// Drops the `live` flag (a resumed stream reads missed writes from the store: same points).
fn plain(g: &[Got]) -> Vec<(String, i64, f64)> {
    g.iter().map(|(s, t, v, _)| (s.clone(), *t, *v)).collect()
}

struct Scenario {
    c: Cluster,
    t0: i64,
    history: Vec<(&'static str, Vec<i64>)>,
    live: Vec<(&'static str, Vec<i64>, u32)>,
}

/// `n` points of history on `t/a` (in 10 k-point ingests), 1,000 on `t/b`.
async fn with_history(n: i64) -> Scenario {
    let c = start(16).await;
    let t0 = t0();
    let a = stamps(t0, n);
    for chunk in a.chunks(10_000) {
        ingest(&c.svc, "t/a", chunk, 0).await;
    }
    let b = stamps(t0, 1_000);
    ingest(&c.svc, "t/b", &b, 0).await;
    Scenario {
        c,
        t0,
        history: vec![("t/a", a), ("t/b", b)],
        live: Vec::new(),
    }
}

impl Scenario {
    /// Live writes: 30 ingests of 250 points alternating over the series, after the history.
    async fn write_live(&mut self, n: i64) {
        for w in 1..=30u32 {
            let s = if w % 2 == 0 { "t/b" } else { "t/a" };
            let ts = stamps(self.t0 + (n + i64::from(w) * 1_000) * MS, 250);
            ingest(&self.c.svc, s, &ts, w).await;
            self.live.push((s, ts, w));
        }
    }

    /// The last point written: where a collection stops.
    fn last(&self) -> (&str, i64) {
        let (s, ts, _) = self.live.last().unwrap();
        (s, *ts.last().unwrap())
    }
}

/// 1) History of 200 k points, then live ingest while streaming: every point exactly once,
/// history by series in ts order, live in commit order; nothing after the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_live_delivers_every_point_once_in_order() {
    let n = 200_000;
    let mut s = with_history(n).await;
    let mut rx =
        s.c.svc
            .telemetry_subscribe(&caller(), subscribe_req(&["t/a", "t/b"], Some(s.t0), 4_096))
            .await
            .unwrap();
    // Live writes start while the history is still streaming.
    let first = rx.recv().await.unwrap().unwrap();
    assert!(!first.live && first.points.len() == 4_096);
    let mut got: Vec<Got> = points_of(&first).collect();
    s.write_live(n).await;
    let (rest, _) = until(&mut rx, s.last()).await;
    got.extend(rest);
    let want = expected(&s.history, &s.live);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "points differ from history + writes in order");
    // Nothing is pending: the next point is the next write (a rewrite of a stored one).
    let probe = s.t0 + 3 * MS;
    ingest(&s.c.svc, "t/b", &[probe], 99).await;
    let (after, _) = until(&mut rx, ("t/b", probe)).await;
    assert_eq!(
        plain(&after),
        vec![("t/b".to_owned(), probe, value(probe, 99))]
    );
}

/// 2) Resuming from a cursor taken mid-history and from one taken mid-live (inside a
/// write) gives exactly the rest of the stream: nothing missed, nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_cursor_misses_and_repeats_nothing() {
    let n = 100_000;
    let mut s = with_history(n).await;
    let req = subscribe_req(&["t/a", "t/b"], Some(s.t0), 3_000);
    let mut rx =
        s.c.svc
            .telemetry_subscribe(&caller(), req.clone())
            .await
            .unwrap();
    let first = rx.recv().await.unwrap().unwrap();
    let mut full: Vec<Got> = points_of(&first).collect();
    let mut cursors = vec![(full.len(), first.cursor)];
    s.write_live(n).await;
    let (rest, more) = until(&mut rx, s.last()).await;
    cursors.extend(more.into_iter().map(|(k, c)| (k + full.len(), c)));
    full.extend(rest);
    assert_eq!(full, expected(&s.history, &s.live));
    drop(rx);

    let mid_history = cursors
        .iter()
        .find(|(k, c)| *k > 20_000 && matches!(c.position, Position::History { .. }))
        .copied()
        .unwrap();
    // 3,000-point batches over 250-point writes: a live cursor inside a write.
    let mid_live = cursors
        .iter()
        .find(|(_, c)| {
            matches!(
                c.position,
                Position::Live {
                    after_ts: Some(_),
                    ..
                }
            )
        })
        .copied()
        .expect("a live batch ends inside a write");
    for (k, cursor) in [mid_history, mid_live] {
        let mut resumed = req.clone();
        // The string form, as a client keeps it.
        resumed.resume = Some(Cursor::decode(&cursor.encode()).unwrap());
        let mut rx =
            s.c.svc
                .telemetry_subscribe(&caller(), resumed)
                .await
                .unwrap();
        let (tail, _) = until(&mut rx, s.last()).await;
        assert_eq!(
            plain(&tail),
            plain(&full[k..]),
            "resumed at {:?}",
            cursor.position
        );
    }
}

/// 3) A late point (older than the history's newest) and a rewrite of a stored timestamp,
/// committed while streaming, are each delivered once, live, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_points_committed_during_the_stream_come_once() {
    let c = start(16).await;
    let t0 = t0();
    let ts = stamps(t0, 20_000);
    ingest(&c.svc, "t/a", &ts, 0).await;
    let mut rx = c
        .svc
        .telemetry_subscribe(&caller(), subscribe_req(&["t/a"], Some(t0), 1_000))
        .await
        .unwrap();
    let late = t0 + 5 * MS + MS / 2;
    let rewrite = t0 + 7 * MS;
    ingest(&c.svc, "t/a", &[late], 1).await;
    ingest(&c.svc, "t/a", &[rewrite], 2).await;
    let end = t0 + 30_000 * MS;
    ingest(&c.svc, "t/a", &[end], 3).await;
    let (got, _) = until(&mut rx, ("t/a", end)).await;
    let want = expected(
        &[("t/a", ts)],
        &[
            ("t/a", vec![late], 1),
            ("t/a", vec![rewrite], 2),
            ("t/a", vec![end], 3),
        ],
    );
    assert!(
        got == want,
        "late point and rewrite once each, live, in order"
    );
}

/// 4) A subscriber that never reads holds at most its buffer; once the feed overflows it is
/// told (`Overloaded`) and ended, and its subscription slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_ended_with_the_lag_error() {
    let c = start(1).await;
    let t0 = t0();
    let mut rx = c
        .svc
        .telemetry_subscribe(&caller(), subscribe_req(&["t/a"], None, 1))
        .await
        .unwrap();
    let second = c
        .svc
        .telemetry_subscribe(&caller(), subscribe_req(&["t/a"], None, 1))
        .await;
    assert!(
        matches!(second, Err(ServiceError::Overloaded(_))),
        "{second:?}"
    );
    // Enough for the buffer, then more telemetry entries than the feed keeps (of other
    // series: every entry counts, and one-point entries in one series would make each
    // ingest recompute a growing minute).
    for i in 0..(2 * STREAM_BUFFER_BATCHES as i64) {
        ingest(&c.svc, "t/a", &[t0 + i * MS], 0).await;
    }
    for i in 0..(FEED_ENTRIES + 64) {
        ingest(&c.svc, &format!("u/{i}"), &[t0], 0).await;
    }
    let mut batches = 0;
    let end = loop {
        match tokio::time::timeout(HANG, rx.recv())
            .await
            .expect("no hang")
        {
            Some(Ok(_)) => batches += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert!(
        matches!(end, ServiceError::Overloaded(ref m) if m.contains("too slow")),
        "{end}"
    );
    assert!(
        batches <= STREAM_BUFFER_BATCHES,
        "{batches} batches were held"
    );
    assert!(rx.recv().await.is_none(), "the error is the last item");
    // The slot comes back once the stream's task is gone.
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        match c
            .svc
            .telemetry_subscribe(&caller(), subscribe_req(&["t/a"], None, 1))
            .await
        {
            Ok(_) => break,
            Err(ServiceError::Overloaded(_)) if tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Bad requests are refused with a clear error before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused() {
    let c = start(4).await;
    let ok = subscribe_req(&["t/a"], Some(t0()), 10);
    let other = Cursor {
        subscription: 1,
        position: Position::Live {
            index: 0,
            seq: 0,
            after_ts: None,
        },
    };
    let ahead = Cursor {
        subscription: aetherops::telemetry::stream::fingerprint(&ok.series, ok.from_ns),
        position: Position::Live {
            index: u64::MAX / 2,
            seq: 0,
            after_ts: None,
        },
    };
    let cases: Vec<(TelemetrySubscribe, &str)> = vec![
        (subscribe_req(&[], None, 10), "at least one series"),
        (subscribe_req(&["t/a", "t/a"], None, 10), "named twice"),
        (subscribe_req(&["bad name"], None, 10), ""),
        (subscribe_req(&["t/a"], None, 0), "batch size"),
        (subscribe_req(&["t/a"], None, 1 << 20), "batch size"),
        (
            TelemetrySubscribe {
                max_latency: Duration::ZERO,
                ..ok.clone()
            },
            "max latency",
        ),
        (
            TelemetrySubscribe {
                resume: Some(other),
                ..ok.clone()
            },
            "another subscription",
        ),
        (
            TelemetrySubscribe {
                resume: Some(ahead),
                ..ok.clone()
            },
            "applied up to",
        ),
    ];
    for (req, says) in cases {
        let what = format!("{:?}", (&req.series, req.batch_size, req.resume));
        match c.svc.telemetry_subscribe(&caller(), req).await {
            Err(ServiceError::Invalid(m)) | Err(ServiceError::Unavailable(m)) => {
                assert!(m.contains(says), "{what}: {m}")
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    assert!(Cursor::decode("not a cursor").is_err());
}

/// The scale: 1 M points of history, then live writes; every point once, in order
/// (about 4 s in a debug build). Prints the rate (a figure, not an assertion; use
/// `--release` for a meaningful one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_points_of_history_then_live() {
    let n = 1_000_000;
    let mut s = with_history(n).await;
    let started = std::time::Instant::now();
    let mut rx =
        s.c.svc
            .telemetry_subscribe(
                &caller(),
                subscribe_req(&["t/a", "t/b"], Some(s.t0), 16_384),
            )
            .await
            .unwrap();
    let first = rx.recv().await.unwrap().unwrap();
    let mut got: Vec<Got> = points_of(&first).collect();
    s.write_live(n).await;
    let (rest, _) = until(&mut rx, s.last()).await;
    got.extend(rest);
    let secs = started.elapsed().as_secs_f64();
    assert!(got == expected(&s.history, &s.live));
    println!(
        "streamed {} points in {secs:.2} s: {:.0} points/s",
        got.len(),
        got.len() as f64 / secs
    );
}
