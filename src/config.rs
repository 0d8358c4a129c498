//! Node configuration: defaults, then an optional TOML file, then `AETHER_*` environment
//! variables and command-line flags (the binary merges those last two through clap).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Limits;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;

/// Bytes an entry adds to its commands' encodings (log id, commit time, window, counts).
pub const ENTRY_OVERHEAD_BYTES: usize = 4 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id; fixed for the life of its data directory.
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where the gRPC server listens (public API, admin, Raft). Port 0 picks a free port.
    pub grpc_addr: String,
    /// Where the HTTP server listens (`/healthz`, `/metrics`).
    pub http_addr: String,
    /// Addresses other nodes and clients use to reach this node; default: the bound ones.
    pub advertise_grpc_addr: Option<String>,
    pub advertise_http_addr: Option<String>,
    /// Single-node development mode: initialize a one-node cluster on first start. Listens
    /// on loopback addresses only (authentication is usually off then).
    pub dev: bool,
    /// Serve on a non-loopback address without authentication, on purpose (refused
    /// otherwise: anyone who reaches the port could write, or remove members).
    pub insecure: bool,
    /// The file this configuration was read from, if any: SIGHUP reads its `[auth]` keys
    /// again. Not a setting.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    /// Async runtime threads; 0 means one per CPU. Nodes sharing a machine (a local
    /// cluster) do better with 1 each: fewer threads contending for the same cores.
    pub worker_threads: usize,
    pub limits: Limits,
    /// How long an event id keeps its idempotency record.
    pub dedupe_window_secs: u64,
    /// How long an append waits for its outcome before reporting it unknown.
    pub write_timeout_ms: u64,
    /// Events buffered per subscriber before the subscriber's reader waits.
    pub subscriber_buffer: usize,
    /// Bytes of events buffered per subscriber before its reader waits (an event larger
    /// than this is buffered alone). A subscription holds at most this plus one read page
    /// (`limits.max_read_bytes`).
    pub subscriber_buffer_bytes: u32,
    /// Subscriptions this node serves at once; more are refused with RESOURCE_EXHAUSTED.
    /// With the buffers above, subscriptions hold at most
    /// `max_subscriptions * (subscriber_buffer_bytes + limits.max_read_bytes)` bytes.
    pub max_subscriptions: usize,
    /// Reads of the store (pages of streams, of the log, of workflow events, subscription
    /// pages) running at once, each on the blocking pool with at most one page
    /// (`limits.max_read_bytes`) in memory; more wait for a slot.
    pub max_concurrent_reads: usize,
    /// A workflow projection snapshot is stored every this many events of a workflow, so a
    /// temporal query replays at most this many events.
    pub workflow_snapshot_every: u64,
    pub raft: RaftSettings,
    pub proposer: ProposerSettings,
    /// Circuit breakers on this node's client-serving calls to its peers.
    pub breakers: BreakerSettings,
    /// Fault injection for tests: shifts this node's wall clock by this much. Keep 0.
    pub clock_offset_ms: i64,
    /// Token verification (`[auth]`): with `enabled`, every client API and the node-to-node
    /// service ask for a bearer token.
    pub auth: AuthSettings,
    /// `[tls]`: TLS on every listener and between nodes; none: plaintext.
    pub tls: Option<TlsSettings>,
    /// `[graphql]`: the limits of the GraphQL API on the HTTP port.
    pub graphql: GraphqlSettings,
}

/// `[graphql]`: what one GraphQL request or WebSocket may ask of the node. A query's cost is
/// computed from its arguments before it runs (`api::graphql::cost`); above `max_cost` it is
/// refused and nothing runs. A batch is costed, and capped, as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlSettings {
    /// Serve `/graphql` (queries, GraphiQL, subscriptions) on the HTTP port.
    pub enabled: bool,
    /// Most cost units one request (a whole batch) may ask for.
    pub max_cost: u64,
    /// Deepest selection (fields within fields).
    pub max_depth: usize,
    /// Most aliased fields in one request.
    pub max_aliases: usize,
    /// Most fields in one request, counted after fragments are expanded.
    pub max_fields: usize,
    /// Longest query text, in bytes.
    pub max_query_bytes: usize,
    /// Longest request body (query, variables, a batch), in bytes.
    pub max_body_bytes: usize,
    /// Most operations in one batched request.
    pub max_batch: usize,
    /// How long a WebSocket may take to send `connection_init`.
    pub ws_init_timeout_ms: u64,
    /// Subscriptions one WebSocket may hold at once.
    pub max_subscriptions_per_socket: usize,
    /// GraphQL subscriptions this node serves at once, over all sockets.
    pub max_subscriptions_per_node: usize,
    /// Messages queued for one subscription before its client counts as too slow (lagging:
    /// told, then closed).
    pub subscription_buffer: usize,
}

impl Default for GraphqlSettings {
    fn default() -> Self {
        GraphqlSettings {
            enabled: true,
            max_cost: 1_000_000,
            max_depth: 10,
            max_aliases: 30,
            max_fields: 300,
            max_query_bytes: 16 << 10,
            max_body_bytes: 1 << 20,
            max_batch: 20,
            ws_init_timeout_ms: 10_000,
            max_subscriptions_per_socket: 32,
            max_subscriptions_per_node: 1024,
            subscription_buffer: 64,
        }
    }
}

