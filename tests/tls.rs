//! TLS on real nodes: a 3-node cluster whose every listener and node-to-node call is TLS
//! (certificates made here with rcgen), driven by `aetherctl --ca-file`, with and without
//! `[auth]` (role tokens from `aetherctl auth mint`); what a client without the CA, with
//! another CA, or without a member certificate gets; HTTPS `/healthz`; and the files a node
//! refuses to start with.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherops::proto::raft::v1::{raft_client::RaftClient, RaftMessage};
use common::*;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A CA (`common::secure::Ca`) whose certificate is written to a file.
struct Ca {
    pem: PathBuf,
    ca: secure::Ca,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let ca = secure::Ca::generate(name);
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, &ca.cert_pem).unwrap();
        Ca { pem, ca }
    }

    /// A node certificate for 127.0.0.1 and localhost (server and client): (cert, key).
    fn node(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.ca
            .node(name, &["127.0.0.1".to_owned(), "localhost".to_owned()])
            .write(dir, name)
    }
}

fn tls_toml(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\n\
         election_timeout_max_ms = 1000\n\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string()
    )
}

/// `aetherctl --addr ADDRS [--ca-file CA] ARGS`, with no token.
fn ctl(addrs: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    ctl_with(addrs, ca, None, args)
}

/// `aetherctl --addr ADDRS [--ca-file CA] [--token-file T] ARGS`; nothing from the
/// environment, so "no token" means none.
fn ctl_with(addrs: &str, ca: Option<&Path>, token: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(AETHERCTL);
    cmd.arg("--addr").arg(addrs).arg("--timeout-ms").arg("5000");
    if let Some(ca) = ca {
        cmd.arg("--ca-file").arg(ca);
    }
    if let Some(token) = token {
        cmd.arg("--token-file").arg(token);
    }
    cmd.args(args)
        .env_remove("AETHER_CA_FILE")
        .env_remove("AETHER_ADDR")
        .env_remove("AETHER_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run aetherctl")
}

/// A client of the TLS cluster: the CA it trusts and the token file it presents, if any.
#[derive(Clone, Copy)]
struct Client<'a> {
    ca: &'a Path,
    token: Option<&'a Path>,
}

impl Client<'_> {
    fn ctl(&self, addrs: &str, args: &[&str]) -> Output {
        ctl_with(addrs, Some(self.ca), self.token, args)
    }
}

