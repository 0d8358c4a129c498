//! Compiles the protobuf API with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/aetherops/v1/eventstore.proto",
        "proto/aetherops/v1/admin.proto",
        "proto/aetherops/v1/workflow.proto",
        "proto/aetherops/v1/telemetry.proto",
        "proto/raft/v1/raft.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC server reflection so that standard tools (grpcurl) work.
    std::fs::write(
        out_dir.join("aetherops_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;

    // Only for `aetherctl bench etcd` (and a test's stand-in server): no node serves it, so
    // it is compiled apart and left out of the descriptors that reflection lists.
    let etcd = ["proto/etcd/etcdserverpb_kv.proto"];
    for p in etcd {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(protox::compile(etcd, ["proto"])?)?;
    Ok(())
}