impl GraphqlSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_cost", self.max_cost as usize),
            ("max_depth", self.max_depth),
            ("max_aliases", self.max_aliases),
            ("max_fields", self.max_fields),
            ("max_query_bytes", self.max_query_bytes),
            ("max_batch", self.max_batch),
            ("ws_init_timeout_ms", self.ws_init_timeout_ms as usize),
            (
                "max_subscriptions_per_socket",
                self.max_subscriptions_per_socket,
            ),
            (
                "max_subscriptions_per_node",
                self.max_subscriptions_per_node,
            ),
            ("subscription_buffer", self.subscription_buffer),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("graphql.{name} must be > 0")));
        }
        if self.max_body_bytes < self.max_query_bytes {
            return Err(ConfigError::Invalid(
                "graphql.max_body_bytes must be at least graphql.max_query_bytes".into(),
            ));
        }
        Ok(())
    }
}

/// `[tls]`: this node's certificate and key (PEM; the server certificate of every listener
/// and the client certificate it presents to its peers) and the cluster's CA (peers'
/// certificates must chain to it). A node certificate carries the addresses peers and
/// clients dial as subject alternative names (`crate::tls`). Read and checked at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// Serve the HTTP port (`/healthz`, `/metrics`) over TLS too.
    #[serde(default = "default_true")]
    pub http: bool,
}

fn default_true() -> bool {
    true
}

impl TlsSettings {
    /// Reads and checks the files (a message names the setting at fault).
    pub fn load(&self) -> Result<crate::tls::LiveTls, ConfigError> {
        crate::tls::LiveTls::load(&self.cert_file, &self.key_file, &self.ca_file)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so slow followers can still catch up by log.
    pub max_in_snapshot_log_to_keep: u64,
    pub install_snapshot_timeout_ms: u64,
    /// Entries per AppendEntries message at most.
    pub max_payload_entries: u64,
    /// Bytes of entries per AppendEntries message at most; one entry is always sent, so
    /// this must hold the largest entry (`proposer.max_batch_bytes`). A message must reach
    /// the follower within `heartbeat_interval_ms` (openraft's limit for one
    /// AppendEntries), which is what keeps this modest: a follower far behind catches up
    /// in messages of this size.
    pub max_payload_bytes: usize,
    /// How long a leader's commit heartbeat to a follower waits for the next entries, to
    /// carry them instead of going out empty (`raft::carry`); 0 turns it off. Below half of
    /// `heartbeat_interval_ms`.
    pub carry_wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProposerSettings {
    /// Proposals waiting to be batched; beyond it appends get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Commands per Raft entry at most.
    pub max_batch_commands: usize,
    /// Bytes per Raft entry at most (commands as encoded in the log). A command that
    /// encodes larger is refused; the largest append `limits` admit must fit.
    pub max_batch_bytes: usize,
    /// Raft entries proposed but not yet applied at most; while all are in flight, new
    /// proposals gather into the next batch. openraft 0.9 syncs the log entry by entry, so
    /// one big entry beats several small ones: measured best at 1.
    pub max_inflight_batches: usize,
    /// On a follower: batches sent to the leader and not yet answered, at most.
    pub max_forwarding_batches: usize,
}

/// The circuit breaker each node keeps per peer for the calls it makes on behalf of its
/// clients: batches forwarded to the leader and read barriers (`raft::breakers`). Tuned to
/// notice a leader that stopped answering (SIGSTOP, a hung host) within about a second:
/// a call unanswered after `slow_call_ms` counts as failed then, and `minimum_calls` such
/// calls out of the last `window_calls` at `failure_rate_pct` open it; while open, calls
/// fail at once with `UNAVAILABLE` and the leader's address; after `reset_timeout_ms`,
/// `probe_count` calls go out as probes and `success_threshold` of them must pass to close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Outcomes the failure rate is taken over (the last this many calls).
    pub window_calls: u32,
    /// Calls the window needs before it may open the breaker.
    pub minimum_calls: u32,
    /// Opens when at least this share of the window's calls failed (1..=100).
    pub failure_rate_pct: u8,
    /// A call still unanswered after this long counts as failed (at that moment; it still
    /// runs to its deadline). Twice the default shortest election timeout: a leader that
    /// cannot answer within it is as good as gone, and a healthy one under load is faster.
    pub slow_call_ms: u64,
    /// Open → half-open after this long.
    pub reset_timeout_ms: u64,
    /// Probes let through when half-open.
    pub probe_count: u32,
    /// Probes that must succeed for the breaker to close (1..=probe_count).
    pub success_threshold: u32,
    /// Transitions kept for the telemetry series `aether/breaker/<peer>` while they cannot
    /// be written (no leader reachable); beyond it the oldest are dropped and counted.
    pub max_pending_points: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window_calls: 10,
            minimum_calls: 3,
            failure_rate_pct: 50,
            slow_call_ms: 1000,
            reset_timeout_ms: 1000,
            probe_count: 2,
            success_threshold: 2,
            max_pending_points: 4096,
        }
    }
}

impl BreakerSettings {
    /// Most transition points kept while they cannot be written.
    pub const MAX_PENDING_POINTS: usize = 1 << 20;

    /// The pure core's policy. Slowness is judged by the node (an unanswered call counts as
    /// failed at `slow_call_ms`), so the core's slow-call rate only ever sees those calls.
    pub fn policy(&self) -> crate::guard::BreakerPolicy {
        let ms = 1_000_000u64;
        crate::guard::BreakerPolicy {
            failure_rate_pct: self.failure_rate_pct,
            slow_call_rate_pct: 100,
            slow_call_threshold_ns: self.slow_call_ms.saturating_mul(ms).max(1),
            window_calls: self.window_calls,
            minimum_calls: self.minimum_calls,
            reset_timeout_ns: self.reset_timeout_ms.saturating_mul(ms),
            probe_count: self.probe_count,
            success_threshold: self.success_threshold,
        }
    }

