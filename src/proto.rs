//! Protobuf-generated types. They stay at the edges: `api` converts them for clients, the
//! Raft transport for node-to-node messages; the core uses its own types.

#![allow(clippy::all, missing_docs)]

pub mod aetherops {
    pub mod v1 {
        tonic::include_proto!("aetherops.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("raft.v1");
    }
}

/// etcd's v3 KV service, the Put subset (`proto/etcd`): for `aetherctl bench etcd` (and the
/// stand-in server of its test). No node serves or calls it.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The encoded descriptors of every service, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/aetherops_descriptor.bin"));