fn stdout_ok(out: &Output) -> Option<String> {
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Waits (bounded) until `f` gives a value.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leader's index among `nodes[among]`, once every one of them names the same leader.
fn agreed_leader(nodes: &[TestNode], among: &[usize], client: Client) -> usize {
    wait_for("an agreed leader", || {
        let mut leader_ids = Vec::new();
        let mut leader_at = None;
        for &i in among {
            let out = stdout_ok(&client.ctl(&nodes[i].grpc_addr, &["--output", "json", "status"]))?;
            let s = json_lines(&out).pop()?;
            leader_ids.push(s["leader_id"].as_u64()?);
            if s["role"] == "leader" {
                leader_at = Some(i);
            }
        }
        let at = leader_at?;
        leader_ids
            .iter()
            .all(|&id| id == nodes[at].id)
            .then_some(at)
    })
}

/// Appends one event to `stream` through `addrs`, with a fixed id, until acknowledged (the
/// same id makes every retry safe). Returns the event id.
fn append_until_acked(addrs: &str, client: Client, stream: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    wait_for(&format!("an append to {stream} through {addrs}"), || {
        let out = client.ctl(
            addrs,
            &["append", stream, "--type", "T", "--data", "{}", "--id", &id],
        );
        out.status.success().then_some(())
    });
    id
}

/// The event ids of `stream` as the node at `addr` reads them (linearizable), or why not.
fn try_read_ids(addr: &str, client: Client, stream: &str) -> Result<Vec<String>, String> {
    let out = client.ctl(addr, &["--output", "json", "read", stream]);
    let text = stdout_ok(&out).ok_or_else(|| format!("read from {addr}: {}", stderr(&out)))?;
    Ok(json_lines(&text)
        .into_iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect())
}

/// The event ids of `stream` as the node at `addr` reads them (linearizable).
fn read_ids(addr: &str, client: Client, stream: &str) -> Vec<String> {
    try_read_ids(addr, client, stream).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (bounded) until every node in `nodes` reads `acked` from `stream`.
fn all_read(nodes: &[TestNode], client: Client, stream: &str, acked: &[String]) {
    for n in nodes {
        wait_for(
            &format!("node {} reading {} events", n.id, acked.len()),
            || (try_read_ids(&n.grpc_addr, client, stream).ok()? == acked).then_some(()),
        );
    }
}

/// The token file each role presents (none when no tokens are checked).
#[derive(Default)]
struct Tokens {
    admin: Option<PathBuf>,
    writer: Option<PathBuf>,
    reader: Option<PathBuf>,
}

const STREAM: &str = "tls-1";

/// The 3-node scenario over TLS end to end, each node configured with its `[tls]` section
/// and `extra_toml`: init, elect, append through a follower and the leader, read back from
/// every node (a follower's linearizable read asks the leader over raft.v1), verify the
/// replicas, run `before_the_fault` (with the ids acked so far); then kill the leader and
/// keep writing through the survivors. `cluster verify` runs before the fault only: it
/// reads every member's status, so it fails while a member is down.
fn three_nodes_survive_their_leader(
    tokens: &Tokens,
    extra_toml: &str,
    before_the_fault: impl FnOnce(&[TestNode], &Path, &[String]),
) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "cluster-ca");
    let mut nodes: Vec<TestNode> = (1..=3)
        .map(|id| {
            let (cert, key) = ca.node(tmp.path(), &format!("node{id}"));
            NodeBuilder::member(id, tmp.path().join(format!("node{id}")))
                .config(&(tls_toml(&cert, &key, &ca.pem) + extra_toml))
                .start()
        })
        .collect();
    let [admin, writer, reader] = [&tokens.admin, &tokens.writer, &tokens.reader].map(|t| Client {
        ca: &ca.pem,
        token: t.as_deref(),
    });
    let all: Vec<String> = nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let out = admin.ctl(&all.join(","), &["cluster", "init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let leader = agreed_leader(&nodes, &[0, 1, 2], reader);
    let follower = (leader + 1) % 3;

    // An `https://` address selects TLS too.
    let mut acked = vec![
        append_until_acked(&nodes[follower].grpc_addr, writer, STREAM),
        append_until_acked(
            &format!("https://{}", nodes[leader].grpc_addr),
            writer,
            STREAM,
        ),
    ];
    for n in &nodes {
        assert_eq!(
            read_ids(&n.grpc_addr, reader, STREAM),
            acked,
            "node {}",
            n.id
        );
    }
    let out = admin.ctl(&all.join(","), &["cluster", "verify", "--wait-secs", "60"]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    before_the_fault(&nodes, &ca.pem, &acked);

    // The fault path: the leader dies; writes through the survivors go on once they
    // elected one of them (forwarding, retries and breakers all over TLS).
    nodes[leader].kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let addrs = survivors
        .iter()
        .map(|&i| nodes[i].grpc_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    acked.push(append_until_acked(&addrs, writer, STREAM));
    let new_leader = agreed_leader(&nodes, &survivors, reader);
    let new_follower = survivors
        .iter()
        .copied()
        .find(|&i| i != new_leader)
        .unwrap();
    acked.push(append_until_acked(
        &nodes[new_follower].grpc_addr,
        writer,
        STREAM,
    ));
    let mut read = Vec::new();
    for &i in &survivors {
        let ids = read_ids(&nodes[i].grpc_addr, reader, STREAM);
        assert_eq!(ids, acked, "node {}", nodes[i].id);
        read.push(format!("node {}: {}", nodes[i].id, ids.len()));
    }
    println!(
        "leader node {} killed, node {} leads; {} events acked, read back on {}",
        nodes[leader].id,
        nodes[new_leader].id,
        acked.len(),
        read.join(", ")
    );
}

/// A 3-node cluster over TLS end to end survives its leader (no tokens checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_elects_replicates_and_survives_its_leader() {
    three_nodes_survive_their_leader(&Tokens::default(), "", |_, _, _| {});
}

/// The same with `[auth]` on every node too: node-to-node calls carry node-plane tokens over
/// TLS, each client presents its role's token, and a reader's append (PERMISSION_DENIED) or
/// a token-less one (UNAUTHENTICATED) writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_tls_cluster_survives_its_leader() {
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("dev.secret");
    std::fs::write(&secret, "dev: an HS256 secret of well over 32 bytes\n").unwrap();
    let auth_toml = format!(
        "\n[auth]\nenabled = true\nissuer = \"aetherops-dev\"\naudience = \"aetherops\"\n\
         node_audience = \"aetherops-node\"\nnode_key_kid = \"dev\"\nnode_key_file = {s:?}\n\
         [[auth.keys]]\nkid = \"dev\"\nalgorithms = [\"HS256\"]\nnode_plane = true\n\
         hmac_secret_file = {s:?}\n",
        s = secret.display().to_string()
    );
    let token = |role: &str| {
        let out = Command::new(AETHERCTL)
            .args([
                "auth",
                "mint",
                "--kid",
                "dev",
                "--role",
                role,
                "--secret-file",
            ])
            .arg(&secret)
            .args(["--sub", &format!("tls-{role}")])
            .output()
            .unwrap();
        let minted = stdout_ok(&out).unwrap_or_else(|| panic!("mint: {}", stderr(&out)));
        let file = keys.path().join(format!("{role}.token"));
        std::fs::write(&file, minted.trim()).unwrap();
        file
    };
    let tokens = Tokens {
        admin: Some(token("admin")),
        writer: Some(token("writer")),
        reader: Some(token("reader")),
    };
    three_nodes_survive_their_leader(&tokens, &auth_toml, |nodes, ca, acked| {
        let reader = Client {
            ca,
            token: tokens.reader.as_deref(),
        };
        let append = ["append", STREAM, "--type", "T", "--data", "{}"];
        let refusals = [
            (reader, "PermissionDenied"),
            (Client { ca, token: None }, "Unauthenticated"),
        ];
        for (client, code) in refusals {
            for n in nodes {
                let out = client.ctl(&n.grpc_addr, &append);
                let err = stderr(&out);
                assert!(!out.status.success(), "node {} appended: {err}", n.id);
                assert!(err.contains(code), "node {}: {err}", n.id);
                if n.id == 1 {
                    println!("refused on node 1: {}", err.trim_end());
                }
            }
        }
        for n in nodes {
            assert_eq!(
                read_ids(&n.grpc_addr, reader, STREAM),
                acked,
                "node {}: a refused append wrote",
                n.id
            );
        }
    });
}

/// Starts one TLS node (a one-node dev cluster) with a fresh CA.
struct OneNode {
    node: TestNode,
    ca: Ca,
    other_ca: Ca,
    tmp: tempfile::TempDir,
}

fn one_tls_node() -> OneNode {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "cluster-ca");
    let other_ca = Ca::new(tmp.path(), "other-ca");
    let (cert, key) = ca.node(tmp.path(), "node1");
    let node = NodeBuilder::dev()
        .config(&tls_toml(&cert, &key, &ca.pem))
        .start();
    OneNode {
        node,
        ca,
        other_ca,
        tmp,
    }
}

/// A client that does not speak TLS, or trusts another CA, gets nothing from a TLS node;
/// one with the CA does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_clusters_ca_are_refused() {
    let t = one_tls_node();
    let addr = &t.node.grpc_addr;
    wait_for("the node to answer over TLS", || {
        stdout_ok(&ctl(addr, Some(&t.ca.pem), &["status"]))
    });

    let plaintext = ctl(addr, None, &["status"]);
    assert!(!plaintext.status.success(), "plaintext status answered");
    let explicit_plain = ctl(&format!("http://{addr}"), Some(&t.ca.pem), &["status"]);
    assert!(!explicit_plain.status.success(), "http:// status answered");
    let other = ctl(addr, Some(&t.other_ca.pem), &["status"]);
    assert!(
        !other.status.success(),
        "a client trusting another CA was served"
    );
    assert!(
        stderr(&other).contains("certificate"),
        "the refusal says why: {}",
        stderr(&other)
    );
    let no_ca = ctl(&format!("https://{addr}"), None, &["status"]);
    assert!(
        stderr(&no_ca).contains("--ca-file"),
        "https:// without a CA: {}",
        stderr(&no_ca)
    );

    // The same with tonic directly: a plaintext HTTP/2 client never gets an answer.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let r = RaftClient::new(plain)
        .vote(RaftMessage {
            body: Default::default(),
        })
        .await;
    assert!(r.is_err(), "a plaintext call was answered: {r:?}");
}