    fn validate(&self, write_timeout_ms: u64) -> Result<(), ConfigError> {
        self.policy()
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("breakers: {e}")))?;
        if self.slow_call_ms == 0 || self.slow_call_ms >= write_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "breakers.slow_call_ms ({}) must be > 0 and below write_timeout_ms \
                 ({write_timeout_ms}): a call is judged slow before its deadline",
                self.slow_call_ms
            )));
        }
        if !(1..=Self::MAX_PENDING_POINTS).contains(&self.max_pending_points) {
            return Err(ConfigError::Invalid(format!(
                "breakers.max_pending_points must be between 1 and {}",
                Self::MAX_PENDING_POINTS
            )));
        }
        Ok(())
    }
}

/// Whether a listen address (`HOST:PORT`) is on loopback only: 127.0.0.0/8, ::1 or
/// `localhost`. Anything else (0.0.0.0 included) can be reached from elsewhere.
fn is_loopback(addr: &str) -> bool {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

/// `[auth]`: how bearer tokens are verified (`crate::auth`). With `enabled`, the settings and
/// every key are checked at start (a bad key refuses to start), and every API asks for a
/// token; off, the node must listen on loopback only (or be started `--insecure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub enabled: bool,
    /// `iss` every token must carry, exactly.
    pub issuer: String,
    /// `aud` of tokens for the client APIs.
    pub audience: String,
    /// `aud` of node-to-node tokens; must differ from `audience`.
    pub node_audience: String,
    /// Clock difference tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Longer tokens are refused before any decoding.
    pub max_token_bytes: usize,
    /// Verified tokens remembered until they expire (0: verify every time).
    pub cache_entries: usize,
    /// Keys by `kid`, each with its allowed algorithms and a PEM public key or an HMAC
    /// secret file.
    pub keys: Vec<AuthKeySettings>,
    /// A JWKS file of public keys (each with `kid` and `alg`), besides `keys`.
    pub jwks_file: Option<PathBuf>,
    /// The `kid` this node signs its node-plane tokens with (required when enabled): the
    /// key set must hold its verifying key under this `kid`, which is checked at start by
    /// signing and verifying one token.
    pub node_key_kid: String,
    /// The signing key: an HMAC secret file (as `hmac_secret_file`) for HS256, or a PKCS#8
    /// PEM private key for EdDSA, ES256 or RS256.
    pub node_key_file: Option<PathBuf>,
    /// The algorithm to sign with; by default the first of the `[[auth.keys]]` entry with
    /// `node_key_kid` (required when that key comes from the JWKS file).
    pub node_key_algorithm: Option<String>,
    /// Lifetime of a node-plane token; a node signs a new one after half of it.
    pub node_token_ttl_secs: u64,
    /// gRPC health checking answers without a token (load balancers and probes).
    pub open_health: bool,
    /// gRPC reflection answers without a token (it lists the services and their messages).
    pub open_reflection: bool,
    /// HTTP `/metrics` answers without a token; otherwise it needs a client token (a
    /// reader's will do), sent as Prometheus's `bearer_token_file` does.
    pub open_metrics: bool,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthKeySettings {
    pub kid: String,
    /// E.g. `["RS256"]`, `["ES256"]`, `["EdDSA"]`, `["HS256"]`: one family per key.
    pub algorithms: Vec<String>,
    /// A PEM public key, for RS*/PS*/ES*/EdDSA.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// A file holding an HMAC secret of at least 32 bytes, for HS* (development).
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// The node this key belongs to: it then verifies only that node's node-plane tokens
    /// (production: each node its own key pair, every node's public key in every key set).
    #[serde(default)]
    pub node_id: Option<u64>,
    /// A key not bound to a node also verifies node-plane tokens (any holder can then speak
    /// for any node: a development cluster's one shared secret). Off by default: a client
    /// issuer's key never admits a node.
    #[serde(default)]
    pub node_plane: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: false,
            issuer: String::new(),
            audience: String::new(),
            node_audience: String::new(),
            leeway_secs: crate::auth::DEFAULT_LEEWAY_SECS,
            max_token_bytes: crate::auth::DEFAULT_MAX_TOKEN_BYTES,
            cache_entries: crate::auth::DEFAULT_CACHE_ENTRIES,
            keys: Vec::new(),
            jwks_file: None,
            node_key_kid: String::new(),
            node_key_file: None,
            node_key_algorithm: None,
            node_token_ttl_secs: 300,
            open_health: true,
            open_reflection: false,
            open_metrics: false,
        }
    }
}

impl AuthSettings {
    /// Most leeway accepted: more would make `exp` meaningless.
    pub const MAX_LEEWAY_SECS: u64 = 300;
    /// Range of `max_token_bytes`.
    pub const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=(64 << 10);
    pub const MAX_CACHE_ENTRIES: usize = 1 << 20;
    /// Range of `node_token_ttl_secs`: long enough that renewal (at half life) is rare,
    /// short enough that a token taken from a node stops working soon.
    pub const NODE_TOKEN_TTL_SECS: std::ops::RangeInclusive<u64> = 60..=3600;

