//! The one outgoing-peer client: every call this node makes to another node — openraft's
//! RPCs, a follower's batches proposed to the leader, clock probes, read-index requests —
//! goes through [`Peer::call`], so that a credential, a deadline or a breaker is added in
//! one place (`tests/architecture.rs` checks that no other module builds a client). The
//! client-serving calls (`Propose`, `ReadIndex`) pass the peer's circuit breaker
//! ([`super::breakers`]); openraft's own RPCs and clock probes never do (see there why).
//!
//! With authentication on, every call carries this node's node-plane token
//! (`authorization: Bearer …`, from [`NodeTokens`]: cached, renewed at half its life), the
//! `Admin.ReadIndex` fallback included.
//!
//! A replication stream's heartbeats may carry the leader's next entries (`raft::carry`):
//! [`PeerClient`] waits for them, sends them, and answers openraft's next AppendEntries from
//! the follower's Success when it covers it.
//!
//! One lazily-connected `Channel` per peer address, reused by every RPC and replication
//! stream to that peer (reconnecting per RPC costs tens of milliseconds). openraft's
//! per-RPC time limit becomes the gRPC deadline.
//!
//! openraft 0.9 makes an AppendEntries batch smaller only when the network answers
//! `PayloadTooLarge` (with a hint: how many entries to send); after any other error it
//! sends the same range again. So every failure that a smaller batch would avoid must be
//! reported as `PayloadTooLarge`, or a follower that fell behind by large entries is sent
//! the same oversized batch forever: a batch over the byte budget (`max_payload_bytes`,
//! checked before encoding), a message over either side's size limit, and a message not
//! delivered within openraft's time limit (one heartbeat interval). A single entry is
//! always sent; config validation keeps every entry within the budget.
//!
//! The deadline rule matters in practice: in `tests/large_entries.rs` (a follower 800 MB
//! behind in 4 MB entries, 2 loaded cores, 100 ms heartbeats) the leader logged about 700
//! `PayloadTooLarge` answers (over the budget or past the deadline) and the follower caught
//! up in about two minutes. Before, every attempt resent the same growing range, and not
//! even the live follower acknowledged the large entries in time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::breakers::PeerBreakers;
use super::carry::{self, Carried};
use super::log_store::LogStore;
use super::{Entry, NodeId, NodeInfo, TypeConfig};
use crate::auth::NodeTokens;
use crate::proto::aetherops::v1::{admin_client::AdminClient, ReadIndexRequest};
use crate::proto::raft::v1::{raft_client::RaftClient, RaftMessage};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

/// Largest Raft message either side accepts (entries batches, snapshot chunks).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// Metadata header naming the member a Raft RPC is meant for: `node_id:incarnation`.
pub const TARGET_HEADER: &str = "x-aether-target";

/// Hands out clients to peers, sharing one channel per address.
#[derive(Clone)]
pub struct NetworkFactory {
    /// One channel per address, with the TLS generation it was made with.
    channels: Arc<Mutex<HashMap<String, (u64, Channel)>>>,
    /// Source address of outgoing connections: the node's own listen IP, so that peers
    /// (and fault-injecting proxies in tests) see which node a connection comes from.
    source_ip: Option<IpAddr>,
    /// Bytes of entries per AppendEntries message at most (one entry is always sent).
    max_payload_bytes: usize,
    /// One circuit breaker per peer node id, shared by every `Peer` of that node.
    breakers: PeerBreakers,
    /// This node's node-plane credential (`None`: authentication is off).
    tokens: Option<Arc<NodeTokens>>,
    /// With TLS: peers are dialled over https, trusting the cluster's CA only and
    /// presenting this node's certificate (the member check of `raft.v1`). After a reload
    /// (`tls::LiveTls::reload`) channels are made again, so new connections use the new
    /// material.
    tls: Option<crate::tls::LiveTls>,
    /// How a replication stream's heartbeat carries entries (`raft::carry`); `None`: never.
    carry: Option<Carrying>,
    carry_stats: Arc<CarryStats>,
}

/// What a heartbeat carrying entries needs: this node's log, how long it waits for entries,
/// and how many it carries at most (`carry::MAX_ENTRIES`, and `raft.max_payload_entries`).
#[derive(Clone)]
struct Carrying {
    log: LogStore,
    wait: Duration,
    max_entries: u64,
}