async fn raft_vote(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    RaftClient::new(ch)
        .vote(RaftMessage {
            body: Default::default(),
        })
        .await
}

/// raft.v1 serves members only: a TLS client without a client certificate is
/// UNAUTHENTICATED, one whose certificate another CA signed is refused at the handshake,
/// and a member's certificate gets through the check to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_to_node_calls_need_a_member_certificate() {
    let t = one_tls_node();
    let addr = &t.node.grpc_addr;
    wait_for("the node to answer over TLS", || {
        stdout_ok(&ctl(addr, Some(&t.ca.pem), &["status"]))
    });

    let anonymous = raft_vote(addr, &t.ca.pem, None).await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    assert_eq!(
        anonymous.message(),
        "node-to-node calls need a member certificate"
    );

    let (cert, key) = t.other_ca.node(t.tmp.path(), "intruder");
    let intruder = raft_vote(addr, &t.ca.pem, Some((&cert, &key))).await;
    assert!(
        intruder.is_err(),
        "a certificate of another CA was served: {intruder:?}"
    );
    assert_ne!(
        intruder.unwrap_err().code(),
        tonic::Code::InvalidArgument,
        "a certificate of another CA reached the service"
    );

    // A member's certificate passes the check; what the service makes of an empty message
    // (no target header, no body, no node-plane token) is its own business.
    let (cert, key) = t.ca.node(t.tmp.path(), "member");
    let member = raft_vote(addr, &t.ca.pem, Some((&cert, &key)))
        .await
        .expect_err("an empty vote is refused by the service");
    assert_ne!(
        member.message(),
        "node-to-node calls need a member certificate",
        "a member certificate was refused: {member:?}"
    );
    assert!(
        !member.message().is_empty() && member.code() != tonic::Code::Unknown,
        "the service answered: {member:?}"
    );
}

