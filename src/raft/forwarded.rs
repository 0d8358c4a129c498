//! A follower's batch with its callers' credentials (`raft.v1.ProposeAs`), and the leader's
//! verdict on each command in it.
//!
//! A follower batches the commands of several clients into one `Propose`; with
//! authentication on, the leader must authorize each again as its own caller, so the batch
//! carries each caller's bearer token — once per distinct token (a batch usually has few
//! callers), each command naming its caller by index. A command without a caller is one a
//! node proposes itself (rule adoption, breaker points: [`Command::is_node_own`]) and is
//! taken only as such, from the node-plane identity that sent the batch.
//!
//! Rolling upgrades: this travels on its own RPC, never on `Propose`, because postcard is
//! not self-describing — a leader on older code would read the envelope as a list of
//! commands (garbage, or worse, other commands). A leader that does not know the RPC answers
//! `UNIMPLEMENTED` and the follower sends the batch on `Propose` without credentials, which
//! that leader never checked. The envelope has a version of its own for a later change.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Command, CommandOutcome, Denial};
use crate::auth::{Access, AuthError, Identity, Plane, Reason, Verifier};

/// The envelope version this code writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// A forwarded batch and its callers' credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeAs {
    pub version: u32,
    /// The distinct bearer tokens of the batch's callers (as the clients presented them).
    pub callers: Vec<String>,
    /// Each command with the index of its caller in `callers`; `None`: the node's own.
    pub commands: Vec<(Option<u32>, Command)>,
}

impl ProposeAs {
    /// The envelope of `commands`, `callers[i]` the token of `commands[i]`'s caller.
    pub fn new(commands: Vec<Command>, callers: &[Option<Arc<str>>]) -> ProposeAs {
        debug_assert_eq!(commands.len(), callers.len());
        let mut distinct: Vec<&Arc<str>> = Vec::new();
        let mut tagged = Vec::with_capacity(commands.len());
        for (cmd, caller) in commands.into_iter().zip(callers) {
            let index = caller.as_ref().map(|token| {
                // Few callers per batch: a linear search beats hashing each token.
                match distinct.iter().position(|t| t.as_ref() == token.as_ref()) {
                    Some(i) => i,
                    None => {
                        distinct.push(token);
                        distinct.len() - 1
                    }
                }
            });
            tagged.push((index.map(|i| i as u32), cmd));
        }
        ProposeAs {
            version: ENVELOPE_VERSION,
            callers: distinct.iter().map(|t| t.to_string()).collect(),
            commands: tagged,
        }
    }
}

/// Why a whole forwarded batch is refused (the sender's fault, not one caller's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("forwarded batch envelope version {0}; this node reads version {ENVELOPE_VERSION}")]
    Version(u32),
    #[error("command {command} names caller {index}, but the batch has {callers} callers")]
    NoSuchCaller {
        command: usize,
        index: u32,
        callers: usize,
    },
}

/// Each command of `batch`: to be proposed, or refused with its own outcome. With `verifier`
/// `None` (authentication off here) every command goes ahead, as before credentials were
/// carried. Each distinct credential is verified once, on the client plane.
pub fn authorize(
    verifier: Option<&Verifier>,
    batch: ProposeAs,
) -> Result<Vec<Result<Command, CommandOutcome>>, EnvelopeError> {
    if batch.version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(batch.version));
    }
    for (command, (index, _)) in batch.commands.iter().enumerate() {
        if let Some(index) = *index {
            if index as usize >= batch.callers.len() {
                return Err(EnvelopeError::NoSuchCaller {
                    command,
                    index,
                    callers: batch.callers.len(),
                });
            }
        }
    }
    let Some(verifier) = verifier else {
        return Ok(batch.commands.into_iter().map(|(_, c)| Ok(c)).collect());
    };
    let identities: Vec<Result<Arc<Identity>, AuthError>> = batch
        .callers
        .iter()
        .map(|t| verifier.verify(t, Plane::Client))
        .collect();
    Ok(batch
        .commands
        .into_iter()
        .map(|(index, cmd)| {
            let caller = index.map(|i| &identities[i as usize]);
            match check(caller, &cmd) {
                Ok(()) => Ok(cmd),
                Err(e) => {
                    tracing::debug!("refused a forwarded command: {e}");
                    Err(CommandOutcome::Denied(Denial::from(e)))
                }
            }
        })
        .collect())
}

