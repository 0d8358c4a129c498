//! Telemetry end to end on real nodes: ingest → compressed segments → rollup tiers →
//! queries, exact against a recomputation from the deduplicated raw points; retention and
//! compaction; anomalies and M4; bad input; replication.

mod common;
#[path = "telemetry_common/mod.rs"]
mod telemetry_common;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::telemetry_client::TelemetryClient;
use aetherops::telemetry::sketch::nearest_rank;
use common::cluster::TestCluster;
use common::*;
use tonic::Code;

const MIN: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MIN;

async fn tm(node: &TestNode) -> TelemetryClient<TestChannel> {
    TelemetryClient::new(node.channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn batch(series: &str, pts: &[(i64, f64)]) -> pb::IngestBatch {
    pb::IngestBatch {
        series: vec![pb::SeriesPoints {
            series: series.into(),
            timestamps_ns: pts.iter().map(|p| p.0).collect(),
            values: pts.iter().map(|p| p.1).collect(),
        }],
    }
}

async fn ingest(
    c: &mut TelemetryClient<TestChannel>,
    batches: Vec<pb::IngestBatch>,
) -> pb::IngestSummary {
    c.ingest(tokio_stream::iter(batches))
        .await
        .expect("ingest")
        .into_inner()
}

struct Answer {
    buckets: Vec<pb::TelemetryBucket>,
    summary: pb::TelemetrySummary,
    anomalies: Vec<pb::TelemetryAnomaly>,
    m4: Vec<pb::M4Column>,
    drift: Vec<pb::TelemetryDrift>,
}

fn q(series: &str, start: i64, end: i64, bucket: i64, tier: &str) -> pb::TelemetryQuery {
    pb::TelemetryQuery {
        series: series.into(),
        start_ns: start,
        end_ns: end,
        bucket_ns: bucket,
        target_points: 0,
        tier: tier.into(),
        anomaly_z: 0.0,
        m4_width: 0,
        median: false,
        percentiles: vec![0.5, 0.99],
        consistency: 0,
        ..Default::default()
    }
}

async fn query(
    c: &mut TelemetryClient<TestChannel>,
    req: pb::TelemetryQuery,
) -> Result<Answer, tonic::Status> {
    let mut s = c.query(req).await?.into_inner();
    let mut a = Answer {
        buckets: vec![],
        summary: Default::default(),
        anomalies: vec![],
        m4: vec![],
        drift: vec![],
    };
    while let Some(chunk) = s.message().await? {
        a.buckets.extend(chunk.buckets);
        a.anomalies.extend(chunk.anomalies);
        a.m4.extend(chunk.m4);
        a.drift.extend(chunk.drift);
        if let Some(sum) = chunk.summary {
            a.summary = sum;
        }
    }
    Ok(a)
}

/// The reference: last value per timestamp, grouped into `width` buckets, statistics
/// computed plainly in f64 with two passes.
fn reference(
    points: &BTreeMap<i64, f64>,
    start: i64,
    end: i64,
    width: i64,
) -> Vec<(i64, Vec<f64>)> {
    let mut out: Vec<(i64, Vec<f64>)> = Vec::new();
    for (&t, &v) in points.range(start..end) {
        let b = t - t.rem_euclid(width);
        match out.last_mut() {
            Some((s, vs)) if *s == b => vs.push(v),
            _ => out.push((b, vec![v])),
        }
    }
    out
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

fn check_bucket(got: &pb::TelemetryBucket, start: i64, vals: &[f64]) {
    // Shift by the first value: the differences are exact (Sterbenz), so a plain two-pass
    // over them is accurate to a few ulps even for large offsets with tiny spread.
    let n = vals.len() as f64;
    let shift = vals[0];
    let d: Vec<f64> = vals.iter().map(|v| v - shift).collect();
    let dmean = d.iter().sum::<f64>() / n;
    let mean = shift + dmean;
    let var = d.iter().map(|x| (x - dmean) * (x - dmean)).sum::<f64>() / n;
    assert_eq!(got.start_ns, start);
    assert_eq!(got.count, vals.len() as u64, "count at {start}");
    assert!(
        close(got.mean, mean, 1e-12),
        "mean at {start}: {} vs {mean}",
        got.mean
    );
    assert!(
        close(got.variance, var, 1e-12) || (var < 1e-18 && got.variance < 1e-18),
        "variance at {start}: {} vs {var}",
        got.variance
    );
    assert_eq!(got.min, vals.iter().cloned().fold(f64::INFINITY, f64::min));
    assert_eq!(
        got.max,
        vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
    );
    let mut sorted = vals.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(nearest_rank(0.99, sorted.len() as u64) - 1) as usize];
    assert!(
        close(got.percentiles[1], p99, 0.01),
        "p99 at {start}: {} vs {p99}",
        got.percentiles[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicate_points_roll_up_exactly() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = tm(&node).await;
    // Two hours of 10 Hz data ending a few minutes ago (inside raw retention).
    let end = (now_ns() - 5 * MIN) / MIN * MIN;
    let start = end - 2 * HOUR;
    let mut truth = BTreeMap::new();
    let mut all = Vec::new();
    for i in 0..(2 * 3600 * 10) {
        let t = start + i * 100_000_000;
        let v = 20.0 + 5.0 * ((i as f64) * 0.001).sin() + ((i * 7919) % 13) as f64 * 0.01;
        all.push((t, v));
    }
    // Sent out of order: batches shuffled, and some points sent twice with new values
    // (the latest write of a timestamp wins).
    let mut batches: Vec<Vec<(i64, f64)>> = all.chunks(5000).map(|c| c.to_vec()).collect();
    batches.reverse();
    batches.swap(1, 5);
    let mut redo: Vec<(i64, f64)> = all
        .iter()
        .step_by(97)
        .map(|(t, v)| (*t, v + 100.0))
        .collect();
    redo.reverse(); // out of order within a batch too
    for b in &batches {
        for (t, v) in b {
            truth.insert(*t, *v);
        }
    }
    for (t, v) in &redo {
        truth.insert(*t, *v);
    }
    let mut sent: Vec<pb::IngestBatch> = batches
        .iter()
        .map(|b| batch("sat-7/battery_v", b))
        .collect();
    sent.push(batch("sat-7/battery_v", &redo));
    let s = ingest(&mut c, sent).await;
    assert_eq!(s.batches, 16);
    assert_eq!(s.points, all.len() as u64 + redo.len() as u64);

    // Every tier answers exactly what the deduplicated raw points say.
    for (tier, width) in [
        ("raw", MIN),
        ("minute", MIN),
        ("auto", MIN),
        ("hour", HOUR),
        ("raw", 10 * MIN),
        ("auto", 7_000_000_000),
    ] {
        let a = query(&mut c, q("sat-7/battery_v", start, end, width, tier))
            .await
            .unwrap();
        let expect = reference(&truth, start, end, width);
        assert_eq!(a.buckets.len(), expect.len(), "{tier}/{width}");
        for (got, (s, vals)) in a.buckets.iter().zip(&expect) {
            check_bucket(got, *s, vals);
        }
        assert_eq!(a.summary.count, truth.len() as u64);
        let served = if tier == "auto" {
            if width == MIN {
                "minute"
            } else {
                "raw"
            }
        } else {
            tier
        };
        assert!(
            a.buckets.iter().all(|b| b.tier == served),
            "{tier}/{width} served by {:?}",
            a.buckets[0].tier
        );
    }
    // A target number of points picks the coarsest tier that serves it, never more
    // buckets than asked; the range's unaligned edges come from finer tiers, exactly.
    let mut req = q("sat-7/battery_v", start, end, 0, "auto");
    req.target_points = 2;
    let a = query(&mut c, req).await.unwrap();
    assert_eq!(a.summary.bucket_ns % HOUR, 0);
    assert!(a.buckets.len() <= 2, "{} buckets", a.buckets.len());
    assert!(a.buckets.iter().any(|b| b.tier == "hour"));
    assert_eq!(a.summary.count, truth.len() as u64);
    assert!(a.summary.notes.is_empty(), "{:?}", a.summary.notes);
    let all_vals: Vec<f64> = truth.values().cloned().collect();
    let mean = all_vals.iter().sum::<f64>() / all_vals.len() as f64;
    assert!(close(a.summary.mean, mean, 1e-12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_raw_data_is_reclaimed_at_compaction_and_rollups_still_answer() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = tm(&node).await;
    // Three days ago: older than the default raw retention (48 h), within minute (30 d).
    // Imported under a longer policy first (set before the series exists: it holds fully).
    let policy = |raw_ms: u64, minute_ms: u64| pb::RetentionPolicyRequest {
        prefix: "old/".into(),
        raw_ms,
        minute_ms,
        hour_ms: 0,
        lateness_ms: 0,
    };
    c.set_retention(policy(96 * 3_600_000, 30 * 24 * 3_600_000))
        .await
        .unwrap();
    let start = (now_ns() - 72 * HOUR) / HOUR * HOUR;
    let end = start + 3 * HOUR;
    let mut truth = BTreeMap::new();
    let mut batches = Vec::new();
    let mut pts = Vec::new();
    for i in 0..(3 * 3600 * 20) {
        let t = start + i * 50_000_000; // 20 Hz
                                        // Large offset, tiny spread, noisy (so it does not compress to nothing).
        let noise = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 1000;
        let v = 1.0e9 + noise as f64 * 0.001;
        truth.insert(t, v);
        pts.push((t, v));
        if pts.len() == 10_000 {
            batches.push(batch("old/pressure", &pts));
            pts.clear();
        }
    }
    batches.push(batch("old/pressure", &pts));
    ingest(&mut c, batches).await;
    // The default retention again: the raw points have expired.
    c.set_retention(policy(48 * 3_600_000, 30 * 24 * 3_600_000))
        .await
        .unwrap();

    let r = c.compact(pb::CompactRequest {}).await.unwrap().into_inner();
    assert!(
        r.raw_bytes_before > 50_000,
        "raw segments reached disk first: {r:?}"
    );
    assert_eq!(
        r.raw_bytes_after, 0,
        "expired raw data reclaimed at compaction: {r:?}"
    );
    assert!(r.rollup_bytes_after > 0);

    // The range still answers, from the minute tier, exactly.
    let a = query(&mut c, q("old/pressure", start, end, MIN, "auto"))
        .await
        .unwrap();
    assert!(a.buckets.iter().all(|b| b.tier == "minute"));
    let expect = reference(&truth, start, end, MIN);
    assert_eq!(a.buckets.len(), expect.len());
    for (got, (s, vals)) in a.buckets.iter().zip(&expect) {
        check_bucket(got, *s, vals);
    }
    // Raw, forced, has nothing left for that range — on every replica alike.
    let raw = query(&mut c, q("old/pressure", start, end, MIN, "raw"))
        .await
        .unwrap();
    assert_eq!(raw.summary.count, 0);

    // A retention policy is replicated state: a shorter one expires more.
    c.set_retention(policy(3_600_000, 2 * 3_600_000))
        .await
        .unwrap();
    let a = query(&mut c, q("old/pressure", start, end, MIN, "auto"))
        .await
        .unwrap();
    assert!(
        a.buckets.iter().all(|b| b.tier == "hour"),
        "minute tier expired under the new policy"
    );
    assert_eq!(a.summary.count, truth.len() as u64);
    let e = c
        .set_retention(pb::RetentionPolicyRequest {
            prefix: "x/".into(),
            raw_ms: 3_600_000,
            minute_ms: 3_600_000,
            hour_ms: 0,
            lateness_ms: 0,
        })
        .await
        .expect_err("minute shorter than raw + 1h");
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_m4_and_bad_input() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = tm(&node).await;
    let start = (now_ns() - 10 * MIN) / MIN * MIN;
    let mut pts: Vec<(i64, f64)> = (0..6000)
        .map(|i| (start + i * 50_000_000, 10.0 + ((i * 31) % 17) as f64 * 0.01))
        .collect();
    let spike_t = pts[4000].0;
    pts[4000].1 = 55.0;
    ingest(&mut c, vec![batch("sat-1/temp", &pts)]).await;
    let end = start + 6000 * 50_000_000;
    let mut req = q("sat-1/temp", start, end, 10_000_000_000, "raw");
    req.anomaly_z = 6.0;
    req.m4_width = 50;
    req.median = true;
    let a = query(&mut c, req).await.unwrap();
    assert_eq!(a.anomalies.len(), 1, "{:?}", a.anomalies);
    assert_eq!(
        (a.anomalies[0].ts_ns, a.anomalies[0].value),
        (spike_t, 55.0)
    );
    assert!(a.m4.len() <= 50 && !a.m4.is_empty());
    let col =
        a.m4.iter()
            .find(|c| c.max == 55.0)
            .expect("spike kept by M4");
    assert_eq!(col.max_ts, spike_t);
    assert!(a.buckets.iter().all(|b| b.median.is_some()));

    let bad = |series: &str, ts: Vec<i64>, vals: Vec<f64>| pb::IngestBatch {
        series: vec![pb::SeriesPoints {
            series: series.into(),
            timestamps_ns: ts,
            values: vals,
        }],
    };
    for (b, msg) in [
        (bad("sat-1/temp", vec![start], vec![f64::NAN]), "not finite"),
        (
            bad("sat-1/temp", vec![start, start + 1], vec![1.0]),
            "2 timestamps but 1 values",
        ),
        (bad("no-channel", vec![start], vec![1.0]), "source/channel"),
        (
            bad("bad name/x", vec![start], vec![1.0]),
            "character outside",
        ),
        (bad("sat-1/temp", vec![i64::MAX], vec![1.0]), "out of range"),
    ] {
        let e = c.ingest(tokio_stream::iter(vec![b])).await.expect_err(msg);
        assert_eq!(e.code(), Code::InvalidArgument, "{msg}: {e:?}");
        assert!(e.message().contains(msg), "{msg}: {}", e.message());
    }
    for (req, msg) in [
        (q("sat-1/temp", end, start, MIN, "auto"), "empty range"),
        (q("sat-1/temp", start, end, 1, "auto"), "buckets requested"),
        (q("sat-1/temp", start, end, MIN, "weekly"), "tier"),
        (
            q("sat-1/temp", start, end, 0, "auto"),
            "bucket width or a target",
        ),
    ] {
        let e = query(&mut c, req).await.err().expect(msg);
        assert_eq!(e.code(), Code::InvalidArgument, "{msg}: {e:?}");
        assert!(e.message().contains(msg), "{msg}: {}", e.message());
    }
    // Nothing of the refused batches was written.
    let a = query(&mut c, q("sat-1/temp", start, end, MIN, "raw"))
        .await
        .unwrap();
    assert_eq!(a.summary.count, 6000);
}

/// Calendar edges, MAD anomalies and drift through gRPC on a real node: the fields old
/// clients never send, answered by the same query path (`telemetry::query`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_edges_mad_anomalies_and_drift_over_grpc() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = tm(&node).await;
    const SEC: i64 = 1_000_000_000;
    let start = (now_ns() - 4 * HOUR) / MIN * MIN;
    let end = start + 3 * HOUR;
    let noise = |i: i64| ((i * 7919) % 101) as f64 * 0.01 - 0.5;
    // A level shift (20 -> 26) at a known time, and a steady series with a spike and a dip.
    let shift = start + 100 * MIN + 30 * SEC;
    let level: BTreeMap<i64, f64> = (0..3 * 3600)
        .map(|i| {
            let t = start + i * SEC;
            (t, if t < shift { 20.0 } else { 26.0 } + noise(i))
        })
        .collect();
    let mut steady: BTreeMap<i64, f64> = (0..3 * 3600)
        .map(|i| (start + i * SEC, 5.0 + noise(i)))
        .collect();
    let (spike, dip) = (start + 1000 * SEC, start + 9000 * SEC);
    steady.insert(spike, 40.0);
    steady.insert(dip, -30.0);
    for (name, pts) in [("orbit/level", &level), ("orbit/steady", &steady)] {
        let pts: Vec<(i64, f64)> = pts.iter().map(|(t, v)| (*t, *v)).collect();
        ingest(&mut c, pts.chunks(4000).map(|p| batch(name, p)).collect()).await;
    }

    // Edges anywhere inside the range; start and end are edges too.
    let edges = vec![
        start + 37 * MIN,
        start + 73 * MIN + 5 * SEC,
        start + 2 * HOUR,
    ];
    let mut req = q("orbit/level", start, end, 0, "auto");
    req.edges = edges.clone();
    req.drift = Some(pb::DriftRequest {
        window_ns: 5 * MIN,
        threshold: 0.0,
    });
    let a = query(&mut c, req).await.unwrap();
    let bounds: Vec<i64> = [start].into_iter().chain(edges).chain([end]).collect();
    let got: Vec<(i64, i64, u64)> = a
        .buckets
        .iter()
        .map(|b| (b.start_ns, b.end_ns, b.count))
        .collect();
    let want: Vec<(i64, i64, u64)> = bounds
        .windows(2)
        .map(|w| (w[0], w[1], level.range(w[0]..w[1]).count() as u64))
        .collect();
    assert_eq!(got, want);
    assert_eq!(a.summary.bucket_ns, 0);
    for (b, w) in a.buckets.iter().zip(bounds.windows(2)) {
        let vals: Vec<f64> = level.range(w[0]..w[1]).map(|(_, v)| *v).collect();
        check_bucket(b, w[0], &vals);
    }
    assert_eq!(a.drift.len(), 1, "{:?}", a.drift);
    let d = &a.drift[0];
    assert_eq!(d.direction, "up");
    assert!((d.start_ns - shift).abs() <= 10 * MIN, "{d:?}");
    // The means around the change weigh every point of the range alike.
    let mean = |lo: i64, hi: i64| {
        let v: Vec<f64> = level.range(lo..hi).map(|(_, v)| *v).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(close(d.mean_before, mean(start, d.start_ns), 1e-9), "{d:?}");
    assert!(close(d.mean_after, mean(d.start_ns, end), 1e-9), "{d:?}");
    assert!(
        (d.mean_before - 20.0).abs() < 0.1 && d.mean_after > 25.0,
        "{d:?}"
    );

    let mut req = q("orbit/steady", start, end, 10 * MIN, "auto");
    req.anomaly_mad = Some(0.0); // the default threshold, 3.5
    let a = query(&mut c, req).await.unwrap();
    let got: Vec<(i64, f64, &str, &str)> = a
        .anomalies
        .iter()
        .map(|x| (x.ts_ns, x.value, x.kind.as_str(), x.method.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(spike, 40.0, "high", "mad"), (dip, -30.0, "low", "mad")]
    );
    assert!(a
        .anomalies
        .iter()
        .all(|x| x.z == x.score && x.score.abs() > 3.5));
    // Bad shapes are the query's to refuse, with its reasons.
    let mut req = q("orbit/steady", start, end, MIN, "auto");
    req.edges = vec![start + HOUR];
    let e = query(&mut c, req).await.err().expect("edges and a width");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("exclude a bucket width"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telemetry_is_replicated_and_answers_alike_on_every_node() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let follower = (leader + 1) % 3;
    let mut fc = tm(&c.nodes[follower]).await;
    let start = (now_ns() - 30 * MIN) / MIN * MIN;
    let pts: Vec<(i64, f64)> = (0..20_000)
        .map(|i| (start + i * 10_000_000, (i as f64 * 0.01).cos()))
        .collect();
    let batches = pts.chunks(4000).map(|p| batch("sat-3/gyro_x", p)).collect();
    let s = ingest(&mut fc, batches).await;
    assert_eq!(s.points, 20_000);
    c.wait_converged(&c.all()).await;
    let end = start + 20_000 * 10_000_000;
    let mut answers = Vec::new();
    for n in &c.nodes {
        let mut cl = tm(n).await;
        let mut req = q("sat-3/gyro_x", start, end, MIN, "auto");
        req.consistency = pb::Consistency::Local as i32;
        let a = query(&mut cl, req).await.unwrap();
        answers.push(format!("{:?}", a.buckets));
        assert_eq!(a.summary.count, 20_000);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "replicas answer alike"
    );
    let out = c.nodes[0].ctl(&["cluster", "verify", "--deep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_ingest_and_query_from_the_command_line() {
    let Some(nab) = telemetry_common::nab_dir()
        .map(|d| d.join("machine_temperature_system_failure.csv"))
        .filter(|p| p.exists())
    else {
        eprintln!(
            "SKIPPED csv_ingest_and_query_from_the_command_line: NAB data not found \
             (../shared/data/nab next to the project, /work/shared/data/nab, or $AETHER_NAB_DIR)"
        );
        return;
    };
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The README's flow (issue 9, point 11c): keep the imported history raw, by a policy
    // set before the import.
    ok(&node.ctl(&["telemetry", "retention", "plant/", "--raw", "forever"]));
    let ingest_json = || {
        node.ctl(&[
            "--output",
            "json",
            "telemetry",
            "ingest",
            nab.to_str().unwrap(),
            "--series",
            "plant/machine_temp",
        ])
    };
    let v: serde_json::Value = serde_json::from_str(&ok(&ingest_json())).unwrap();
    // The file repeats some timestamps; a timestamp is a point's identity.
    let text = std::fs::read_to_string(&nab).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let unique: std::collections::BTreeSet<&str> =
        rows.iter().map(|l| l.split(',').next().unwrap()).collect();
    assert!(v["points"].as_u64().unwrap() >= unique.len() as u64);
    assert_eq!(v["lines_skipped"], 1, "the header");
    // Issue 9, point 11a: the same file twice changes no count.
    ok(&ingest_json());
    let query = |extra: &[&str]| {
        let mut args = vec![
            "telemetry",
            "query",
            "plant/machine_temp",
            "--from",
            "2013-12-02T00:00:00Z",
            "--to",
            "2014-02-20T00:00:00Z",
        ];
        args.extend_from_slice(extra);
        node.ctl(&args)
    };
    let out = ok(&query(&["--output", "json", "--points", "80"]));
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["summary"]["count"],
        unique.len() as u64,
        "every point of the file, deduplicated, once"
    );
    assert!(
        out.lines().count() <= 81,
        "at most 80 buckets and the summary"
    );
    // The README's anomaly query finds anomalies (from raw points, although hourly
    // rollups serve its buckets).
    let out = ok(&query(&[
        "--output",
        "json",
        "--points",
        "100",
        "--anomalies",
        "4",
    ]));
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let anomalies = last["anomalies"].as_array().unwrap();
    assert!(!anomalies.is_empty(), "{last}");
    // Text output (issue 9, point 10): RFC 3339 bucket times, not raw nanoseconds.
    let out = ok(&query(&["--points", "4", "--anomalies", "4"]));
    let first = out.lines().next().unwrap();
    let stamp = first.split(' ').next().unwrap();
    assert!(
        stamp.starts_with("2013-") && stamp.ends_with('Z'),
        "{first}"
    );
    assert!(out.contains("anomaly at 201"), "{out}");
    // A time without a zone is explained (point 11e).
    let e = node.ctl(&[
        "telemetry",
        "query",
        "plant/machine_temp",
        "--from",
        "2013-12-02T00:00:00",
        "--to",
        "2014-02-20T00:00:00Z",
    ]);
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("zone"), "{msg}");
    // An unparseable value fails, naming its line, unless asked to skip (point 11e).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "timestamp,value\n2014-01-01 00:00:00,1.5\n2014-01-01 00:05:00,oops\n2014-01-01 00:10:00,2\n",
    )
    .unwrap();
    let e = node.ctl(&[
        "telemetry",
        "ingest",
        bad.to_str().unwrap(),
        "--series",
        "plant/bad",
    ]);
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("line 3") && msg.contains("oops"), "{msg}");
    let out = ok(&node.ctl(&[
        "--output",
        "json",
        "telemetry",
        "ingest",
        bad.to_str().unwrap(),
        "--series",
        "plant/bad",
        "--skip-invalid",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lines_skipped"], 2, "{v}");
}

/// Issue 9, point 11a: a point is identified by (series, timestamp) on every path, backfill
/// included: re-sending batches (history older than the raw retention, and recent data)
/// never changes what queries count. Also the telemetry part of point 5: a retried batch
/// whose first attempt was applied is harmless by construction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_batches_never_double_counts() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = tm(&node).await;
    for (series, age) in [("hist/temp", 5 * 24 * HOUR), ("hist/recent", 12 * HOUR)] {
        let start = (now_ns() - age) / HOUR * HOUR;
        // 5-minute samples over 10 hours, in batches that cut hours in the middle.
        let pts: Vec<(i64, f64)> = (0..120)
            .map(|i| (start + i * 5 * MIN, 20.0 + (i % 7) as f64))
            .collect();
        let batches = || pts.chunks(17).map(|p| batch(series, p)).collect::<Vec<_>>();
        let first = ingest(&mut c, batches()).await;
        assert_eq!(first.points, 120, "{series}");
        let again = ingest(&mut c, batches()).await;
        let end = start + 10 * HOUR;
        for (width, tier) in [(HOUR, "auto"), (MIN, "auto"), (HOUR, "hour")] {
            let a = query(&mut c, q(series, start, end, width, tier))
                .await
                .unwrap();
            assert_eq!(
                a.summary.count, 120,
                "{series} {tier}/{width} after {again:?}"
            );
            let mean = pts.iter().map(|p| p.1).sum::<f64>() / 120.0;
            assert!(close(a.summary.mean, mean, 1e-12));
        }
        if series == "hist/temp" {
            assert_eq!(
                (again.points, again.skipped),
                (0, 120),
                "re-sent history is skipped"
            );
        }
    }
}

/// Issue 9, point 11b: a summary covers exactly [start, end): 00:30–07:30 with hourly
/// buckets counts the 84 points inside, not the 96 of the hours it touches; where only the
/// hour tier is retained the answer widens and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_cover_exactly_the_range_asked() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = tm(&node).await;
    // Hourly-only history: a policy set before the series exists.
    c.set_retention(pb::RetentionPolicyRequest {
        prefix: "coarse/".into(),
        raw_ms: 3_600_000,
        minute_ms: 2 * 3_600_000,
        hour_ms: 0,
        lateness_ms: 0,
    })
    .await
    .unwrap();
    for (series, age) in [("fine/temp", 12 * HOUR), ("coarse/temp", 3 * 24 * HOUR)] {
        let day = (now_ns() - age) / HOUR * HOUR;
        // One point every 5 minutes over 8 hours: 12 per hour.
        let pts: Vec<(i64, f64)> = (0..96).map(|i| (day + i * 5 * MIN, i as f64)).collect();
        ingest(&mut c, vec![batch(series, &pts)]).await;
        let (start, end) = (day + 30 * MIN, day + 7 * HOUR + 30 * MIN);
        let a = query(&mut c, q(series, start, end, HOUR, "auto"))
            .await
            .unwrap();
        let total: u64 = a.buckets.iter().map(|b| b.count).sum();
        if series == "fine/temp" {
            assert_eq!(a.summary.count, 84, "{series}");
            assert_eq!(total, 84);
            assert_eq!(
                (a.summary.effective_start_ns, a.summary.effective_end_ns),
                (start, end)
            );
            assert!(a.summary.notes.is_empty(), "{:?}", a.summary.notes);
            let inside: Vec<f64> = (6..90).map(|i| i as f64).collect();
            let mean = inside.iter().sum::<f64>() / 84.0;
            assert!(close(a.summary.mean, mean, 1e-12));
        } else {
            // Only hours are retained: the whole first and last hours, said so.
            assert_eq!(a.summary.count, 96, "{series}");
            assert_eq!(
                (a.summary.effective_start_ns, a.summary.effective_end_ns),
                (day, day + 8 * HOUR)
            );
            assert!(!a.summary.notes.is_empty());
        }
        // Never more buckets than asked.
        for p in [1u32, 3, 7, 8] {
            let mut req = q(series, start, end, 0, "auto");
            req.target_points = p;
            let a = query(&mut c, req).await.unwrap();
            assert!(a.buckets.len() <= p as usize, "{p}: {}", a.buckets.len());
        }
    }
    // Issue 9, point 11d: a series that does not exist is NotFound, naming it.
    let e = query(&mut c, q("fine/nope", 0, HOUR, MIN, "auto"))
        .await
        .err()
        .expect("unknown series");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("fine/nope"), "{}", e.message());
}

/// Issue 9 (closing request): a fault run mixing kill -9 with `Telemetry.Compact` /
/// `Telemetry.Stats` calls, backfills, retried batches and retention changes on a 3-node
/// cluster ends with replicas that agree (`cluster verify --deep`) and answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_agree_after_crashes_between_compactions_and_backfills() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let follower = (leader + 1) % 3;
    let mut lc = tm(&c.nodes[leader]).await;
    let day = (now_ns() - 5 * 24 * HOUR) / HOUR * HOUR;
    let recent = (now_ns() - 6 * HOUR) / HOUR * HOUR;
    let series = |i: i64| format!("fault/s{}", i % 2);
    let batches = |round: i64| -> Vec<pb::IngestBatch> {
        (0..6)
            .map(|k| {
                let base = if k % 2 == 0 { day } else { recent };
                let pts: Vec<(i64, f64)> = (0..200)
                    .map(|i| {
                        (
                            base + (round * 6 + k) * 20 * MIN + i * 5_000_000_000,
                            i as f64,
                        )
                    })
                    .collect();
                batch(&series(k), &pts)
            })
            .collect()
    };
    for round in 0..3 {
        ingest(&mut lc, batches(round)).await;
        let mut fc = tm(&c.nodes[follower]).await;
        fc.compact(pb::CompactRequest {}).await.unwrap();
        // Retries of this round's batches and of the previous one's.
        ingest(&mut lc, batches(round)).await;
        if round > 0 {
            ingest(&mut lc, batches(round - 1)).await;
        }
        lc.set_retention(pb::RetentionPolicyRequest {
            prefix: "fault/".into(),
            raw_ms: if round % 2 == 0 {
                3 * 3_600_000
            } else {
                96 * 3_600_000
            },
            minute_ms: 40 * 24 * 3_600_000,
            hour_ms: 0,
            lateness_ms: 0,
        })
        .await
        .unwrap();
        fc.stats(pb::TelemetryStatsRequest {}).await.unwrap();
        ingest(&mut lc, batches(round)).await;
        c.nodes[follower].kill9();
        ingest(&mut lc, batches(round)).await;
        c.nodes[follower].restart();
        c.wait_converged(&c.all()).await;
    }
    let out = c.nodes[leader].ctl(&["cluster", "verify", "--deep"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in ["fault/s0", "fault/s1"] {
        let mut answers = Vec::new();
        for n in &c.nodes {
            let mut cl = tm(n).await;
            let mut req = q(s, day, recent + 12 * HOUR, HOUR, "auto");
            req.consistency = pb::Consistency::Local as i32;
            let a = query(&mut cl, req).await.unwrap();
            answers.push(format!("{:?} {}", a.buckets, a.summary.count));
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{s}: {answers:?}");
    }
}