/// Counters of [`carry`], for `/metrics`.
#[derive(Debug, Default)]
pub struct CarryStats {
    /// Heartbeats that carried entries and were answered.
    pub heartbeats_carrying: AtomicU64,
    /// AppendEntries answered from a follower's Success to carried entries, not sent.
    pub answered_from_carried: AtomicU64,
}

impl NetworkFactory {
    /// A factory whose AppendEntries messages carry at most `max_payload_bytes` of entries
    /// and whose client-serving calls pass `breakers`.
    pub fn new(
        source_ip: Option<IpAddr>,
        max_payload_bytes: usize,
        breakers: PeerBreakers,
        tokens: Option<Arc<NodeTokens>>,
    ) -> Self {
        NetworkFactory {
            channels: Arc::default(),
            source_ip,
            max_payload_bytes,
            breakers,
            tokens,
            tls: None,
            carry: None,
            carry_stats: Arc::default(),
        }
    }

    /// The same factory, whose replication streams' heartbeats wait up to `wait` for the
    /// next entries of `log` and carry up to `max_entries` of them (`raft::carry`); a zero
    /// `wait` turns it off.
    pub fn with_carrying(self, log: LogStore, wait: Duration, max_entries: u64) -> Self {
        NetworkFactory {
            carry: (!wait.is_zero()).then_some(Carrying {
                log,
                wait,
                max_entries: max_entries.clamp(1, carry::MAX_ENTRIES),
            }),
            ..self
        }
    }

    pub fn carry_stats(&self) -> &CarryStats {
        &self.carry_stats
    }

    /// The same factory, calling its peers over TLS.
    pub fn with_tls(self, tls: Option<crate::tls::LiveTls>) -> Self {
        NetworkFactory { tls, ..self }
    }

    /// The TLS generation channels are made with now (0 without TLS).
    fn tls_generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.generation())
    }

    /// The breakers of this node's calls to its peers.
    pub fn breakers(&self) -> &PeerBreakers {
        &self.breakers
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channel_of_generation(addr).map(|(_, c)| c)
    }

    /// The channel to `addr` and the TLS generation it was made with.
    fn channel_of_generation(&self, addr: &str) -> Result<(u64, Channel), tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the material: a reload in between only makes the next call renew.
        let generation = self.tls_generation();
        if let Some((made_with, c)) = channels.get(addr) {
            if *made_with == generation {
                return Ok((generation, c.clone()));
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.peer_client(addr))?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.source_ip)
            .connect_lazy();
        channels.insert(addr.to_owned(), (generation, channel.clone()));
        Ok((generation, channel))
    }

    /// A client for member `target`, known by the membership as `node`. An address or an
    /// incarnation that cannot be used is reported by every call, never by a panic.
    pub fn peer(&self, target: NodeId, node: &NodeInfo) -> Peer {
        let target_header = format!("{target}:{}", node.incarnation)
            .parse()
            .map_err(|_| format!("node {target}'s incarnation is not a header value"));
        let client = self
            .channel_of_generation(&node.grpc_addr)
            .map_err(|e| format!("node {target}'s address {:?}: {e}", node.grpc_addr));
        // The generation the channel was made with (a reload since makes calls renew).
        let generation = client.as_ref().map_or(0, |(g, _)| *g);
        Peer {
            target,
            client: target_header.and_then(|h| client.map(|(_, c)| (c, h))),
            breakers: self.breakers.clone(),
            tokens: self.tokens.clone(),
            renew: self.tls.is_some().then(|| Renew {
                factory: self.clone(),
                addr: node.grpc_addr.clone(),
                generation,
            }),
        }
    }
}

/// The node-to-node RPCs (all on `raft.v1.Raft`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRpc {
    AppendEntries,
    InstallSnapshot,
    Vote,
    /// A follower's batch of client commands, for the leader to propose.
    Propose,
    /// The peer's wall clock.
    Clock,
    /// The leader's read index, after it confirmed its leadership with a quorum.
    ReadIndex,
    /// A voter's shares of the cluster-wide rate limits, leased by the leader.
    Lease,
    /// A follower's batch with each command's caller credential (`forwarded::ProposeAs`).
    ProposeAs,
}

