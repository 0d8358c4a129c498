//! `aetherctl telemetry …`: load CSV files, query series, set retention, compact; and the
//! ingest and query benchmarks.

use super::output::outln;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::Channel;

use super::failover::Failover;
use super::output::{Output, Printer};
use super::{authed, status_err_at, CallKind, Conn};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::telemetry_client::TelemetryClient;
use crate::time::{format_timestamp, parse_duration_ms, parse_time_ns};

#[derive(Subcommand, Debug)]
pub enum TelemetryCmd {
    /// Load a CSV file: `timestamp,value` (with --series) or `series,timestamp,value`.
    /// Timestamps: integer ns since the epoch, `YYYY-MM-DD HH:MM:SS` (UTC) or RFC 3339.
    /// A first line that does not parse is a header; any other such line fails the command
    /// (naming it) unless --skip-invalid. Re-sending a file is harmless.
    Ingest {
        file: std::path::PathBuf,
        #[arg(long)]
        series: Option<String>,
        /// Points per batch.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Skip (and report) lines whose timestamp or value does not parse.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Query a series over a time range.
    Query(QueryArgs),
    /// Set the retention of a series prefix (cluster-wide). Cutoffs never move backwards:
    /// series that exist keep at least the retention they had; series created later get
    /// the policy in full (set it before importing history).
    Retention {
        prefix: String,
        /// Raw points, e.g. 48h, or "forever" (then every tier is kept forever).
        #[arg(long)]
        raw: String,
        /// 1-minute rollups, e.g. 30d, or "forever" (default: forever when raw is).
        #[arg(long)]
        minute: Option<String>,
        /// 1-hour rollups, e.g. 365d, or "forever".
        #[arg(long, default_value = "forever")]
        hour: String,
        /// Refuse points older than this ("none": accept any age).
        #[arg(long, default_value = "none")]
        lateness: String,
    },
    /// Flush and compact this node's telemetry data now (expired data is reclaimed).
    Compact,
    /// Bytes on disk per tier on this node.
    Stats,
}

#[derive(Args, Debug, Clone)]
pub struct QueryArgs {
    pub series: String,
    /// Start (RFC 3339 with a zone, or ns since the epoch).
    #[arg(long)]
    pub from: String,
    /// End, exclusive.
    #[arg(long)]
    pub to: String,
    /// Bucket width, e.g. 10s, 1m, 1h.
    #[arg(long, conflicts_with_all = ["points", "edges"])]
    pub bucket: Option<String>,
    /// Target number of points (the width is chosen, coarsest tier first).
    #[arg(long, conflicts_with = "edges")]
    pub points: Option<u32>,
    /// Explicit bucket edges, comma-separated times inside [--from, --to] (e.g. local
    /// midnights: calendar days of 23, 24 or 25 hours).
    #[arg(long, value_delimiter = ',')]
    pub edges: Vec<String>,
    /// auto | raw | minute | hour
    #[arg(long, default_value = "auto")]
    pub tier: String,
    /// Report points with |z| above this.
    #[arg(long)]
    pub anomalies: Option<f64>,
    /// Report points whose modified z-score (MAD) is above this in magnitude (usually 3.5).
    #[arg(long)]
    pub mad: Option<f64>,
    /// Find level shifts (CUSUM) in the means of windows of this width, e.g. 1h.
    #[arg(long)]
    pub drift: Option<String>,
    /// CUSUM threshold in baseline standard deviations of the window means (default 10).
    #[arg(long, requires = "drift")]
    pub drift_threshold: Option<f64>,
    /// M4 pixel columns.
    #[arg(long)]
    pub m4: Option<u32>,
    /// Exact medians of raw buckets.
    #[arg(long)]
    pub median: bool,
}

/// A duration flag in ms; "forever" is 0.
fn parse_retention_ms(s: &str) -> anyhow::Result<u64> {
    if s == "forever" {
        Ok(0)
    } else {
        Ok(parse_duration_ms(s)?)
    }
}

fn client(ch: Channel) -> TelemetryClient<Conn> {
    TelemetryClient::new(authed(ch))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A client on the first node (from `start`, going round) that takes a connection: for an
/// ingest stream, which is fed as the file is read and so cannot be sent twice.
async fn stream_client(
    addrs: &str,
    start: usize,
    timeout: Duration,
) -> anyhow::Result<(String, TelemetryClient<Conn>)> {
    let nodes = Failover::connect_lazy(addrs, timeout)?;
    let (at, ch) = nodes.connect_from(start, timeout).await?;
    Ok((nodes.addr(at).to_owned(), client(ch)))
}

pub async fn run(
    addrs: &str,
    timeout: Duration,
    cmd: TelemetryCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    match cmd {
        TelemetryCmd::Ingest {
            file,
            series,
            batch,
            skip_invalid,
        } => ingest_csv(addrs, &file, series, batch.max(1), skip_invalid, printer).await,
        TelemetryCmd::Query(q) => {
            let nodes = Failover::connect_lazy(addrs, timeout)?;
            let answer = run_query(&nodes, &query_request(&q)?).await?;
            print_query(printer, &answer);
            Ok(())
        }
        TelemetryCmd::Retention {
            prefix,
            raw,
            minute,
            hour,
            lateness,
        } => {
            let raw_ms = parse_retention_ms(&raw)?;
            let minute_ms = match &minute {
                Some(m) => parse_retention_ms(m)?,
                None if raw_ms == 0 => 0,
                None => bail!("--minute is required unless --raw forever"),
            };
            let req = pb::RetentionPolicyRequest {
                prefix: prefix.clone(),
                raw_ms,
                minute_ms,
                hour_ms: parse_retention_ms(&hour)?,
                lateness_ms: if lateness == "none" {
                    0
                } else {
                    parse_duration_ms(&lateness)?
                },
            };
            Failover::connect_lazy(addrs, timeout)?
                .call(CallKind::Unknown, |ch| {
                    let req = req.clone();
                    async move { client(ch).set_retention(req).await }
                })
                .await?;
            match printer.format {
                Output::Json => printer.json(&json!({"prefix": prefix, "set": true})),
                Output::Text => outln!("retention set for series prefix {prefix:?}"),
            }
            Ok(())
        }
        // Both concern one node's disk: the first node that answers, named in the output.
        TelemetryCmd::Compact => {
            let nodes = Failover::connect_lazy(addrs, Duration::from_secs(600))?;
            let (at, r) = nodes
                .call_from(0, CallKind::Unknown, |ch| async move {
                    Ok(client(ch)
                        .compact(pb::CompactRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            let node = nodes.addr(at);
            match printer.format {
                Output::Json => printer.json(&json!({
                    "raw_bytes_before": r.raw_bytes_before, "raw_bytes_after": r.raw_bytes_after,
                    "rollup_bytes_before": r.rollup_bytes_before, "rollup_bytes_after": r.rollup_bytes_after,
                    "grpc_addr": node,
                })),
                Output::Text => outln!(
                    "compacted {node}: raw {} -> {} bytes, rollups {} -> {} bytes",
                    r.raw_bytes_before, r.raw_bytes_after, r.rollup_bytes_before, r.rollup_bytes_after
                ),
            }
            Ok(())
        }
        TelemetryCmd::Stats => {
            let nodes = Failover::connect_lazy(addrs, timeout)?;
            let (at, r) = nodes
                .call_from(0, CallKind::Read, |ch| async move {
                    Ok(client(ch)
                        .stats(pb::TelemetryStatsRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            let node = nodes.addr(at);
            match printer.format {
                Output::Json => printer.json(
                    &json!({"raw_bytes": r.raw_bytes, "rollup_bytes": r.rollup_bytes, "grpc_addr": node}),
                ),
                Output::Text => outln!(
                    "{node}: raw {} bytes, rollups {} bytes",
                    r.raw_bytes, r.rollup_bytes
                ),
            }
            Ok(())
        }
    }
}

pub fn query_request(q: &QueryArgs) -> anyhow::Result<pb::TelemetryQuery> {
    let ns_of = |d: &str| -> anyhow::Result<i64> {
        i64::try_from(parse_duration_ms(d)? * 1_000_000).context("duration too long")
    };
    Ok(pb::TelemetryQuery {
        series: q.series.clone(),
        start_ns: parse_time_ns(&q.from)?,
        end_ns: parse_time_ns(&q.to)?,
        bucket_ns: match &q.bucket {
            Some(b) => {
                i64::try_from(parse_duration_ms(b)? * 1_000_000).context("bucket too wide")?
            }
            None => 0,
        },
        target_points: q
            .points
            .unwrap_or(if q.bucket.is_none() && q.edges.is_empty() {
                1000
            } else {
                0
            }),
        tier: q.tier.clone(),
        anomaly_z: q.anomalies.unwrap_or(0.0),
        m4_width: q.m4.unwrap_or(0),
        median: q.median,
        percentiles: vec![0.5, 0.9, 0.99],
        consistency: pb::Consistency::Linearizable as i32,
        edges: q
            .edges
            .iter()
            .map(|e| parse_time_ns(e))
            .collect::<Result<_, _>>()?,
        anomaly_mad: q.mad,
        drift: match &q.drift {
            Some(w) => Some(pb::DriftRequest {
                window_ns: ns_of(w)?,
                threshold: q.drift_threshold.unwrap_or(0.0),
            }),
            None => None,
        },
    })
}

/// A query's answer, gathered from its chunks.
#[derive(Debug, Default)]
pub struct QueryAnswer {
    pub buckets: Vec<pb::TelemetryBucket>,
    pub summary: pb::TelemetrySummary,
    pub anomalies: Vec<pb::TelemetryAnomaly>,
    pub m4: Vec<pb::M4Column>,
    pub drift: Vec<pb::TelemetryDrift>,
}

/// Runs a query on the first node that answers it whole (a stream that breaks is a read
/// that changed nothing: the next node answers it from the start).
pub async fn run_query(
    nodes: &Failover<Channel>,
    req: &pb::TelemetryQuery,
) -> anyhow::Result<QueryAnswer> {
    let (answer, summary) = nodes
        .call(CallKind::Read, |ch| {
            let req = req.clone();
            async move {
                let mut stream = client(ch).query(req).await?.into_inner();
                let (mut a, mut summary) = (QueryAnswer::default(), None);
                while let Some(chunk) = stream.message().await? {
                    a.buckets.extend(chunk.buckets);
                    a.anomalies.extend(chunk.anomalies);
                    a.m4.extend(chunk.m4);
                    a.drift.extend(chunk.drift);
                    if chunk.summary.is_some() {
                        summary = chunk.summary;
                    }
                }
                Ok((a, summary))
            }
        })
        .await?;
    Ok(QueryAnswer {
        summary: summary.ok_or_else(|| anyhow!("query ended without a summary"))?,
        ..answer
    })
}

fn print_query(printer: &Printer, a: &QueryAnswer) {
    let QueryAnswer {
        buckets,
        summary: s,
        anomalies,
        m4,
        drift,
    } = a;
    match printer.format {
        Output::Json => {
            for b in buckets {
                printer.json(&json!({
                    "start_ns": b.start_ns, "end_ns": b.end_ns, "count": b.count, "mean": b.mean, "min": b.min, "max": b.max,
                    "first": b.first, "last": b.last, "sum": b.sum, "variance": b.variance, "stddev": b.stddev,
                    "sample_variance": b.sample_variance, "sample_stddev": b.sample_stddev, "median": b.median,
                    "p50": b.percentiles.first(), "p90": b.percentiles.get(1), "p99": b.percentiles.get(2),
                    "tier": b.tier,
                }));
            }
            printer.json(&json!({"summary": {
                "count": s.count, "mean": s.mean, "variance": s.variance, "stddev": s.stddev, "min": s.min,
                "max": s.max, "p50": s.percentiles.first(), "p90": s.percentiles.get(1), "p99": s.percentiles.get(2),
                "bucket_ns": s.bucket_ns, "raw_points_read": s.raw_points_read,
                "sample_variance": s.sample_variance, "sample_stddev": s.sample_stddev,
                "effective_start_ns": s.effective_start_ns, "effective_end_ns": s.effective_end_ns,
                "notes": s.notes,
            }, "anomalies": anomalies.iter().map(|a| json!({"ts_ns": a.ts_ns, "value": a.value, "z": a.z,
                    "score": a.score, "kind": a.kind, "method": a.method})).collect::<Vec<_>>(),
               "drift": drift.iter().map(|d| json!({"start_ns": d.start_ns, "alarm_ns": d.alarm_ns,
                    "direction": d.direction, "mean_before": d.mean_before, "mean_after": d.mean_after})).collect::<Vec<_>>(),
               "m4": m4.iter().map(|c| json!({"pixel": c.pixel, "first": [c.first_ts, c.first], "last": [c.last_ts, c.last],
                    "min": [c.min_ts, c.min], "max": [c.max_ts, c.max]})).collect::<Vec<_>>()}));
        }
        Output::Text => {
            for b in buckets {
                outln!(
                    "{} n={} mean={:.6} min={:.6} max={:.6} sd={:.6} p99={:.6} [{}]",
                    format_timestamp(b.start_ns),
                    b.count,
                    b.mean,
                    b.min,
                    b.max,
                    b.stddev,
                    b.percentiles.get(2).copied().unwrap_or(f64::NAN),
                    b.tier
                );
            }
            outln!(
                "summary: n={} mean={:.6} sd={:.6} min={:.6} max={:.6} p50={:.6} p99={:.6} (bucket {} ns, {} raw points read)",
                s.count,
                s.mean,
                s.stddev,
                s.min,
                s.max,
                s.percentiles.first().copied().unwrap_or(f64::NAN),
                s.percentiles.get(2).copied().unwrap_or(f64::NAN),
                s.bucket_ns,
                s.raw_points_read
            );
            outln!(
                "(sd is the population standard deviation; sample: {:.6}; --output json has both variances)",
                s.sample_stddev
            );
            if (s.effective_start_ns, s.effective_end_ns) != (0, 0) {
                outln!(
                    "covers [{}, {})",
                    format_timestamp(s.effective_start_ns),
                    format_timestamp(s.effective_end_ns)
                );
            }
            for n in &s.notes {
                outln!("note: {n}");
            }
            for a in anomalies {
                outln!(
                    "anomaly at {}: {} ({} {}, score {:.2})",
                    format_timestamp(a.ts_ns),
                    a.value,
                    a.kind,
                    a.method,
                    a.score
                );
            }
            for d in drift {
                outln!(
                    "drift {} from {} (alarm at {}): mean {:.6} -> {:.6}",
                    d.direction,
                    format_timestamp(d.start_ns),
                    format_timestamp(d.alarm_ns),
                    d.mean_before,
                    d.mean_after
                );
            }
            if !m4.is_empty() {
                outln!("m4: {} columns", m4.len());
            }
        }
    }
}

/// One CSV line: `Ok(Err(why))` when its timestamp or value does not parse.
type Parsed = std::result::Result<(String, i64, f64), String>;

fn parse_line(line: &str, series: &Option<String>) -> anyhow::Result<Parsed> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let (name, t, v) = match (fields.as_slice(), series) {
        ([t, v], Some(s)) => (s.clone(), *t, *v),
        ([s, t, v], _) => (s.to_string(), *t, *v),
        ([_, _], None) => bail!("two columns need --series"),
        _ => bail!("expected timestamp,value or series,timestamp,value"),
    };
    let t = match parse_time_ns(t) {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("timestamp {t:?}: {e}"))),
    };
    match v.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Ok((name, t, v))),
        _ => Ok(Err(format!("value {v:?} is not a finite number"))),
    }
}

async fn ingest_csv(
    addrs: &str,
    file: &std::path::Path,
    series: Option<String>,
    batch: usize,
    skip_invalid: bool,
    printer: &Printer,
) -> anyhow::Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = f.metadata()?.len();
    let bar = if printer.format == Output::Text {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {msg}",
            )?
            .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(4);
    let reader_bar = bar.clone();
    let path = file.to_owned();
    // Parse on a blocking thread; batches stream to the node as they fill.
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<u64>)> {
        let mut lines = BufReader::new(std::fs::File::open(&path)?).lines();
        let mut current: std::collections::BTreeMap<String, pb::SeriesPoints> = Default::default();
        let (mut n, mut in_batch) = (0u64, 0usize);
        // Lines skipped (the header, and bad lines with --skip-invalid).
        let mut skipped: Vec<u64> = Vec::new();
        let mut line_no = 0u64;
        let mut read_bytes = 0u64;
        while let Some(line) = lines.next().transpose()? {
            line_no += 1;
            read_bytes += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line, &series).with_context(|| format!("line {line_no}"))? {
                Ok((name, t, v)) => {
                    let e = current
                        .entry(name.clone())
                        .or_insert_with(|| pb::SeriesPoints {
                            series: name,
                            ..Default::default()
                        });
                    e.timestamps_ns.push(t);
                    e.values.push(v);
                    n += 1;
                    in_batch += 1;
                }
                // The first line may be a header.
                Err(_) if line_no == 1 => skipped.push(line_no),
                Err(_) if skip_invalid => skipped.push(line_no),
                Err(why) => bail!(
                    "line {line_no}: {why} (pass --skip-invalid to skip such lines); \
                     the points before it were sent: re-sending the file once fixed is harmless"
                ),
            }
            if in_batch >= batch {
                let b = pb::IngestBatch {
                    series: std::mem::take(&mut current).into_values().collect(),
                };
                if tx.blocking_send(b).is_err() {
                    break;
                }
                in_batch = 0;
                reader_bar.set_position(read_bytes);
            }
        }
        if in_batch > 0 {
            let _ = tx.blocking_send(pb::IngestBatch {
                series: current.into_values().collect(),
            });
        }
        reader_bar.set_position(read_bytes);
        Ok((n, skipped))
    });
    let (node, mut c) = stream_client(addrs, 0, Duration::from_secs(3600)).await?;
    let started = Instant::now();
    let summary = c
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_err_at(&node))?
        .into_inner();
    let (n, skipped) = reader.await?.with_context(|| {
        format!(
            "ingesting {}: {} points stored before the error",
            file.display(),
            summary.points
        )
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let shown: Vec<String> = skipped.iter().take(20).map(|l| l.to_string()).collect();
    match printer.format {
        Output::Json => printer.json(
            &json!({"points": summary.points, "batches": summary.batches,
            "late_dropped": summary.late_dropped, "skipped_points": summary.skipped,
            "lines_skipped": skipped.len(), "skipped_lines": shown, "seconds": secs}),
        ),
        Output::Text => outln!(
            "ingested {} points in {} batches ({:.0} points/s){}{}{}",
            summary.points,
            summary.batches,
            n as f64 / secs,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} lines skipped (header or unparseable: line {}{})",
                    skipped.len(),
                    shown.join(", "),
                    if skipped.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                )
            },
            if summary.late_dropped > 0 {
                format!(", {} too late", summary.late_dropped)
            } else {
                String::new()
            },
            if summary.skipped > 0 {
                format!(
                    ", {} not stored (already summarized by rollups, or past retention)",
                    summary.skipped
                )
            } else {
                String::new()
            },
        ),
    }
    Ok(())
}