    /// The algorithm node tokens are signed with.
    fn node_key_algorithm(&self) -> Result<crate::auth::Algorithm, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let name = match &self.node_key_algorithm {
            Some(a) => a.clone(),
            None => self
                .keys
                .iter()
                .find(|k| k.kid == self.node_key_kid)
                .and_then(|k| k.algorithms.first().cloned())
                .ok_or_else(|| {
                    bad(format!(
                        "auth.node_key_algorithm: no [[auth.keys]] entry has kid {:?}; set the \
                         algorithm to sign node tokens with",
                        self.node_key_kid
                    ))
                })?,
        };
        name.parse().map_err(|_| {
            bad(format!(
                "auth.node_key_algorithm: unknown algorithm {name:?} (EdDSA, ES256, RS256, HS256)"
            ))
        })
    }

    /// This node's node-plane tokens, checked against `verifier`: one token is signed and
    /// verified on the node plane, so a signing key whose verifying key is not in the key
    /// set (or under another `kid`, or for another algorithm) refuses to start.
    pub fn node_tokens(
        &self,
        node_id: u64,
        verifier: &crate::auth::Verifier,
    ) -> Result<crate::auth::NodeTokens, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let path = self
            .node_key_file
            .as_ref()
            .ok_or_else(|| bad("auth.node_key_file must be set when auth is enabled".into()))?;
        if self.node_key_kid.is_empty() {
            return Err(bad(
                "auth.node_key_kid must be set when auth is enabled".into()
            ));
        }
        let key = crate::auth::SigningKey::from_file(
            path,
            self.node_key_algorithm()?,
            Some(self.node_key_kid.clone()),
        )
        .map_err(|e| bad(format!("auth.node_key_file ({}): {e}", path.display())))?;
        let tokens = crate::auth::NodeTokens::new(
            key,
            self.issuer.clone(),
            self.node_audience.clone(),
            node_id,
            self.node_token_ttl_secs,
        )
        .map_err(|e| bad(format!("auth.node_key_file: cannot sign a node token: {e}")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let token = tokens
            .token_at(now, None)
            .map_err(|e| bad(format!("auth.node_key_file: cannot sign a node token: {e}")))?;
        verifier
            .verify(&token, crate::auth::Plane::Node)
            .map_err(|e| {
                bad(format!(
                    "auth.node_key_kid {:?}: a node token signed with auth.node_key_file does \
                     not verify with the configured keys ({e}): the key set must hold the \
                     matching verifying key under that kid",
                    self.node_key_kid
                ))
            })?;
        Ok(tokens)
    }

    /// What tokens must say.
    pub fn policy(&self) -> crate::auth::Policy {
        crate::auth::Policy {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            node_audience: self.node_audience.clone(),
            leeway_secs: self.leeway_secs,
            max_token_bytes: self.max_token_bytes,
            cache_entries: self.cache_entries,
        }
    }

    /// The key sources, each key checked on its own (no file is read).
    pub fn key_sources(&self) -> Result<crate::auth::KeySources, ConfigError> {
        use crate::auth::{Algorithm, KeySource, KeySpec};
        let mut keys = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let field = |what: &str| ConfigError::Invalid(format!("auth.keys[{i}].{what}"));
            let algorithms = k
                .algorithms
                .iter()
                .map(|a| {
                    a.parse::<Algorithm>().map_err(|_| {
                        field(&format!(
                            "algorithms: unknown algorithm {a:?} (RS256, ES256, EdDSA, HS256, …)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let source = match (&k.pem_file, &k.hmac_secret_file) {
                (Some(p), None) => KeySource::PemFile(p.clone()),
                (None, Some(p)) => KeySource::HmacSecretFile(p.clone()),
                _ => return Err(field("pem_file / hmac_secret_file: set exactly one")),
            };
            let spec = KeySpec {
                kid: k.kid.clone(),
                algorithms,
                source,
                node: k.node_id,
                node_plane: k.node_plane,
            };
            crate::auth::keys::check_spec(&spec).map_err(|e| self.key_error(e))?;
            keys.push(spec);
        }
        Ok(crate::auth::KeySources {
            keys,
            jwks_file: self.jwks_file.clone(),
        })
    }

    /// Builds the verifier: reads and checks every key.
    pub fn verifier(&self) -> Result<crate::auth::Verifier, ConfigError> {
        crate::auth::Verifier::new(self.policy(), self.key_sources()?)
            .map_err(|e| self.key_error(e))
    }

    /// A key error, naming the setting it comes from.
    fn key_error(&self, e: crate::auth::KeyError) -> ConfigError {
        use crate::auth::KeyError;
        let at = match &e {
            KeyError::Key { kid, .. } | KeyError::DuplicateKid(kid) => {
                match self.keys.iter().position(|k| &k.kid == kid) {
                    Some(i) => format!("auth.keys[{i}]"),
                    None => "auth.jwks_file".to_owned(),
                }
            }
            KeyError::Jwks { .. } => "auth.jwks_file".to_owned(),
            KeyError::Read { .. } | KeyError::FileTooLarge { .. } => "auth key file".to_owned(),
            KeyError::NoKeys | KeyError::TooManyKeys(_) => "auth.keys".to_owned(),
        };
        ConfigError::Invalid(format!("{at}: {e}"))
    }

    fn validate(&self, node_id: u64) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // The shape is checked whether or not auth is enabled, so a mistake shows before
        // it is switched on.
        self.key_sources()?;
        if self.leeway_secs > Self::MAX_LEEWAY_SECS {
            return bad(format!(
                "auth.leeway_secs ({}) must be at most {}",
                self.leeway_secs,
                Self::MAX_LEEWAY_SECS
            ));
        }
        if !Self::TOKEN_BYTES_RANGE.contains(&self.max_token_bytes) {
            return bad(format!(
                "auth.max_token_bytes ({}) must be within {:?}",
                self.max_token_bytes,
                Self::TOKEN_BYTES_RANGE
            ));
        }
        if self.cache_entries > Self::MAX_CACHE_ENTRIES {
            return bad(format!(
                "auth.cache_entries ({}) must be at most {}",
                self.cache_entries,
                Self::MAX_CACHE_ENTRIES
            ));
        }
        if !Self::NODE_TOKEN_TTL_SECS.contains(&self.node_token_ttl_secs) {
            return bad(format!(
                "auth.node_token_ttl_secs ({}) must be within {:?}",
                self.node_token_ttl_secs,
                Self::NODE_TOKEN_TTL_SECS
            ));
        }
        if !self.enabled {
            return Ok(());
        }
        for (name, value) in [
            ("issuer", &self.issuer),
            ("audience", &self.audience),
            ("node_audience", &self.node_audience),
        ] {
            if value.is_empty() {
                return bad(format!("auth.{name} must be set when auth is enabled"));
            }
        }
        if self.node_audience == self.audience {
            return bad(
                "auth.node_audience must differ from auth.audience: a client token must not \
                 pass on the node plane"
                    .to_owned(),
            );
        }
        let verifier = self.verifier()?;
        self.node_tokens(node_id, &verifier).map(drop)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            grpc_addr: "127.0.0.1:50051".into(),
            http_addr: "127.0.0.1:8080".into(),
            advertise_grpc_addr: None,
            advertise_http_addr: None,
            dev: false,
            insecure: false,
            source_file: None,
            worker_threads: 0,
            limits: Limits::default(),
            dedupe_window_secs: 24 * 3600,
            write_timeout_ms: 10_000,
            subscriber_buffer: 256,
            subscriber_buffer_bytes: 2 << 20,
            max_subscriptions: 512,
            max_concurrent_reads: 16,
            workflow_snapshot_every: 64,
            raft: RaftSettings::default(),
            proposer: ProposerSettings::default(),
            breakers: BreakerSettings::default(),
            clock_offset_ms: 0,
            auth: AuthSettings::default(),
            tls: None,
            graphql: GraphqlSettings::default(),
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 50_000,
            max_in_snapshot_log_to_keep: 10_000,
            install_snapshot_timeout_ms: 30_000,
            max_payload_entries: 512,
            max_payload_bytes: 16 << 20,
            carry_wait_ms: 2,
        }
    }
}

impl Default for ProposerSettings {
    fn default() -> Self {
        ProposerSettings {
            queue_capacity: 8192,
            max_batch_commands: 256,
            max_batch_bytes: 8 << 20,
            max_inflight_batches: 1,
            max_forwarding_batches: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The first listen address others can reach (not loopback), if any.
    pub fn exposed_addr(&self) -> Option<&str> {
        [&self.grpc_addr, &self.http_addr]
            .into_iter()
            .find(|a| !is_loopback(a))
            .map(String::as_str)
    }

    /// Where a node without authentication may listen: `--dev` on loopback only; any other
    /// node on loopback, or anywhere with `insecure` said explicitly.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        let Some(first) = self.exposed_addr() else {
            return Ok(());
        };
        if self.dev {
            return Err(ConfigError::Invalid(format!(
                "dev mode listens on loopback addresses only, not {first}: drop --dev for a \
                 node others can reach"
            )));
        }
        if !self.auth.enabled && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "{first} is not a loopback address and [auth] is not enabled: anyone who \
                 reaches it could write or change membership; configure [auth] (and [tls]), \
                 or pass --insecure to serve it unprotected on purpose"
            )));
        }
        Ok(())
    }

    /// Rejects settings that cannot work, with a message that names them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.node_id == 0 {
            return bad("node_id must be at least 1");
        }
        self.check_exposure()?;
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return bad(
                "raft.election_timeout_min_ms must exceed raft.heartbeat_interval_ms (> 0)",
            );
        }
        if r.carry_wait_ms.saturating_mul(2) >= r.heartbeat_interval_ms {
            return bad("raft.carry_wait_ms must be below half of raft.heartbeat_interval_ms");
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad("raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms");
        }
        // Rate-limit leases: a leader grants only within 0.5 s of a quorum confirming it, and
        // openraft's followers campaign no sooner than election_timeout_max + a random
        // election timeout after the last heartbeat (≥ 2 × min): with min ≥ 250 ms a new
        // leader is never elected while the deposed one may still grant.
        if r.election_timeout_min_ms < 250 {
            return bad(
                "raft.election_timeout_min_ms must be at least 250 (rate-limit leases rely on \
                 it; see ARCHITECTURE.md, rate limits)",
            );
        }
        let p = &self.proposer;
        if p.queue_capacity == 0
            || p.max_batch_commands == 0
            || p.max_inflight_batches == 0
            || p.max_forwarding_batches == 0
        {
            return bad("proposer.queue_capacity, max_batch_commands, max_inflight_batches and max_forwarding_batches must be > 0");
        }
        if self.subscriber_buffer == 0
            || self.subscriber_buffer_bytes == 0
            || self.max_subscriptions == 0
            || self.max_concurrent_reads == 0
        {
            return bad("subscriber_buffer, subscriber_buffer_bytes, max_subscriptions and max_concurrent_reads must be > 0");
        }
        let l = &self.limits;
        if l.max_event_bytes == 0 || l.max_request_bytes < l.max_event_bytes {
            return bad("limits.max_request_bytes must be at least limits.max_event_bytes (> 0)");
        }
        if l.max_events_per_append == 0 || l.max_read_limit == 0 || l.max_read_bytes == 0 {
            return bad("limits.max_events_per_append, limits.max_read_limit and limits.max_read_bytes must be > 0");
        }
        self.validate_entry_sizes()?;
        if self.workflow_snapshot_every == 0 {
            return bad("workflow_snapshot_every must be > 0");
        }
        if self.dedupe_window_secs == 0 {
            return bad("dedupe_window_secs must be > 0");
        }
        self.breakers.validate(self.write_timeout_ms)?;
        self.auth.validate(self.node_id)?;
        self.graphql.validate()?;
        if let Some(tls) = &self.tls {
            tls.load()?;
        }
        Ok(())
    }

    /// Any entry must be shippable to a follower: the largest append the limits admit fits
    /// one entry, an entry fits one AppendEntries message, and a message fits what the
    /// transport accepts. Otherwise a follower that fell behind could be sent a message it
    /// can never take, again and again.
    fn validate_entry_sizes(&self) -> Result<(), ConfigError> {
        let append = self.limits.max_append_encoded_bytes();
        let batch = self.proposer.max_batch_bytes;
        let payload = self.raft.max_payload_bytes;
        if append > batch {
            return Err(ConfigError::Invalid(format!(
                "proposer.max_batch_bytes ({batch}) must hold the largest append the limits \
                 admit ({append} bytes encoded, from limits.max_request_bytes, \
                 max_events_per_append, max_metadata_entries and max_stream_name_bytes)"
            )));
        }
        if batch.saturating_add(ENTRY_OVERHEAD_BYTES) > payload {
            return Err(ConfigError::Invalid(format!(
                "raft.max_payload_bytes ({payload}) must hold one entry: \
                 proposer.max_batch_bytes ({batch}) + {ENTRY_OVERHEAD_BYTES}"
            )));
        }
        if payload.saturating_add(ENTRY_OVERHEAD_BYTES) > MAX_RAFT_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "raft.max_payload_bytes ({payload}) must stay below the transport's message \
                 limit ({MAX_RAFT_MESSAGE_BYTES} bytes) by {ENTRY_OVERHEAD_BYTES}"
            )));
        }
        if self.raft.max_payload_entries == 0 {
            return Err(ConfigError::Invalid(
                "raft.max_payload_entries must be > 0".into(),
            ));
        }
        Ok(())
    }

    pub fn openraft_config(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "aetherops".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            max_payload_entries: r.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
            max_in_snapshot_log_to_keep: r.max_in_snapshot_log_to_keep,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            "node_id = 3\ngrpc_addr = \"127.0.0.1:7000\"\n[limits]\nmax_event_bytes = 2048\n",
        )
        .unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.grpc_addr, "127.0.0.1:7000");
        assert_eq!(c.limits.max_event_bytes, 2048);
        assert_eq!(c.http_addr, Config::default().http_addr);
        std::fs::write(&p, "nodeid = 3\n").unwrap();
        assert!(matches!(
            Config::from_file(&p),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.raft.election_timeout_min_ms = 50;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("election_timeout_min_ms"), "{e}");
        c.raft.election_timeout_min_ms = 200;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least 250"), "{e}");
        // A heartbeat waits for entries to carry well within its interval, or not at all.
        let mut c = Config::default();
        c.raft.carry_wait_ms = c.raft.heartbeat_interval_ms / 2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("carry_wait_ms"), "{e}");
        c.raft.carry_wait_ms = 0;
        assert!(c.validate().is_ok());
    }

    /// Breaker settings the core or the node cannot work with are refused, naming them.
    #[test]
    fn breaker_settings_are_validated() {
        type Case = (fn(&mut Config), Option<&'static str>);
        let cases: &[Case] = &[
            (|_| {}, None),
            (|c| c.breakers.minimum_calls = 11, Some("minimum_calls")),
            (
                |c| c.breakers.failure_rate_pct = 0,
                Some("failure_rate_pct"),
            ),
            (|c| c.breakers.reset_timeout_ms = 0, Some("reset_timeout")),
            (
                |c| c.breakers.success_threshold = 3,
                Some("success_threshold"),
            ),
            (|c| c.breakers.probe_count = 0, Some("probe_count")),
            (|c| c.breakers.slow_call_ms = 0, Some("slow_call_ms")),
            (|c| c.breakers.slow_call_ms = 10_000, Some("slow_call_ms")),
            (
                |c| c.breakers.max_pending_points = 0,
                Some("max_pending_points"),
            ),
        ];
        for (i, (change, refused)) in cases.iter().enumerate() {
            let mut c = Config::default();
            change(&mut c);
            match (c.validate(), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(word)) => assert!(e.to_string().contains(word), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, wanted a refusal naming {want:?}"),
            }
        }
    }

    /// `[auth]`: what must refuse to start (a short HMAC secret, one key allowed for HS256
    /// and RS256, …) is refused naming the setting; a development setup passes.
    #[test]
    fn auth_settings_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p.display().to_string()
        };
        let (good, short) = (
            file("dev.secret", &[b'k'; 40]),
            file("short.secret", b"tooshort1"),
        );
        let pem = file(
            "k.pem",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        );
        let other = file("other.secret", &[b'o'; 40]);
        let short_node = file("short-node.secret", &[b'n'; 20]);
        let base = "[auth]\nenabled = true\nissuer = \"aetherops-dev\"\naudience = \"aetherops\"\n\
                    node_audience = \"aetherops-node\"\n";
        let node_key =
            |kid: &str, path: &str| format!("node_key_kid = {kid:?}\nnode_key_file = {path:?}\n");
        let head = format!("{base}{}", node_key("dev", &good));
        let key = |algs: &str, field: &str, path: &str| {
            format!("[[auth.keys]]\nkid = \"dev\"\nalgorithms = [{algs}]\n{field} = {path:?}\n")
        };
        let hs = |path: &str| key("\"HS256\"", "hmac_secret_file", path);
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            (
                "development key",
                format!("{head}{}node_plane = true\n", hs(&good)),
                None,
            ),
            ("no [auth] at all", String::new(), None),
            (
                "HMAC secret under 32 bytes",
                format!("{head}{}", hs(&short)),
                Some("auth.keys[0]: key \"dev\": HMAC secret of 9 bytes"),
            ),
            (
                "one key for HS256 and RS256",
                format!("{head}{}", key("\"HS256\", \"RS256\"", "pem_file", &pem)),
                Some("auth.keys[0]: key \"dev\": allowed for algorithms of different families"),
            ),
            (
                "HS256 and RS256, auth disabled",
                format!("[auth]\n{}", key("\"HS256\", \"RS256\"", "pem_file", &pem)),
                Some("different families"),
            ),
            (
                "unknown algorithm",
                format!("{head}{}", key("\"HS257\"", "hmac_secret_file", &good)),
                Some("auth.keys[0].algorithms"),
            ),
            (
                "pem_file and hmac_secret_file",
                format!("{head}{}pem_file = {pem:?}\n", hs(&good)),
                Some("set exactly one"),
            ),
            (
                "a PEM that is no key",
                format!("{head}{}", key("\"RS256\"", "pem_file", &pem)),
                Some("auth.keys[0]: key \"dev\": not a usable RSA public key"),
            ),
            ("no keys", head.clone(), Some("auth.keys")),
            (
                "no node signing key",
                format!("{base}{}", hs(&good)),
                Some("auth.node_key_file must be set"),
            ),
            (
                "a node key whose kid is not in the key set",
                format!("{base}{}{}", node_key("elsewhere", &good), hs(&good)),
                Some("auth.node_key_algorithm"),
            ),
            (
                "a node key that does not match the key set's key",
                format!("{base}{}{}", node_key("dev", &other), hs(&good)),
                Some("does not verify with the configured keys"),
            ),
            (
                "a node HMAC secret under 32 bytes",
                format!("{base}{}{}", node_key("dev", &short_node), hs(&good)),
                Some("HMAC secret of 20 bytes"),
            ),
            (
                "this node signs with a key bound to node 5",
                format!("{head}{}node_id = 5\n", hs(&good)),
                Some("names another node than the one its key belongs to"),
            ),
            (
                "this node (1) signs with its own bound key",
                format!("{head}{}node_id = 1\n", hs(&good)),
                None,
            ),
            (
                "node tokens living 10 s",
                format!("{head}node_token_ttl_secs = 10\n{}", hs(&good)),
                Some("auth.node_token_ttl_secs"),
            ),
            (
                "same audience on both planes",
                format!(
                    "{}{}",
                    head.replace("aetherops-node", "aetherops"),
                    hs(&good)
                ),
                Some("auth.node_audience"),
            ),
            (
                "no issuer",
                format!("{}{}", head.replace("aetherops-dev", ""), hs(&good)),
                Some("auth.issuer"),
            ),
            (
                "leeway of 10 minutes",
                format!("{head}leeway_secs = 600\n{}", hs(&good)),
                Some("auth.leeway_secs"),
            ),
            (
                "max token of 1 MiB",
                format!("{head}max_token_bytes = 1048576\n{}", hs(&good)),
                Some("auth.max_token_bytes"),
            ),
        ];
        let path = dir.path().join("node.toml");
        for (name, text, refused) in cases {
            std::fs::write(&path, &text).unwrap();
            let c = Config::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            match (c.validate(), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(words)) => {
                    assert!(e.to_string().contains(words), "{name}: {e}")
                }
                (got, want) => panic!("{name}: got {got:?}, wanted a refusal naming {want:?}"),
            }
        }
    }

    /// Node tokens signed with a PKCS#8 private key (EdDSA, ES256) start when the key set
    /// holds the matching public key under `node_key_kid`, and are refused otherwise.
    #[test]
    fn node_keys_from_private_pems_must_match_the_key_set() {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
        use p256::pkcs8::LineEnding;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let ed_private = file("ed.pem", &ed.to_pkcs8_pem(LineEnding::LF).unwrap());
        let ed_public = file(
            "ed.pub.pem",
            &ed.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        );
        let ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let ec_private = file("ec.pem", &ec.to_pkcs8_pem(LineEnding::LF).unwrap());
        let ec_public = file(
            "ec.pub.pem",
            &ec.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
        );
        let conf = |node_key: &str, alg: &str, public: &str| {
            format!(
                "[auth]\nenabled = true\nissuer = \"i\"\naudience = \"a\"\n\
                 node_audience = \"n\"\nnode_key_kid = \"node\"\nnode_key_file = {node_key:?}\n\
                 [[auth.keys]]\nkid = \"node\"\nalgorithms = [{alg:?}]\npem_file = {public:?}\n\
                 node_plane = true\n"
            )
        };
        let cases = [
            ("EdDSA pair", conf(&ed_private, "EdDSA", &ed_public), None),
            ("ES256 pair", conf(&ec_private, "ES256", &ec_public), None),
            (
                "EdDSA private key, ES256 public key under its kid",
                conf(&ed_private, "ES256", &ec_public),
                Some("auth.node_key_file"),
            ),
            (
                // A key bound to no node, without node_plane, admits no node: not even this
                // node's own token.
                "EdDSA pair, key not for the node plane",
                conf(&ed_private, "EdDSA", &ed_public).replace("node_plane = true\n", ""),
                Some("does not sign node-plane tokens"),
            ),
            (
                "ES256 private key, another EdDSA public key",
                conf(&ec_private, "EdDSA", &ed_public),
                Some("auth.node_key_file"),
            ),
        ];
        let path = dir.path().join("node.toml");
        for (name, text, refused) in cases {
            std::fs::write(&path, &text).unwrap();
            let c = Config::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            match (c.validate(), refused) {
                (Ok(()), None) => {
                    let verifier = c.auth.verifier().unwrap();
                    let tokens = c.auth.node_tokens(7, &verifier).unwrap();
                    let bearer = tokens.bearer(1);
                    let token = bearer.strip_prefix("Bearer ").unwrap();
                    let id = verifier.verify(token, crate::auth::Plane::Node).unwrap();
                    assert_eq!(id.subject, "node-7", "{name}");
                }
                (Err(e), Some(words)) => assert!(e.to_string().contains(words), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, wanted a refusal naming {want:?}"),
            }
        }
    }

    /// The README's ```toml block that starts with `table`.
    fn readme_toml(table: &str) -> String {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        readme
            .split("```toml\n")
            .filter_map(|b| b.split("```").next())
            .find(|b| b.starts_with(table))
            .unwrap_or_else(|| panic!("README has a {table} example"))
            .to_owned()
    }

    /// The README's `[auth]` example is a configuration that starts.
    #[test]
    fn the_readme_auth_example_validates() {
        let block = readme_toml("[auth]");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("dev.secret");
        std::fs::write(&secret, "a development secret of 32 bytes or more\n").unwrap();
        let text = block.replace(
            "\"dev.secret\"",
            &format!("{:?}", secret.display().to_string()),
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        let c = Config::from_file(&path).unwrap();
        assert!(c.auth.enabled);
        c.validate().unwrap();
    }

    /// The README's `[tls]` example is a configuration that starts (with certificates made
    /// here); `http` defaults to true; unknown or missing keys are refused when parsed.
    #[test]
    fn the_readme_tls_example_validates() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let block = readme_toml("[tls]");
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        std::fs::write(certs.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let node = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(certs.join("node1.pem"), node.pem()).unwrap();
        std::fs::write(certs.join("node1.key"), key.serialize_pem()).unwrap();
        let text = block.replace("\"certs/", &format!("\"{}/", certs.display()));
        let path = dir.path().join("node.toml");
        std::fs::write(&path, &text).unwrap();
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        let tls = c.tls.expect("[tls] read");
        assert!(tls.http);

        let without_http: String = text
            .lines()
            .filter(|l| !l.starts_with("http"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, &without_http).unwrap();
        assert!(
            Config::from_file(&path).unwrap().tls.unwrap().http,
            "http defaults to true"
        );
        for bad in [
            format!("{without_http}\nverify = false\n"),
            without_http
                .lines()
                .filter(|l| !l.starts_with("ca_file"))
                .collect::<Vec<_>>()
                .join("\n"),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(Config::from_file(&path), Err(ConfigError::Parse { .. })),
                "{bad}"
            );
        }
    }

    /// Each broken link of "append ≤ entry ≤ message ≤ transport" is refused at startup,
    /// naming the settings to change; raising them together is fine.
    #[test]
    fn every_entry_must_be_shippable_to_a_follower() {
        // (case, change to the defaults, a word the refusal names or None if accepted)
        type Case = (&'static str, fn(&mut Config), Option<&'static str>);
        let cases: &[Case] = &[
            ("defaults", |_| {}, None),
            (
                "append over batch",
                |c| c.limits.max_request_bytes = 16 << 20,
                Some("proposer.max_batch_bytes"),
            ),
            (
                "append over batch by its overhead",
                |c| c.limits.max_request_bytes = c.proposer.max_batch_bytes,
                Some("proposer.max_batch_bytes"),
            ),
            (
                "batch over message",
                |c| c.proposer.max_batch_bytes = 32 << 20,
                Some("raft.max_payload_bytes"),
            ),
            (
                "message over transport",
                |c| {
                    c.proposer.max_batch_bytes = 64 << 20;
                    c.raft.max_payload_bytes = MAX_RAFT_MESSAGE_BYTES;
                },
                Some("transport"),
            ),
            (
                "all raised together",
                |c| {
                    c.limits.max_event_bytes = 8 << 20;
                    c.limits.max_request_bytes = 32 << 20;
                    c.proposer.max_batch_bytes = 40 << 20;
                    c.raft.max_payload_bytes = 64 << 20;
                },
                None,
            ),
        ];
        for (name, change, refused) in cases {
            let mut c = Config::default();
            change(&mut c);
            match (c.validate(), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(word)) => {
                    assert!(e.to_string().contains(word), "{name}: {e}")
                }
                (got, want) => panic!("{name}: got {got:?}, wanted a refusal naming {want:?}"),
            }
        }
    }

    /// The bound the validation uses holds for the largest append the limits admit: the
    /// most events, each with the most metadata, the longest stream name, ids and times
    /// at their widest encodings.
    #[test]
    fn the_largest_admitted_append_encodes_within_the_bound() {
        use crate::eventstore::AppendCommand;
        use crate::model::{ExpectedVersion, NewEvent};
        let l = Limits {
            max_events_per_append: 50,
            max_request_bytes: 1 << 20,
            ..Limits::default()
        };
        let events: Vec<NewEvent> = (0..l.max_events_per_append)
            .map(|i| {
                let metadata = (0..l.max_metadata_entries)
                    .map(|k| (format!("{i:03}-{k:03}"), String::new()))
                    .collect();
                NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: "T".repeat(l.max_event_type_bytes),
                    schema_version: u32::MAX,
                    event_time_ns: i64::MIN,
                    payload: bytes::Bytes::new(),
                    metadata,
                }
            })
            .collect();
        let used: usize = events.iter().map(NewEvent::weight_bytes).sum();
        let mut events = events;
        events[0].payload = vec![0u8; l.max_request_bytes - used].into();
        let stream = "s".repeat(l.max_stream_name_bytes);
        l.validate_append(&stream, &events).unwrap();
        let cmd = crate::raft::Command::Append(AppendCommand {
            stream,
            expected: ExpectedVersion::Exact(u64::MAX),
            events,
        });
        let encoded = postcard::to_allocvec(&cmd).unwrap().len();
        assert!(
            encoded <= l.max_append_encoded_bytes(),
            "{encoded} > {}",
            l.max_append_encoded_bytes()
        );
    }
}
