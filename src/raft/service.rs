//! The Raft transport, server side: decodes peers' messages and hands them to openraft.

use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use super::Raft;
use crate::proto::raft::v1::{raft_server, RaftMessage};

pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }
}

fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    postcard::from_bytes(&m.body)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    postcard::to_allocvec(v)
        .map(|body| Response::new(RaftMessage { body: body.into() }))
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }
}