/// May this caller (`None`: the sending node itself) propose `cmd`?
fn check(
    caller: Option<&Result<Arc<Identity>, AuthError>>,
    cmd: &Command,
) -> Result<(), AuthError> {
    match (caller, cmd.access()) {
        (None, _) if cmd.is_node_own() => Ok(()),
        (None, _) => Err(AuthError::Unauthenticated(Reason::Missing)),
        (Some(Err(e)), _) => Err(e.clone()),
        (Some(Ok(_)), Access::NodeOnly) => Err(AuthError::Forbidden(crate::auth::Denied::Scope {
            resource: "a command only nodes propose".to_owned(),
        })),
        (Some(Ok(id)), Access::Client(method, resources)) => id.authorize(method, &resources),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{
        mint_hs256, Algorithm, KeySource, KeySources, KeySpec, MintRequest, Policy, Resource, Role,
    };
    use crate::eventstore::AppendCommand;
    use crate::limits::{KeyBy, LimitPolicy, Method};
    use crate::model::ExpectedVersion;
    use crate::telemetry::command::{SeriesSegment, TelemetryCommand};
    use crate::telemetry::retention::RetentionPolicy;
    use crate::workflow::store::WorkflowCommand;

    fn append(stream: &str) -> Command {
        Command::Append(AppendCommand {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: Vec::new(),
        })
    }

    fn ingest(series: &[&str]) -> Command {
        Command::Telemetry(TelemetryCommand::Ingest(
            series
                .iter()
                .map(|s| SeriesSegment {
                    series: s.to_string(),
                    segment: Default::default(),
                })
                .collect(),
        ))
    }

    fn retention(prefix: &str) -> Command {
        Command::Telemetry(TelemetryCommand::SetRetention(RetentionPolicy {
            prefix: prefix.into(),
            raw_ms: 1,
            minute_ms: 1,
            hour_ms: 1,
            lateness_ms: 0,
        }))
    }

    fn limit() -> Command {
        Command::SetLimit(LimitPolicy {
            name: "l".into(),
            methods: Vec::new(),
            key: KeyBy::Shared,
            algorithm: crate::limits::Algorithm::TokenBucket {
                burst: 1,
                refill_millis: 1,
            },
            shadow: false,
        })
    }

    /// The one map from commands to what they ask: a case per command kind.
    #[test]
    fn every_command_kind_maps_to_its_action_and_resources() {
        let workflow = Command::Workflow(WorkflowCommand {
            workflow_id: "w1".into(),
            expected: ExpectedVersion::Any,
            events: Vec::new(),
            snapshot_every: 0,
        });
        let adopt = Command::AdoptRules {
            version: 1,
            dedupe_window_ns: 1,
        };
        let cases: Vec<(Command, Access<'static>)> = vec![
            (
                append("orders-1"),
                Access::Client(Method::Append, vec![Resource::Stream("orders-1")]),
            ),
            (
                workflow,
                Access::Client(Method::WorkflowWrite, vec![Resource::Workflow("w1")]),
            ),
            (
                ingest(&["sat-8/b", "sat-7/a", "sat-8/b"]),
                Access::Client(
                    Method::Ingest,
                    vec![Resource::Series("sat-7/a"), Resource::Series("sat-8/b")],
                ),
            ),
            (
                retention("sat-7/"),
                Access::Client(Method::Admin, vec![Resource::SeriesWithPrefix("sat-7/")]),
            ),
            (
                Command::SetDedupeWindow { window_ns: 1 },
                Access::Client(Method::Admin, vec![Resource::Cluster]),
            ),
            (
                limit(),
                Access::Client(Method::Admin, vec![Resource::Cluster]),
            ),
            (
                Command::DeleteLimit { name: "l".into() },
                Access::Client(Method::Admin, vec![Resource::Cluster]),
            ),
            (adopt.clone(), Access::NodeOnly),
        ];
        for (cmd, want) in &cases {
            assert_eq!(&cmd.access(), want, "{cmd:?}");
        }
        // What a node proposes itself, without a caller.
        assert!(adopt.is_node_own());
        assert!(ingest(&["aether/breaker/2", "aether/breaker/3"]).is_node_own());
        assert!(!ingest(&["aether/breaker/2", "sat-7/a"]).is_node_own());
        assert!(!ingest(&[]).is_node_own());
        assert!(!append("aether/breaker/2").is_node_own());
    }

    const SECRET: &[u8] = b"a forwarded-batch test secret of 32+ bytes";

    fn verifier(dir: &std::path::Path) -> Verifier {
        let path = dir.join("k.secret");
        std::fs::write(&path, SECRET).unwrap();
        let policy = Policy {
            issuer: "iss".into(),
            audience: "aud".into(),
            node_audience: "node-aud".into(),
            leeway_secs: 0,
            max_token_bytes: 4096,
            cache_entries: 16,
        };
        let sources = KeySources {
            keys: vec![KeySpec {
                kid: "k".into(),
                algorithms: vec![Algorithm::HS256],
                source: KeySource::HmacSecretFile(path),
                node: None,
                node_plane: false,
            }],
            jwks_file: None,
        };
        Verifier::new(policy, sources).unwrap()
    }

    fn token(role: Role, streams: &[&str], audience: &str) -> Arc<str> {
        let req = MintRequest {
            subject: format!("{role}"),
            roles: vec![role],
            stream_prefixes: streams.iter().map(|s| s.to_string()).collect(),
            series_prefixes: Vec::new(),
            issuer: "iss".into(),
            audience: audience.into(),
            kid: Some("k".into()),
            target: None,
            now_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            ttl_secs: 600,
        };
        Arc::from(mint_hs256(SECRET, &req).unwrap())
    }

    fn verdict(r: &Result<Command, CommandOutcome>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(CommandOutcome::Denied(Denial::Unauthenticated(_))) => "unauthenticated",
            Err(CommandOutcome::Denied(Denial::Forbidden(_))) => "forbidden",
            Err(_) => "other",
        }
    }

    /// Each command of one batch is judged as its own caller: the refused ones get their
    /// own refusal, their neighbours go ahead; each distinct token travels once.
    #[test]
    fn each_forwarded_command_is_authorized_as_its_caller() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path());
        let writer = token(Role::Writer, &["orders-"], "aud");
        let reader = token(Role::Reader, &[], "aud");
        let node_plane = token(Role::Admin, &[], "node-aud");
        let cases: Vec<(&str, Command, Option<Arc<str>>, &str)> = vec![
            (
                "scoped writer, in scope",
                append("orders-1"),
                Some(writer.clone()),
                "ok",
            ),
            (
                "scoped writer, out of scope",
                append("secret-1"),
                Some(writer.clone()),
                "forbidden",
            ),
            (
                "reader appends",
                append("orders-2"),
                Some(reader.clone()),
                "forbidden",
            ),
            (
                "writer sets a limit",
                limit(),
                Some(writer.clone()),
                "forbidden",
            ),
            (
                "a node-plane token as caller",
                append("orders-3"),
                Some(node_plane),
                "unauthenticated",
            ),
            (
                "garbage token",
                append("orders-4"),
                Some(Arc::from("x.y.z")),
                "unauthenticated",
            ),
            (
                "client command without a caller",
                append("orders-5"),
                None,
                "unauthenticated",
            ),
            (
                "breaker points without a caller",
                ingest(&["aether/breaker/2"]),
                None,
                "ok",
            ),
            (
                "rule adoption without a caller",
                Command::AdoptRules {
                    version: 1,
                    dedupe_window_ns: 1,
                },
                None,
                "ok",
            ),
            (
                "rule adoption with a client caller",
                Command::AdoptRules {
                    version: 1,
                    dedupe_window_ns: 1,
                },
                Some(writer.clone()),
                "forbidden",
            ),
            (
                "scoped writer again",
                append("orders-6"),
                Some(writer.clone()),
                "ok",
            ),
        ];
        let (cmds, callers): (Vec<Command>, Vec<Option<Arc<str>>>) =
            cases.iter().map(|c| (c.1.clone(), c.2.clone())).unzip();
        let batch = ProposeAs::new(cmds, &callers);
        assert_eq!(batch.callers.len(), 4, "each distinct token once");
        let verdicts = authorize(Some(&v), batch.clone()).unwrap();
        let mut wrong = Vec::new();
        for ((name, .., want), got) in cases.iter().zip(&verdicts) {
            if verdict(got) != *want {
                wrong.push(format!("{name}: {} (want {want})", verdict(got)));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Authentication off: everything goes ahead, as before credentials were carried.
        assert!(authorize(None, batch).unwrap().iter().all(|r| r.is_ok()));
    }

    #[test]
    fn a_malformed_envelope_is_refused_whole() {
        let mut batch = ProposeAs::new(vec![append("a")], &[Some(Arc::from("t"))]);
        batch.commands[0].0 = Some(1);
        assert!(matches!(
            authorize(None, batch.clone()),
            Err(EnvelopeError::NoSuchCaller { index: 1, .. })
        ));
        batch.commands[0].0 = Some(0);
        batch.version = 2;
        assert_eq!(authorize(None, batch), Err(EnvelopeError::Version(2)));
    }
}