impl PeerRpc {
    /// Calls made on behalf of a waiting client pass the peer's breaker. openraft's RPCs do
    /// not: openraft backs off on its own, and a breaker refusing Vote or AppendEntries for
    /// its reset timeout could stall an election or a leader's heartbeats. Clock probes feed
    /// the leader's commit-time vote and retry every second anyway; lease requests run every
    /// 0.25 s off the request path, and a lease that cannot be renewed falls back on its own.
    pub fn guarded(self) -> bool {
        matches!(
            self,
            PeerRpc::Propose | PeerRpc::ProposeAs | PeerRpc::ReadIndex
        )
    }
}

/// A client for one member.
#[derive(Clone)]
pub struct Peer {
    target: NodeId,
    client: Result<(Channel, tonic::metadata::AsciiMetadataValue), String>,
    breakers: PeerBreakers,
    tokens: Option<Arc<NodeTokens>>,
    /// With TLS: where to get a channel made with reloaded material.
    renew: Option<Renew>,
}

/// A peer client's way to a channel with the TLS material in force: openraft keeps its
/// clients for as long as replication runs, so one made before a reload asks the factory
/// for the channel of the new generation.
#[derive(Clone)]
struct Renew {
    factory: NetworkFactory,
    addr: String,
    /// The generation of the client's own channel.
    generation: u64,
}

impl Peer {
    pub fn id(&self) -> NodeId {
        self.target
    }

