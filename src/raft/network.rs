//! The Raft transport, client side: openraft's RPCs to peers over tonic gRPC.
//!
//! One lazily-connected `Channel` per peer address, reused by every RPC and replication
//! stream to that peer (reconnecting per RPC costs tens of milliseconds). openraft's
//! per-RPC time limit becomes the gRPC deadline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::{NodeId, NodeInfo, TypeConfig};
use crate::proto::raft::v1::{raft_client::RaftClient, RaftMessage};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

/// Largest Raft message either side accepts (entries batches, snapshot chunks).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// Metadata header naming the member a Raft RPC is meant for: `node_id:incarnation`.
pub const TARGET_HEADER: &str = "x-aether-target";

/// Hands out clients to peers, sharing one channel per address.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Source address of outgoing connections: the node's own listen IP, so that peers
    /// (and fault-injecting proxies in tests) see which node a connection comes from.
    source_ip: Option<IpAddr>,
}

impl NetworkFactory {
    pub fn new(source_ip: Option<IpAddr>) -> Self {
        NetworkFactory {
            channels: Arc::default(),
            source_ip,
        }
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.source_ip)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let client = self.channel(&node.grpc_addr).map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            target_header: format!("{target}:{}", node.incarnation)
                .parse()
                .map_err(|_| format!("node {target}'s incarnation is not a header value")),
            client: client.map_err(|e| e.to_string()),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    target_header: Result<tonic::metadata::AsciiMetadataValue, String>,
    /// An invalid address is reported on every RPC rather than panicking the factory.
    client: Result<RaftClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

fn encode<T: Serialize>(v: &T) -> Result<RaftMessage, TransportError> {
    postcard::to_allocvec(v)
        .map(|body| RaftMessage { body: body.into() })
        .map_err(|e| TransportError(format!("encoding raft message: {e}")))
}

fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, TransportError> {
    postcard::from_bytes(&m.body).map_err(|e| TransportError(format!("decoding raft message: {e}")))
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable =
            |e: &String| RPCError::Unreachable(Unreachable::new(&TransportError(e.clone())));
        let header = self.target_header.clone().map_err(|e| unreachable(&e))?;
        let client = self.client.as_mut().map_err(|e| unreachable(e))?;
        let msg = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(msg);
        request.set_timeout(option.hard_ttl());
        request.metadata_mut().insert(TARGET_HEADER, header);
        let reply = match kind {
            "append_entries" => client.append_entries(request).await,
            "install_snapshot" => client.install_snapshot(request).await,
            _ => client.vote(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = TransportError(format!("{kind} to node {}: {status}", self.target));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call("vote", &rpc, &option).await
    }
}