/// `/healthz` over HTTPS with the cluster's CA; plain HTTP gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_served_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = one_tls_node();
    let addr = t.node.http_addr.clone();

    let reply = https_get(&addr, &t.ca.pem, "/healthz").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply).await;
    assert!(
        !String::from_utf8_lossy(&reply).starts_with("HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&reply)
    );
}

/// `GET path` over HTTPS from the HTTP listener at `addr`, trusting the CAs in `trust`: the
/// whole reply (status line, headers, body).
async fn https_get(addr: &str, trust: &Path, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = rustls_client(trust, b"http/1.1", None)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    // A peer may end TLS without close_notify after `Connection: close`; the reply is in.
    let _ = tls.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// The value of the sample `series` (name and labels, as exposed) in `/metrics` of the node
/// whose HTTPS listener is at `addr`.
fn metric(rt: &tokio::runtime::Runtime, addr: &str, trust: &Path, series: &str) -> Option<f64> {
    let text = rt.block_on(https_get(addr, trust, "/metrics"));
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs aetherd with `toml`, which must refuse to start; returns its output.
fn refused_start(dir: &Path, toml: &str) -> String {
    let config = dir.join("refused.toml");
    std::fs::write(&config, toml).unwrap();
    let mut child = Command::new(AETHERD)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("refused-data"))
        .arg("--grpc-addr")
        .arg("127.0.0.1:0")
        .arg("--http-addr")
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("aetherd started with:\n{toml}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "aetherd exited 0 with:\n{toml}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A node does not start on TLS files it cannot use, and says which setting is wrong.
#[test]
fn bad_tls_files_refuse_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new(dir, "cluster-ca");
    let other = Ca::new(dir, "other-ca");
    let (cert, key) = ca.node(dir, "node1");
    let (_, other_key) = ca.node(dir, "node2");
    let (stranger, stranger_key) = other.node(dir, "stranger");
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.join("missing.key");
    let cases: [(&str, (&Path, &Path, &Path), &str); 5] = [
        (
            "missing key file",
            (&cert, &missing, &ca.pem),
            "tls.key_file",
        ),
        (
            "a certificate that does not parse",
            (&garbage, &key, &ca.pem),
            "tls.cert_file",
        ),
        (
            "a key of another certificate",
            (&cert, &other_key, &ca.pem),
            "tls.key_file",
        ),
        (
            "a certificate of another CA",
            (&stranger, &stranger_key, &ca.pem),
            "tls.cert_file",
        ),
        (
            "a CA file that is a key",
            (&cert, &key, &key),
            "tls.ca_file",
        ),
    ];
    for (name, (c, k, a), setting) in cases {
        let out = refused_start(dir, &tls_toml(c, k, a));
        assert!(
            out.contains(setting),
            "{name}: the refusal names {setting}: {out}"
        );
    }
}

/// The DER of the first certificate in the PEM file at `path`.
fn leaf_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let first = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .next()
        .expect("a certificate");
    let cert: rustls::pki_types::CertificateDer = first.unwrap();
    cert.to_vec()
}

/// A TLS client trusting the CAs in the PEM file `trust`, offering `alpn`, presenting the
/// certificate and key in `member` (PEM files) if given.
fn rustls_client(
    trust: &Path,
    alpn: &[u8],
    member: Option<(&Path, &Path)>,
) -> tokio_rustls::TlsConnector {
    let read = |p: &Path| std::fs::read(p).unwrap();
    let member = member.map(|(cert, key)| (read(cert), read(key)));
    let mut config = secure::client_config(
        &read(trust),
        member.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    );
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The leaf certificate (DER) the listener at `addr` serves, seen by a client trusting the
/// CAs in `trust` and offering `alpn`.
async fn served_leaf(addr: &str, trust: &Path, alpn: &[u8]) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls_client(trust, alpn, None)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    Ok(session.peer_certificates().ok_or("no certificate")?[0].to_vec())
}

/// A TLS connection to the gRPC listener at `addr`, trusting the CAs in `trust`, offering
/// h2 and presenting `member` (cert, key files) if given.
async fn open_tls(
    addr: &str,
    trust: &Path,
    member: Option<(&Path, &Path)>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    rustls_client(trust, b"h2", member)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// Whether the server on `tls` speaks HTTP/2 on it: after the client preface, its first
/// frame (SETTINGS) arrives; or the error that came instead. TLS 1.3 refuses a client
/// certificate after the client's side of the handshake is done, so a refusal shows here,
/// as the server's alert.
async fn speaks_h2(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The client preface and an empty SETTINGS frame.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    tls.write_all(&preface).await.map_err(|e| e.to_string())?;
    let mut frame = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut frame)).await {
        Ok(Ok(_)) if frame[3] == 4 => Ok(()),
        Ok(Ok(_)) => Err(format!("first frame of type {}, not SETTINGS", frame[3])),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no frame within 10 s".into()),
    }
}

