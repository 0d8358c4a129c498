//! A cluster of real `aetherd` processes, each behind a fault-injecting proxy, each
//! connecting from its own loopback IP (127.0.0.10+i) so that links can be cut one by one.
//! In secure mode (`AETHER_TEST_SECURE=1`) every member the harness starts is checked to be
//! secured; otherwise to be plain ([`TestCluster::spawn_node_with_config`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;

use super::proxy::Proxy;
use super::{secure, NodeBuilder, Protection, TestNode, DEADLINE};

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub proxies: Vec<Proxy>,
    extra_args: Vec<String>,
    pub tmp: tempfile::TempDir,
}

pub fn node_ip(id: u64) -> IpAddr {
    format!("127.0.0.{}", 10 + id).parse().expect("ip")
}

impl TestCluster {
    /// Starts `n` nodes and initializes them as one cluster of `n` voters.
    pub async fn start(n: u64, extra_args: &[&str]) -> TestCluster {
        let mut c = TestCluster::start_uninitialized(n, extra_args).await;
        let members: Vec<u64> = (1..=n).collect();
        c.init(&members).await;
        c
    }

    pub async fn start_uninitialized(n: u64, extra_args: &[&str]) -> TestCluster {
        let mut c = TestCluster {
            nodes: Vec::new(),
            proxies: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tmp: tempfile::tempdir().expect("temp dir"),
        };
        for _ in 0..n {
            c.spawn_node().await;
        }
        c
    }

    /// Starts one more node (not a member yet); returns its index in `nodes`.
    pub async fn spawn_node(&mut self) -> usize {
        self.spawn_node_with_config(None).await
    }

    /// Starts one more node with this TOML config file (not a member yet), and checks that
    /// it runs in the harness's mode: secured in secure mode, plain otherwise (unless the
    /// test's config brings its own `[auth]` or `[tls]`).
    pub async fn spawn_node_with_config(&mut self, toml: Option<&str>) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let proxy = Proxy::start().await;
        let mut b = NodeBuilder::member(id, self.tmp.path().join(format!("node{id}")))
            .ip(node_ip(id).to_string())
            .arg("--advertise-grpc-addr")
            .arg(proxy.addr.to_string());
        for a in &self.extra_args {
            b = b.arg(a.clone());
        }
        if let Some(toml) = toml {
            b = b.config(toml);
        }
        let node = b.start();
        match &node.protection {
            Protection::Secure(_) => secure::assert_secured(&node.grpc_addr, || node.log()).await,
            Protection::Plain => {
                assert!(!secure::enabled(), "secure mode started node {id} plain");
                secure::assert_plain(&node.grpc_addr, || node.log()).await
            }
            Protection::OwnConfig => {}
        }
        proxy.set_target(&node.grpc_addr);
        self.nodes.push(node);
        self.proxies.push(proxy);
        self.nodes.len() - 1
    }

    pub fn member(&self, i: usize) -> pb::Member {
        pb::Member {
            node_id: self.nodes[i].id,
            grpc_addr: self.proxies[i].addr.to_string(),
            http_addr: self.nodes[i].http_addr.clone(),
            incarnation: String::new(),
        }
    }

    async fn member_with_incarnation(&self, i: usize) -> pb::Member {
        let s = self.nodes[i].status().await;
        pb::Member {
            incarnation: s.incarnation,
            ..self.member(i)
        }
    }

    /// Adds node `i` as a learner through node `via`, waiting until it caught up.
    #[allow(dead_code)]
    pub async fn add_learner(&self, via: usize, i: usize) {
        let member = self.member_with_incarnation(i).await;
        self.nodes[via]
            .admin()
            .await
            .add_learner(pb::AddLearnerRequest {
                member: Some(member),
                blocking: true,
            })
            .await
            .expect("add learner");
    }

    pub async fn init(&mut self, ids: &[u64]) {
        let mut members = Vec::new();
        for id in ids {
            members.push(self.member_with_incarnation((*id - 1) as usize).await);
        }
        self.nodes[(ids[0] - 1) as usize]
            .admin()
            .await
            .init(pb::InitRequest { members })
            .await
            .expect("init");
        self.wait_leader(&self.all()).await;
    }

    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Waits until the given nodes agree on one leader among them; returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut leaders = Vec::new();
            for &i in among {
                if let Ok(s) = self.try_status(i).await {
                    leaders.push((i, s.leader_id, s.role == "leader", s.term));
                }
            }
            if leaders.len() == among.len() {
                if let Some(&(li, _, _, term)) = leaders.iter().find(|l| l.2) {
                    let lid = self.nodes[li].id;
                    if leaders.iter().all(|l| l.1 == Some(lid) && l.3 == term) {
                        return li;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn try_status(&self, i: usize) -> Result<pb::StatusResponse, tonic::Status> {
        let node = &self.nodes[i];
        let ch = node
            .endpoint()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        aetherops::proto::aetherops::v1::admin_client::AdminClient::with_interceptor(
            ch,
            node.bearer(),
        )
        .status(pb::StatusRequest {})
        .await
        .map(|r| r.into_inner())
    }

    /// Waits until the given nodes have applied the same index with the same digest.
    pub async fn wait_converged(&self, among: &[usize]) -> pb::StatusResponse {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut statuses = Vec::new();
            for &i in among {
                if let Ok(s) = self.try_status(i).await {
                    statuses.push(s);
                }
            }
            if statuses.len() == among.len()
                && statuses
                    .windows(2)
                    .all(|w| w[0].applied_index == w[1].applied_index)
            {
                let digests: Vec<&str> = statuses.iter().map(|s| s.state_digest.as_str()).collect();
                assert!(
                    digests.windows(2).all(|w| w[0] == w[1]),
                    "replicas diverge at the same applied index: {:?}",
                    statuses
                        .iter()
                        .map(|s| (s.node_id, s.applied_index, &s.state_digest))
                        .collect::<Vec<_>>()
                );
                return statuses.swap_remove(0);
            }
            assert!(
                Instant::now() < deadline,
                "nodes {among:?} did not converge: {:?}",
                statuses
                    .iter()
                    .map(|s| (s.node_id, s.applied_index))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts every link between the groups (both directions); links inside a group stay.
    pub fn partition(&self, groups: &[&[usize]]) {
        for (gi, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(gi + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.proxies[y].block(node_ip(self.nodes[x].id));
                        self.proxies[x].block(node_ip(self.nodes[y].id));
                    }
                }
            }
        }
    }

    pub fn heal(&self) {
        for p in &self.proxies {
            p.unblock_all();
        }
    }
}