    /// One call: `body` (the postcard-encoded message) to the member, within `timeout`,
    /// addressed to the member's incarnation (a wiped node refuses messages meant for its
    /// former self). A peer whose address is unusable answers `UNAVAILABLE` with the reason;
    /// so does an open breaker (its refusal is the status's source: `breakers::refusal`).
    pub async fn call(
        &self,
        rpc: PeerRpc,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<bytes::Bytes, tonic::Status> {
        if rpc.guarded() {
            let call = self.send(rpc, body, timeout);
            self.breakers.guard(self.target, call).await
        } else {
            self.send(rpc, body, timeout).await
        }
    }

    /// The channel to call the member on, and its target header: the client's own, or,
    /// after a TLS reload, the factory's channel made with the material now in force.
    #[allow(clippy::result_large_err)]
    fn channel(&self) -> Result<(Channel, &tonic::metadata::AsciiMetadataValue), tonic::Status> {
        let (channel, header) = self
            .client
            .as_ref()
            .map_err(|e| tonic::Status::unavailable(e.clone()))?;
        if let Some(r) = self.renew.as_ref() {
            if r.factory.tls_generation() != r.generation {
                match r.factory.channel(&r.addr) {
                    Ok(renewed) => return Ok((renewed, header)),
                    // Not expected: the address and material were usable when this client
                    // was made, and a reload puts only checked material in force.
                    Err(e) => tracing::warn!(
                        peer = self.target,
                        error = %e,
                        "no channel with the reloaded TLS material; calling on the previous one"
                    ),
                }
            }
        }
        Ok((channel.clone(), header))
    }

    async fn send(
        &self,
        rpc: PeerRpc,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<bytes::Bytes, tonic::Status> {
        let (channel, header) = self.channel()?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut request = tonic::Request::new(RaftMessage { body });
        request.set_timeout(timeout);
        request.metadata_mut().insert(TARGET_HEADER, header.clone());
        self.authorize(&mut request)?;
        let reply = match rpc {
            PeerRpc::AppendEntries => client.append_entries(request).await,
            PeerRpc::InstallSnapshot => client.install_snapshot(request).await,
            PeerRpc::Vote => client.vote(request).await,
            PeerRpc::Propose => client.propose(request).await,
            PeerRpc::Clock => client.clock(request).await,
            PeerRpc::ReadIndex => client.read_index(request).await,
            PeerRpc::Lease => client.lease(request).await,
            PeerRpc::ProposeAs => client.propose_as(request).await,
        };
        reply.map(|r| r.into_inner().body)
    }

    /// Adds this node's node-plane token, when authentication is on.
    #[allow(clippy::result_large_err)]
    fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), tonic::Status> {
        if let Some(tokens) = &self.tokens {
            let value = tokens
                .bearer(self.target)
                .parse()
                .map_err(|_| tonic::Status::internal("this node's token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(())
    }

    /// The member's read index (it must lead). A leader on a version without
    /// `raft.v1.ReadIndex` (a rolling upgrade that started with the followers) is asked
    /// through its public `Admin.ReadIndex`, which every version serves.
    pub async fn read_index(&self, timeout: Duration) -> Result<Option<u64>, tonic::Status> {
        match self
            .call(PeerRpc::ReadIndex, bytes::Bytes::new(), timeout)
            .await
        {
            Ok(body) => postcard::from_bytes(&body)
                .map_err(|e| tonic::Status::internal(format!("undecodable read index reply: {e}"))),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                let (channel, _) = self.channel()?;
                let mut admin = AdminClient::new(channel);
                let mut request = tonic::Request::new(ReadIndexRequest {});
                request.set_timeout(timeout);
                self.authorize(&mut request)?;
                Ok(admin.read_index(request).await?.into_inner().read_index)
            }
            Err(s) => Err(s),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            peer: self.peer(target, node),
            max_payload_bytes: self.max_payload_bytes,
            carry: self.carry.clone(),
            stats: self.carry_stats.clone(),
            replicating: false,
            carried: None,
        }
    }
}

/// openraft's view of a peer: one per replication stream, and one per other call openraft
/// makes (votes, its check-is-leader heartbeats).
pub struct PeerClient {
    peer: Peer,
    max_payload_bytes: usize,
    carry: Option<Carrying>,
    stats: Arc<CarryStats>,
    /// This client has sent entries: it serves a replication stream, whose heartbeats may
    /// carry entries. (openraft's check-is-leader heartbeats come on clients of their own,
    /// which never do: they neither wait nor carry.)
    replicating: bool,
    /// The follower's Success to the entries the last heartbeat carried.
    carried: Option<Carried>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, TransportError> {
    postcard::to_allocvec(v)
        .map(bytes::Bytes::from)
        .map_err(|e| TransportError(format!("encoding raft message: {e}")))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, TransportError> {
    postcard::from_bytes(body).map_err(|e| TransportError(format!("decoding raft message: {e}")))
}

/// How many leading entries fit `budget` bytes (encoded), at least one; `None` when all do.
fn entries_within(entries: &[Entry], budget: usize) -> Option<usize> {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        // Sizing walks the entry without copying its payloads.
        let size =
            postcard::serialize_with_flavor(e, postcard::ser_flavors::Size::default()).ok()?;
        total = total.saturating_add(size);
        if total > budget {
            return Some(i.max(1));
        }
    }
    None
}

/// Asks openraft to send at most `entries` entries next time.
fn too_large(entries: usize, why: &TransportError) -> PayloadTooLarge {
    PayloadTooLarge::new_entries_hint(entries.max(1) as u64).with_source_error(why)
}

/// What a failed call means to openraft. `entries` is the number of entries the message
/// carried (0 but for AppendEntries).
fn call_error<E: std::error::Error>(
    status: &tonic::Status,
    entries: usize,
    e: TransportError,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    use tonic::Code;
    match status.code() {
        Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
        // Over a size limit on either side (tonic says OUT_OF_RANGE), or not delivered
        // within the time limit: half as many entries may pass. A single entry can only
        // be retried as it is.
        Code::OutOfRange | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled
            if entries > 1 =>
        {
            RPCError::PayloadTooLarge(too_large(entries / 2, &e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl PeerClient {
    /// Sends heartbeat `rpc` with the entries the leader appends after its `prev_log_id`
    /// within the carry wait (`raft::carry`), and returns the follower's answer, or the
    /// failure the heartbeat would meet too (the follower out of reach or too slow); `None`
    /// when there is nothing to carry or the carrying message failed otherwise (the
    /// heartbeat is then sent as it is).
    async fn carry_entries(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        deadline: tokio::time::Instant,
    ) -> Option<RpcResult<AppendEntriesResponse<NodeId>>> {
        let Carrying {
            log,
            wait,
            max_entries,
        } = self.carry.clone()?;
        let prev = rpc.prev_log_id?;
        if !rpc.vote.is_committed() {
            return None;
        }
        let mut appended = log.appended();
        let waited = tokio::time::Instant::now() + wait;
        while *appended.borrow_and_update() <= prev.index {
            match tokio::time::timeout_at(waited, appended.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
        // Only a short tail: all the entries after `prev`, few and small (`carry::MAX_*`).
        let entries = log
            .short_tail(
                prev.index.checked_add(1)?,
                usize::try_from(max_entries).ok()?,
                carry::MAX_BYTES.min(self.max_payload_bytes),
            )
            .ok()??;
        if !carry::carriable(&rpc.vote, prev, &entries) {
            return None;
        }
        let last = entries.last()?.log_id;
        let carrying = AppendEntriesRequest::<TypeConfig> {
            vote: rpc.vote,
            prev_log_id: Some(prev),
            leader_commit: rpc.leader_commit,
            entries,
        };
        let msg = encode(&carrying).ok()?;
        let ttl = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = match self.peer.call(PeerRpc::AppendEntries, msg, ttl).await {
            Ok(body) => {
                match decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(&body) {
                    Ok(Ok(answer)) => answer,
                    _ => return None,
                }
            }
            // What the heartbeat would meet as well: a follower out of reach or not answering
            // in time (tonic reports its own deadline as CANCELLED). Sending the heartbeat
            // after that would only take its time again.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) =>
            {
                let e = TransportError(format!(
                    "AppendEntries to node {}: {status}",
                    self.peer.id()
                ));
                return Some(Err(call_error(&status, 0, e)));
            }
            // Anything else (the message's size, say): the heartbeat goes as it is.
            Err(_) => return None,
        };
        self.stats
            .heartbeats_carrying
            .fetch_add(1, Ordering::Relaxed);
        match answer {
            AppendEntriesResponse::Success => {
                self.carried = Some(Carried {
                    vote: rpc.vote,
                    prev,
                    last,
                    commit: rpc.leader_commit,
                });
                Some(Ok(AppendEntriesResponse::Success))
            }
            // The heartbeat's own answer: the same vote and prev_log_id were refused.
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => {
                Some(Ok(answer))
            }
            AppendEntriesResponse::PartialSuccess(_) => None,
        }
    }

    /// One RPC. `entries` is the number of entries it carries (AppendEntries), for the
    /// classification of failures; `ttl` its deadline.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: PeerRpc,
        req: &Req,
        entries: usize,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let msg = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = match self.peer.call(rpc, msg, ttl).await {
            Ok(body) => body,
            Err(status) => {
                let e = TransportError(format!("{rpc:?} to node {}: {status}", self.peer.id()));
                return Err(call_error(&status, entries, e));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.peer.id(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let n = rpc.entries.len();
        if n > 1 {
            if let Some(fit) = entries_within(&rpc.entries, self.max_payload_bytes) {
                let why = TransportError(format!(
                    "{n} entries to node {} take more than {} bytes",
                    self.peer.id(),
                    self.max_payload_bytes
                ));
                return Err(RPCError::PayloadTooLarge(too_large(fit, &why)));
            }
        }
        // The soft limit: our deadline must fire before openraft drops the call at the hard
        // one, or openraft sees a bare timeout and sends the same batch again.
        let ttl = option.soft_ttl();
        let called = tokio::time::Instant::now();
        if n > 0 {
            self.replicating = true;
        }
        if let Some(carried) = self.carried.take() {
            if let Some(answer) = carry::answer(&carried, &rpc) {
                self.stats
                    .answered_from_carried
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(answer);
            }
        }
        if n == 0 && self.replicating {
            if let Some(answer) = self.carry_entries(&rpc, called + ttl).await {
                return answer;
            }
        }
        // Within the deadline openraft set when it called (a carry may have waited).
        let ttl = ttl.saturating_sub(called.elapsed());
        self.call(PeerRpc::AppendEntries, &rpc, n, ttl).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(PeerRpc::InstallSnapshot, &rpc, 0, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(PeerRpc::Vote, &rpc, 0, option.hard_ttl()).await
    }
}
