//! How `aetherctl` prints: human text, or one JSON object per line (`--output json`).

use base64::Engine;
use clap::ValueEnum;
use serde_json::{json, Value};

use crate::proto::aetherops::v1 as pb;

/// `println!` for `aetherctl`'s output. Rust ignores SIGPIPE, so that a write to a socket
/// the peer closed fails with an error instead of killing the process (h2 writes with
/// `writev`, which has no `MSG_NOSIGNAL`): keep it so. But when stdout is a pipe whose
/// reader has gone (`aetherctl … | head -1`), `println!` would panic; this ends the process
/// as that pipe ends `cat` — by SIGPIPE, raised here with its default action — and any
/// other failure to write stdout with an error and exit code 1.
macro_rules! outln {
    () => {
        $crate::ctl::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::ctl::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

pub fn write_stdout(text: std::fmt::Arguments) {
    use std::io::Write;
    let Err(e) = std::io::stdout().lock().write_fmt(text) else {
        return;
    };
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // Safety: restoring a signal's default action and raising it are async-signal-safe
        // and touch no Rust state; the process ends here.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub struct Printer {
    pub format: Output,
}

/// A payload as JSON when it is JSON (the convention), else base64 under `data_base64`.
fn payload_fields(payload: &[u8], obj: &mut serde_json::Map<String, Value>) {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => {
            obj.insert("data".into(), v);
        }
        Err(_) => {
            obj.insert(
                "data_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            );
        }
    }
}

pub fn event_json(e: &pb::RecordedEvent) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("event_id".into(), json!(e.event_id));
    obj.insert("stream".into(), json!(e.stream));
    obj.insert("stream_version".into(), json!(e.stream_version));
    obj.insert("global_position".into(), json!(e.global_position));
    obj.insert("event_type".into(), json!(e.event_type));
    obj.insert("schema_version".into(), json!(e.schema_version));
    obj.insert("event_time_ns".into(), json!(e.event_time_ns));
    obj.insert("commit_time_ns".into(), json!(e.commit_time_ns));
    payload_fields(&e.payload, &mut obj);
    let meta: std::collections::BTreeMap<_, _> = e.metadata.iter().collect();
    obj.insert("metadata".into(), json!(meta));
    Value::Object(obj)
}

impl Printer {
    pub fn new(format: Output) -> Self {
        Printer { format }
    }

    pub fn json(&self, v: &Value) {
        outln!("{v}");
    }

    pub fn event(&self, e: &pb::RecordedEvent) {
        match self.format {
            Output::Json => self.json(&event_json(e)),
            Output::Text => outln!(
                "{}@{} #{} {} {}",
                e.stream,
                e.stream_version,
                e.global_position,
                e.event_type,
                String::from_utf8_lossy(&e.payload)
            ),
        }
    }

    pub fn caught_up(&self, next: u64) {
        match self.format {
            // JSON consumers get events only; the caught-up marker goes to stderr.
            Output::Json => eprintln!("caught up; next {next}"),
            Output::Text => eprintln!("-- caught up (next {next}); following live"),
        }
    }

    pub fn appended(&self, stream: &str, r: &pb::AppendResponse) {
        match self.format {
            Output::Json => self.json(&json!({
                "stream": stream,
                "first_stream_version": r.first_stream_version,
                "last_stream_version": r.last_stream_version,
                "first_global_position": r.first_global_position,
                "last_global_position": r.last_global_position,
                "commit_time_ns": r.commit_time_ns,
                "duplicate": r.duplicate,
            })),
            Output::Text => outln!(
                "{} {stream}@{} at global position {}",
                if r.duplicate {
                    "already stored:"
                } else {
                    "appended"
                },
                r.first_stream_version,
                r.first_global_position
            ),
        }
    }

    pub fn status(&self, s: &pb::StatusResponse) {
        let v = status_json(s);
        match self.format {
            Output::Json => self.json(&v),
            Output::Text => {
                outln!(
                    "node {} ({}) grpc={} http={}",
                    s.node_id,
                    s.role,
                    s.grpc_addr,
                    s.http_addr
                );
                outln!(
                    "leader={} term={} last_log={} committed={} applied={} snapshot={} purged={}",
                    opt(s.leader_id),
                    s.term,
                    opt(s.last_log_index),
                    opt(s.commit_index),
                    opt(s.applied_index),
                    opt(s.snapshot_index),
                    opt(s.purged_index)
                );
                outln!("events={} digest={}", s.event_count, s.state_digest);
                outln!("security: {}", security_text(s.security.as_ref()));
                outln!("graphql: {}", graphql_text(s.graphql.as_ref()));
                for m in &s.voters {
                    outln!("  voter   {} {}", m.node_id, m.grpc_addr);
                }
                for m in &s.learners {
                    outln!("  learner {} {}", m.node_id, m.grpc_addr);
                }
                for r in &s.replication {
                    outln!(
                        "  replication to {}: matched={} lag={}",
                        r.node_id,
                        opt(r.matched_index),
                        r.lag
                    );
                }
            }
        }
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn status_json(s: &pb::StatusResponse) -> Value {
    let members = |ms: &[pb::Member]| -> Vec<Value> {
        ms.iter()
            .map(|m| json!({"node_id": m.node_id, "grpc_addr": m.grpc_addr, "http_addr": m.http_addr}))
            .collect()
    };
    json!({
        "node_id": s.node_id,
        "grpc_addr": s.grpc_addr,
        "http_addr": s.http_addr,
        "role": s.role,
        "leader_id": s.leader_id,
        "leader_grpc_addr": s.leader_grpc_addr,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "event_count": s.event_count,
        "state_digest": s.state_digest,
        "voters": members(&s.voters),
        "learners": members(&s.learners),
        "replication": s.replication.iter().map(|r| json!({
            "node_id": r.node_id, "matched_index": r.matched_index, "lag": r.lag
        })).collect::<Vec<_>>(),
        "security": s.security.as_ref().map(|x| json!({
            "auth": x.auth, "tls": x.tls, "dev": x.dev, "insecure": x.insecure,
            "summary": security_text(Some(x)),
        })),
        "graphql": s.graphql.as_ref().map(|g| json!({
            "enabled": g.enabled, "max_cost": g.max_cost, "max_depth": g.max_depth,
            "max_aliases": g.max_aliases, "max_fields": g.max_fields,
            "max_query_bytes": g.max_query_bytes, "max_batch": g.max_batch,
            "max_subscriptions_per_socket": g.max_subscriptions_per_socket,
            "max_subscriptions_per_node": g.max_subscriptions_per_node,
        })),
    })
}

/// One line on the GraphQL API's limits.
pub fn graphql_text(g: Option<&pb::GraphqlLimits>) -> String {
    match g {
        None => "unknown (the node is older than this aetherctl)".to_owned(),
        Some(g) if !g.enabled => "off".to_owned(),
        Some(g) => format!(
            "/graphql, cost ≤ {} per request, depth ≤ {}, aliases ≤ {}, fields ≤ {}, query ≤ {} B, \
             batch ≤ {}, subscriptions ≤ {} per socket and {} per node",
            g.max_cost,
            g.max_depth,
            g.max_aliases,
            g.max_fields,
            g.max_query_bytes,
            g.max_batch,
            g.max_subscriptions_per_socket,
            g.max_subscriptions_per_node
        ),
    }
}

/// One line on how the node protects itself; an unprotected node says so in capitals.
pub fn security_text(s: Option<&pb::Security>) -> String {
    let Some(s) = s else {
        return "unknown (the node is older than this aetherctl)".to_owned();
    };
    let tls = if s.tls { "TLS on" } else { "TLS off" };
    match (s.auth, s.dev, s.insecure) {
        (true, _, _) => format!("tokens checked, {tls}"),
        (false, true, _) => format!("DEV MODE: AUTHENTICATION OFF, loopback only, {tls}"),
        (false, _, true) => format!("INSECURE: AUTHENTICATION OFF on a reachable address, {tls}"),
        (false, false, false) => format!("AUTHENTICATION OFF, loopback only, {tls}"),
    }
}