/// A 16-bit ADC-like 1 kHz-ish signal: slow sine plus a few LSB of noise, quantized.
fn adc_value(i: u64, seed: u64) -> f64 {
    const LSB: f64 = 10.0 / 65536.0;
    let x = i as f64 * 0.001;
    let mut h = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    let noise = (h % 7) as f64 - 3.0;
    ((2.5 + 1.5 * (x * 0.3).sin()) / LSB + noise).round() * LSB
}

#[derive(Args, Debug, Clone)]
pub struct IngestBench {
    /// Points in total.
    #[arg(long, default_value_t = 20_000_000)]
    pub points: u64,
    /// Points per batch.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Concurrent ingest streams (each its own series).
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Sample interval of the synthetic series.
    #[arg(long, default_value_t = 1_000_000)]
    pub interval_ns: i64,
}

pub async fn bench_ingest(addrs: &str, b: IngestBench, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(b.streams > 0 && b.batch > 0, "counts must be > 0");
    let nodes = super::failover::parse_addrs(addrs)?.len();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let per_stream = b.points / b.streams as u64;
    let bar = if printer.format == Output::Text {
        let bar = ProgressBar::new(per_stream * b.streams as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} points {per_sec}",
            )?
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    // Start at a recent minute so the data is within raw retention.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    let t0 = now - (per_stream as i64 * b.interval_ns) - 60_000_000_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..b.streams {
        let addrs = addrs.to_owned();
        let bar = bar.clone();
        let series = format!("bench-{run_id}/ch{s}");
        let cfg = b.clone();
        tasks.push(tokio::spawn(async move {
            // Streams spread over the nodes; one whose node is down starts on the next.
            let (node, mut c) = stream_client(&addrs, s % nodes, Duration::from_secs(3600)).await?;
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(4);
            let producer = tokio::spawn(async move {
                let mut i = 0u64;
                while i < per_stream {
                    let n = (cfg.batch as u64).min(per_stream - i);
                    let ts: Vec<i64> = (i..i + n)
                        .map(|k| t0 + k as i64 * cfg.interval_ns)
                        .collect();
                    let values: Vec<f64> = (i..i + n).map(|k| adc_value(k, s as u64)).collect();
                    if tx
                        .send(pb::IngestBatch {
                            series: vec![pb::SeriesPoints {
                                series: series.clone(),
                                timestamps_ns: ts,
                                values,
                            }],
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                    bar.inc(n);
                    i += n;
                }
            });
            let summary = c
                .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(status_err_at(&node))?
                .into_inner();
            producer.await?;
            anyhow::Ok(summary.points)
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let report = json!({"bench": "ingest", "points": acked, "batch": b.batch, "streams": b.streams,
        "seconds": secs, "points_per_sec": acked as f64 / secs});
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => outln!(
            "ingest bench: {acked} points acknowledged (durable) in {secs:.2}s over {} streams, batches of {}: {:.0} points/s",
            b.streams,
            b.batch,
            acked as f64 / secs
        ),
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct QueryBench {
    /// Points in the series.
    #[arg(long, default_value_t = 10_000_000)]
    pub points: u64,
    /// Buckets per query (the series spans this many minutes, so rollups serve them).
    #[arg(long, default_value_t = 1000)]
    pub buckets: u64,
    /// Queries to time per tier.
    #[arg(long, default_value_t = 100)]
    pub queries: u64,
    /// Query an existing series instead of ingesting one (it must cover the last
    /// `--buckets` minutes but two, as an ingested one does).
    #[arg(long)]
    pub series: Option<String>,
    /// Seconds to wait after the ingest before timing (the node compacts and rolls up
    /// what it just took, which would weigh on the first queries).
    #[arg(long, default_value_t = 0)]
    pub settle_secs: u64,
    /// Also time the same bucket query through GraphQL at this URL (e.g.
    /// `http://127.0.0.1:8080/graphql`), alternating with gRPC so that both see the same
    /// machine, and print the two side by side.
    #[arg(long)]
    pub graphql: Option<String>,
}

/// One-minute buckets with p99 over `[start, end)`, read locally (the bench's query).
fn bucket_bench_query(series: &str, start: i64, end: i64, tier: &str) -> pb::TelemetryQuery {
    pb::TelemetryQuery {
        series: series.to_owned(),
        start_ns: start,
        end_ns: end,
        bucket_ns: 60_000_000_000,
        tier: tier.into(),
        percentiles: vec![0.99],
        consistency: pb::Consistency::Local as i32,
        ..Default::default()
    }
}

/// The gRPC bucket query `req` (tier `auto`, one p99) and the same query through GraphQL at
/// `url`, alternating query by query so that both meet the same machine, `n` of each. The
/// GraphQL query asks for what a gRPC bucket carries (its moments, first, last, p99). The
/// answers are compared on the first round: the figures are of equal work.
async fn graphql_beside_grpc(
    nodes: &Failover<Channel>,
    url: &str,
    req: &pb::TelemetryQuery,
    n: u64,
) -> anyhow::Result<serde_json::Value> {
    const QUERY: &str = r#"query($s: String!, $r: TimeRangeInput!, $every: Duration!) {
  telemetry(series: $s, range: $r, consistency: LOCAL) {
    buckets(every: $every) {
      start tier count sum mean min max first last variance stddev p99: percentile(p: 0.99) } } }"#;
    let body = serde_json::to_vec(&json!({
        "query": QUERY,
        "variables": {
            "s": req.series,
            "r": {"start": format_timestamp(req.start_ns), "end": format_timestamp(req.end_ns)},
            "every": format!("{}s", req.bucket_ns / 1_000_000_000),
        }
    }))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let mut post = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(token) = super::bearer_header() {
        post = post.header(reqwest::header::AUTHORIZATION, token);
    }
    let hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
    let (mut hg, mut hq) = (hist()?, hist()?);
    for i in 0..n.max(1) {
        let t = Instant::now();
        let grpc = run_query(nodes, req).await?;
        hg.record(t.elapsed().as_micros().max(1) as u64)?;
        let t = Instant::now();
        let resp = post
            .try_clone()
            .context("the GraphQL request")?
            .body(body.clone())
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let answer = resp.bytes().await?;
        hq.record(t.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(
            status.is_success(),
            "GraphQL answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        if i == 0 {
            same_buckets(&serde_json::from_slice(&answer)?, &grpc.buckets)?;
        }
    }
    let ms = |h: &Histogram<u64>, q| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "queries": n.max(1),
        "grpc": {"p50_ms": ms(&hg, 0.5), "p99_ms": ms(&hg, 0.99), "max_ms": hg.max() as f64 / 1000.0},
        "graphql": {"p50_ms": ms(&hq, 0.5), "p99_ms": ms(&hq, 0.99), "max_ms": hq.max() as f64 / 1000.0},
        "p99_ratio": ms(&hq, 0.99) / ms(&hg, 0.99),
    }))
}

/// A gRPC bucket's values in the order of GraphQL's `agg: [COUNT, SUM, MEAN, MIN, MAX,
/// FIRST, LAST, VARIANCE, STDDEV]`.
pub fn bucket_aggregates(b: &pb::TelemetryBucket) -> [f64; 9] {
    [
        b.count as f64,
        b.sum,
        b.mean,
        b.min,
        b.max,
        b.first,
        b.last,
        b.variance,
        b.stddev,
    ]
}

/// The GraphQL answer `body` carries the gRPC `buckets`, value for value.
fn same_buckets(body: &serde_json::Value, buckets: &[pb::TelemetryBucket]) -> anyhow::Result<()> {
    if let Some(errors) = body.get("errors") {
        bail!("GraphQL refused the query: {errors}");
    }
    let got = body["data"]["telemetry"]["buckets"]
        .as_array()
        .ok_or_else(|| anyhow!("no buckets in the GraphQL answer: {body}"))?;
    anyhow::ensure!(
        got.len() == buckets.len(),
        "GraphQL gave {} buckets, gRPC {}",
        got.len(),
        buckets.len()
    );
    // GraphQL writes a non-finite float (an empty bucket's moments) as null.
    let as_json = |x: f64| x.is_finite().then_some(x);
    for (g, b) in got.iter().zip(buckets) {
        let want = bucket_aggregates(b).map(as_json);
        let values: Vec<Option<f64>> = [
            "count", "sum", "mean", "min", "max", "first", "last", "variance", "stddev",
        ]
        .map(|k| g[k].as_f64())
        .to_vec();
        let p99 = g["p99"].as_f64();
        anyhow::ensure!(
            g["tier"] == b.tier.as_str()
                && values == want
                && p99 == b.percentiles.first().copied().and_then(as_json),
            "the bucket at {} differs: GraphQL {g}, gRPC {b:?}",
            format_timestamp(b.start_ns)
        );
    }
    Ok(())
}

pub async fn bench_query(addrs: &str, b: QueryBench, printer: &Printer) -> anyhow::Result<()> {
    let span = b.buckets as i64 * 60_000_000_000;
    let interval = (span / b.points.max(1) as i64).max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    let start = (now - span - 120_000_000_000) / 60_000_000_000 * 60_000_000_000;
    let series = match &b.series {
        Some(s) => s.clone(),
        None => {
            let series = format!("qbench-{}/value", uuid::Uuid::new_v4().simple());
            let (node, mut c) = stream_client(addrs, 0, Duration::from_secs(3600)).await?;
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(4);
            let name = series.clone();
            let total = b.points;
            let bar = if printer.format == Output::Text {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:40}] {pos}/{len} points ingested",
                    )?
                    .progress_chars("=> "),
                );
                bar
            } else {
                ProgressBar::hidden()
            };
            let pbar = bar.clone();
            let producer = tokio::spawn(async move {
                let mut i = 0u64;
                while i < total {
                    let n = 50_000u64.min(total - i);
                    let ts = (i..i + n).map(|k| start + k as i64 * interval).collect();
                    let values = (i..i + n).map(|k| adc_value(k, 7)).collect();
                    if tx
                        .send(pb::IngestBatch {
                            series: vec![pb::SeriesPoints {
                                series: name.clone(),
                                timestamps_ns: ts,
                                values,
                            }],
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                    pbar.inc(n);
                    i += n;
                }
            });
            c.ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(status_err_at(&node))?;
            producer.await?;
            bar.finish_and_clear();
            series
        }
    };
    tokio::time::sleep(Duration::from_secs(b.settle_secs)).await;
    let nodes = Failover::connect_lazy(addrs, Duration::from_secs(600))?;
    let mut results = serde_json::Map::new();
    for tier in ["auto", "raw"] {
        let req = bucket_bench_query(&series, start, start + span, tier);
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut served = String::new();
        let mut count = 0;
        let n = if tier == "raw" {
            b.queries.div_ceil(10).max(5)
        } else {
            b.queries
        };
        for _ in 0..n {
            let t = Instant::now();
            let QueryAnswer {
                buckets, summary, ..
            } = run_query(&nodes, &req).await?;
            h.record(t.elapsed().as_micros().max(1) as u64)?;
            served = buckets.first().map(|b| b.tier.clone()).unwrap_or_default();
            count = summary.count;
            anyhow::ensure!(
                buckets.len() as u64 >= b.buckets.saturating_sub(1),
                "got {} buckets",
                buckets.len()
            );
        }
        results.insert(
            tier.into(),
            json!({"queries": n, "served_by": served, "points_covered": count,
                "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
                "max_ms": h.max() as f64 / 1000.0}),
        );
    }
    if let Some(url) = &b.graphql {
        let req = bucket_bench_query(&series, start, start + span, "auto");
        results.insert(
            "graphql_vs_grpc".into(),
            graphql_beside_grpc(&nodes, url, &req, b.queries).await?,
        );
    }
    let report = json!({"bench": "query", "series": series, "points": b.points, "buckets": b.buckets, "results": results});
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => {
            outln!(
                "query bench: {} buckets (avg, min, max, stddev, p99) over {} points",
                b.buckets,
                b.points
            );
            for (tier, r) in results.iter().filter(|(k, _)| *k != "graphql_vs_grpc") {
                outln!(
                    "  tier {tier:>4} (served by {}): p50 {} ms  p99 {} ms  max {} ms over {} queries",
                    r["served_by"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["queries"]
                );
            }
            if let Some(r) = results.get("graphql_vs_grpc") {
                outln!(
                    "  tier auto, alternating, {} each: gRPC p50 {} ms p99 {} ms | GraphQL p50 {} ms p99 {} ms | GraphQL/gRPC p99 {:.3}",
                    r["queries"], r["grpc"]["p50_ms"], r["grpc"]["p99_ms"], r["graphql"]["p50_ms"],
                    r["graphql"]["p99_ms"], r["p99_ratio"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buckets_nan_moments_equal_graphqls_nulls() {
        let b = pb::TelemetryBucket {
            count: 0,
            sum: 0.0,
            mean: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            first: f64::NAN,
            last: f64::NAN,
            variance: f64::NAN,
            stddev: f64::NAN,
            percentiles: vec![f64::NAN],
            tier: "minute".into(),
            ..Default::default()
        };
        let answer = |mean: serde_json::Value| {
            json!({"data": {"telemetry": {"buckets": [{
                "tier": "minute", "count": 0, "sum": 0.0, "mean": mean, "min": null,
                "max": null, "first": null, "last": null, "variance": null, "stddev": null,
                "p99": null}]}}})
        };
        same_buckets(&answer(json!(null)), std::slice::from_ref(&b)).unwrap();
        assert!(same_buckets(&answer(json!(1.5)), std::slice::from_ref(&b)).is_err());
    }
}