/// Whether the gRPC listener at `addr` takes an HTTP/2 connection from a client presenting
/// the member certificate `member` (cert, key files), trusting the CAs in `trust`.
async fn member_connects(addr: &str, trust: &Path, member: (&Path, &Path)) -> Result<(), String> {
    speaks_h2(&mut open_tls(addr, trust, Some(member)).await?).await
}

/// Waits until the node `n` takes the member certificate `member` (`taken`), or refuses it
/// with a TLS alert (not merely a slow answer); the client trusts the CAs in `trust`.
fn wait_member(
    rt: &tokio::runtime::Runtime,
    n: &TestNode,
    trust: &Path,
    member: (&Path, &Path),
    taken: bool,
) {
    let verb = if taken { "taking" } else { "refusing" };
    wait_for(
        &format!("node {} {verb} a member certificate", n.id),
        || match rt.block_on(member_connects(&n.grpc_addr, trust, member)) {
            Ok(()) => taken.then_some(()),
            Err(e) => (!taken && e.contains("alert")).then_some(()),
        },
    );
}

/// SIGHUP rotates a node's certificate without a restart: files that do not load leave the
/// certificate in force (the log says why, the node serves on); good ones are served by the
/// gRPC and the HTTP listener to every new connection, and a connection opened before goes
/// on with the certificate it was made with.
#[test]
fn sighup_rotates_the_certificate_of_both_listeners() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "cluster-ca");
    let (cert, key) = ca.node(tmp.path(), "node1");
    let first = leaf_der(&cert);
    let node = NodeBuilder::dev()
        .config(&tls_toml(&cert, &key, &ca.pem))
        .start();
    let client = Client {
        ca: &ca.pem,
        token: None,
    };
    let (grpc, http) = (node.grpc_addr.clone(), node.http_addr.clone());
    assert_eq!(
        rt.block_on(served_leaf(&grpc, &ca.pem, b"h2")),
        Ok(first.clone())
    );
    assert_eq!(
        rt.block_on(served_leaf(&http, &ca.pem, b"http/1.1")),
        Ok(first.clone())
    );
    let expiry = "aether_tls_certificate_expiry_timestamp_seconds";
    let not_after = |ymd: Option<(i32, u8, u8)>| {
        let t = match ymd {
            Some((y, m, d)) => rcgen::date_time_ymd(y, m, d),
            None => rcgen::CertificateParams::default().not_after,
        };
        Some(t.unix_timestamp() as f64)
    };
    assert_eq!(metric(&rt, &http, &ca.pem, expiry), not_after(None));
    // A connection opened before the rotations, used only after them.
    let mut opened_before = rt
        .block_on(open_tls(&grpc, &ca.pem, None))
        .expect("a connection before the rotation");
    let pid = node.pid().expect("node running");

    // A key that is not the certificate's: refused, the first certificate stays.
    let other = ca.ca.node("stray", &["127.0.0.1".to_owned()]);
    std::fs::write(&key, &other.key_pem).unwrap();
    signal(pid, "HUP");
    wait_for("the refused reload in the log", || {
        std::fs::read_to_string(node.log_path())
            .unwrap()
            .contains("TLS files NOT reloaded")
            .then_some(())
    });
    assert_eq!(
        rt.block_on(served_leaf(&grpc, &ca.pem, b"h2")),
        Ok(first.clone())
    );
    assert!(
        stdout_ok(&client.ctl(&grpc, &["status"])).is_some(),
        "{}",
        node.log()
    );
    let failed = r#"aether_reloads_total{what="tls",result="failed"}"#;
    let ok = r#"aether_reloads_total{what="tls",result="ok"}"#;
    assert_eq!(metric(&rt, &http, &ca.pem, failed), Some(1.0));
    assert_eq!(metric(&rt, &http, &ca.pem, ok), None);
    assert_eq!(metric(&rt, &http, &ca.pem, expiry), not_after(None));

    // A new certificate and its key: served on both listeners once reloaded.
    let (cert2, key2) = ca
        .ca
        .node_until("node1", &["127.0.0.1".to_owned()], (2031, 5, 17))
        .write(tmp.path(), "node1");
    assert_eq!((&cert2, &key2), (&cert, &key), "the same files, rewritten");
    let second = leaf_der(&cert);
    assert_ne!(first, second);
    signal(pid, "HUP");
    wait_for("the new certificate on the gRPC listener", || {
        (rt.block_on(served_leaf(&grpc, &ca.pem, b"h2")).ok()? == second).then_some(())
    });
    assert_eq!(
        rt.block_on(served_leaf(&http, &ca.pem, b"http/1.1")),
        Ok(second)
    );
    assert!(
        stdout_ok(&client.ctl(&grpc, &["status"])).is_some(),
        "{}",
        node.log()
    );
    assert_eq!(metric(&rt, &http, &ca.pem, ok), Some(1.0));
    assert_eq!(metric(&rt, &http, &ca.pem, failed), Some(1.0));
    assert_eq!(
        metric(&rt, &http, &ca.pem, expiry),
        not_after(Some((2031, 5, 17)))
    );
    rt.block_on(speaks_h2(&mut opened_before))
        .expect("the connection opened before the rotation goes on");
}

/// A cluster moves to a new CA by SIGHUP alone, in three steps with a SIGHUP to every node
/// after each (README, "TLS"): the new CA trusted beside the old one; the new CA's
/// certificates; the old CA dropped. Each step is seen taking effect on every node. A member
/// restarted after the last one trusts only the new CA, so its peers (whose clients were
/// made before the rotation) reach it only if they dial it with their new certificates: it
/// catches up with what was written meanwhile.
#[test]
fn a_cluster_moves_to_a_new_ca_by_sighup() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(tmp.path(), "old-ca");
    let new_ca = Ca::new(tmp.path(), "new-ca");
    let trust = tmp.path().join("trust.pem");
    std::fs::copy(&old_ca.pem, &trust).unwrap();
    // What clients trust throughout: both CAs.
    let both = tmp.path().join("both.pem");
    let bundle = format!("{}{}", old_ca.ca.cert_pem, new_ca.ca.cert_pem);
    std::fs::write(&both, &bundle).unwrap();
    let files: Vec<(PathBuf, PathBuf)> = (1..=3)
        .map(|id| old_ca.node(tmp.path(), &format!("node{id}")))
        .collect();
    let mut nodes: Vec<TestNode> = (1..=3)
        .map(|id| {
            let (cert, key) = &files[id as usize - 1];
            NodeBuilder::member(id, tmp.path().join(format!("node{id}")))
                .config(&tls_toml(cert, key, &trust))
                .start()
        })
        .collect();
    let client = Client {
        ca: &both,
        token: None,
    };
    let all: Vec<String> = nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let out = client.ctl(&all.join(","), &["cluster", "init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    agreed_leader(&nodes, &[0, 1, 2], client);
    let mut acked = vec![append_until_acked(&all.join(","), client, STREAM)];
    let hup_all = |nodes: &[TestNode]| {
        for n in nodes {
            signal(n.pid().expect("node running"), "HUP");
        }
    };
    let (old_cert, old_key) = old_ca.node(tmp.path(), "old-member");
    let (new_cert, new_key) = new_ca.node(tmp.path(), "new-member");
    let old_member = (old_cert.as_path(), old_key.as_path());
    let new_member = (new_cert.as_path(), new_key.as_path());

    // Step 1: both CAs trusted; the new CA's members, refused before, are taken.
    for n in &nodes {
        wait_member(&rt, n, &old_ca.pem, new_member, false);
    }
    std::fs::write(&trust, &bundle).unwrap();
    hup_all(&nodes);
    for n in &nodes {
        wait_member(&rt, n, &old_ca.pem, new_member, true);
    }

    // Step 2: every node's certificate from the new CA.
    for (id, (cert, _)) in (1..=3).zip(&files) {
        let written = new_ca.node(tmp.path(), &format!("node{id}"));
        assert_eq!(&written.0, cert);
    }
    hup_all(&nodes);
    for (n, (cert, _)) in nodes.iter().zip(&files) {
        let want = leaf_der(cert);
        wait_for(&format!("node {}'s new certificate", n.id), || {
            (rt.block_on(served_leaf(&n.grpc_addr, &new_ca.pem, b"h2"))
                .ok()?
                == want)
                .then_some(())
        });
    }
    acked.push(append_until_acked(&all.join(","), client, STREAM));

    // Step 3: the old CA is no longer trusted; a member certificate it signed is refused.
    std::fs::copy(&new_ca.pem, &trust).unwrap();
    hup_all(&nodes);
    for (n, (cert, key)) in nodes.iter().zip(&files) {
        wait_member(&rt, n, &new_ca.pem, old_member, false);
        wait_member(&rt, n, &new_ca.pem, (cert, key), true);
    }

    // A follower restarted now trusts the new CA alone: writes made while it was down reach
    // it only through its peers' new certificates.
    let leader = agreed_leader(&nodes, &[0, 1, 2], client);
    let f = (leader + 1) % 3;
    nodes[f].kill9();
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != f)
        .map(|i| nodes[i].grpc_addr.clone())
        .collect();
    acked.push(append_until_acked(&survivors.join(","), client, STREAM));
    nodes[f].restart();
    acked.push(append_until_acked(&all.join(","), client, STREAM));
    // The restarted member first: it can only catch up through its peers.
    nodes.swap(0, f);
    all_read(&nodes, client, STREAM, &acked);
}
