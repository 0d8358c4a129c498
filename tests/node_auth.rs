//! The node-to-node plane with `[auth]` on (issue 12), against a real 3-node cluster over real
//! gRPC: the cluster elects, replicates and serves writes forwarded through a follower with
//! every peer call carrying node tokens; raft.v1 refuses client tokens of any role, calls
//! without a token, non-members, messages that speak for another node, a member's token
//! bound to another member, and messages of a shape openraft never sends (a leader's
//! uncommitted vote, a candidate's committed one, entries with a gap); a forwarded
//! command is authorized again by the leader as its own caller. Every refusal is followed by
//! a read-back: the target's term did not move and no event of the attack reached the log.
//! Prints a table (case → expected → got).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aetherops::auth::{mint_hs256, node_subject, MintRequest, Role};
use aetherops::eventstore::{AppendCommand, AppendOutcome};
use aetherops::model::{ExpectedVersion, NewEvent};
use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::raft::v1::{raft_client::RaftClient, RaftMessage};
use aetherops::raft::forwarded::ProposeAs;
use aetherops::raft::lease::LeaseAsk;
use aetherops::raft::{Command, CommandOutcome, Denial, ProposeError, TypeConfig};
use common::cluster::TestCluster;
use common::{append_req, new_event, TestNode, DEADLINE};
use tonic::Status;

const SECRET: &str = "a node-plane test secret, 32 bytes or more";
const ISSUER: &str = "aetherops-test";
const AUDIENCE: &str = "aetherops";
const NODE_AUDIENCE: &str = "aetherops-node";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(sub: &str, roles: &[Role], streams: &[&str], audience: &str) -> String {
    mint_bound(sub, roles, streams, audience, None)
}

/// [`mint`], with `tgt` naming `target` when given.
fn mint_bound(
    sub: &str,
    roles: &[Role],
    streams: &[&str],
    audience: &str,
    target: Option<u64>,
) -> String {
    let req = MintRequest {
        subject: sub.into(),
        roles: roles.to_vec(),
        stream_prefixes: streams.iter().map(|s| s.to_string()).collect(),
        series_prefixes: Vec::new(),
        issuer: ISSUER.into(),
        audience: audience.into(),
        kid: Some("dev".into()),
        target: target.map(|t| t.to_string()),
        now_secs: now_secs(),
        ttl_secs: 600,
    };
    mint_hs256(SECRET.as_bytes(), &req).expect("mint")
}

fn auth_toml(secret: &std::path::Path) -> String {
    format!(
        "[auth]\nenabled = true\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n\
         node_audience = {NODE_AUDIENCE:?}\nnode_key_kid = \"dev\"\nnode_key_file = {s:?}\n\
         [[auth.keys]]\nkid = \"dev\"\nalgorithms = [\"HS256\"]\nnode_plane = true\nhmac_secret_file = {s:?}\n",
        s = secret.display().to_string()
    )
}

/// One raft.v1 call, with `token` as bearer and `target` as the addressed member.
async fn raft_call(
    node: &TestNode,
    rpc: &str,
    body: Vec<u8>,
    token: Option<&str>,
    target: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let mut client = RaftClient::new(node.channel().await);
    let mut req = tonic::Request::new(RaftMessage { body: body.into() });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(t) = target {
        req.metadata_mut()
            .insert("x-aether-target", t.parse().unwrap());
    }
    let reply = match rpc {
        "AppendEntries" => client.append_entries(req).await,
        "InstallSnapshot" => client.install_snapshot(req).await,
        "Vote" => client.vote(req).await,
        "Propose" => client.propose(req).await,
        "ProposeAs" => client.propose_as(req).await,
        "Lease" => client.lease(req).await,
        "Clock" => client.clock(req).await,
        "ReadIndex" => client.read_index(req).await,
        other => panic!("unknown rpc {other}"),
    };
    reply.map(|r| r.into_inner().body.to_vec())
}

fn append_cmd(stream: &str) -> Command {
    Command::Append(AppendCommand {
        stream: stream.into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::new(uuid::Uuid::new_v4(), "Attack", b"{}")],
    })
}

/// Well-formed messages, each naming `sender` where the message names one, at a term far
/// ahead (accepting one would move the target's term).
fn body(rpc: &str, sender: u64, term: u64) -> Vec<u8> {
    body_with(rpc, sender, openraft::Vote::new(term, sender))
}

/// [`body`] with `vote` in the messages that carry one.
fn body_with(rpc: &str, sender: u64, vote: openraft::Vote<u64>) -> Vec<u8> {
    match rpc {
        "AppendEntries" => {
            postcard::to_allocvec(&openraft::raft::AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            })
        }
        "InstallSnapshot" => {
            postcard::to_allocvec(&openraft::raft::InstallSnapshotRequest::<TypeConfig> {
                vote,
                // A meta a leader could send (the sender alone as the membership), so that
                // only the vote or the caller can be wrong.
                meta: openraft::SnapshotMeta {
                    last_log_id: None,
                    last_membership: openraft::StoredMembership::new(
                        None,
                        openraft::Membership::new(
                            vec![[sender].into()],
                            std::collections::BTreeMap::from([(
                                sender,
                                aetherops::raft::NodeInfo::default(),
                            )]),
                        ),
                    ),
                    snapshot_id: "s".into(),
                },
                offset: 0,
                data: vec![0; 16],
                done: false,
            })
        }
        "Vote" => postcard::to_allocvec(&openraft::raft::VoteRequest::<u64> {
            vote,
            last_log_id: None,
        }),
        "Propose" => postcard::to_allocvec(&vec![append_cmd("attack-propose")]),
        "ProposeAs" => postcard::to_allocvec(&ProposeAs::new(
            vec![append_cmd("attack-propose-as")],
            &[None],
        )),
        "Clock" | "ReadIndex" => Ok(Vec::new()),
        "Lease" => postcard::to_allocvec(&LeaseAsk {
            from: sender,
            policies: Vec::new(),
        }),
        other => panic!("no body for {other}"),
    }
    .unwrap()
}

/// The call's code, marked if the target's term moved from `before` to `after` (a refused
/// call must not move it).
fn code_and_term<T>(r: &Result<T, Status>, before: u64, after: u64) -> String {
    let moved = if after != before {
        " (term moved!)"
    } else {
        ""
    };
    format!("{}{moved}", code_of(r))
}

fn code_of<T>(r: &Result<T, Status>) -> String {
    match r {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    }
}

/// Events of streams starting with `prefix` in `node`'s applied log (read with `token`).
async fn events_under(node: &TestNode, token: &str, prefix: &str) -> usize {
    let mut client = node.client().await;
    let (mut count, mut from) = (0, Some(0));
    while let Some(f) = from {
        let page = client
            .read_all(with_token(
                pb::ReadAllRequest {
                    from_position: Some(f),
                    backwards: false,
                    limit: 1000,
                    consistency: pb::Consistency::Local as i32,
                },
                token,
            ))
            .await
            .expect("read_all")
            .into_inner();
        if page.events.is_empty() {
            break;
        }
        count += page
            .events
            .iter()
            .filter(|e| e.stream.starts_with(prefix))
            .count();
        from = page.next;
    }
    count
}

/// The harness's admin calls carry no token: with auth on, the test makes its own.
async fn status(node: &TestNode, token: &str) -> pb::StatusResponse {
    node.admin()
        .await
        .status(with_token(pb::StatusRequest {}, token))
        .await
        .expect("status")
        .into_inner()
}

async fn member(c: &TestCluster, i: usize, token: &str) -> pb::Member {
    pb::Member {
        incarnation: status(&c.nodes[i], token).await.incarnation,
        ..c.member(i)
    }
}

/// Waits until `among` agree on one leader among them; its index.
async fn wait_leader(c: &TestCluster, among: &[usize], token: &str) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for &i in among {
            seen.push((i, status(&c.nodes[i], token).await));
        }
        if let Some((li, l)) = seen.iter().find(|(_, s)| s.role == "leader") {
            let id = c.nodes[*li].id;
            if seen
                .iter()
                .all(|(_, s)| s.leader_id == Some(id) && s.term == l.term)
            {
                return *li;
            }
        }
        assert!(Instant::now() < deadline, "no leader among {among:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client request with a bearer token.
fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_plane_takes_members_node_tokens_only() {
    let mut c = TestCluster::start_uninitialized(0, &[]).await;
    let secret = c.tmp.path().join("dev.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let toml = auth_toml(&secret);
    for _ in 0..3 {
        c.spawn_node_with_config(Some(&toml)).await;
    }
    let writer = mint("w", &[Role::Writer], &[], AUDIENCE);
    let orders_writer = mint("ow", &[Role::Writer], &["orders-"], AUDIENCE);
    let reader = mint("r", &[Role::Reader], &[], AUDIENCE);
    let admin = mint("a", &[Role::Admin], &[], AUDIENCE);
    // Elects and replicates: every heartbeat, vote and clock probe carried a node token.
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(&c, i, &admin).await);
    }
    c.nodes[0]
        .admin()
        .await
        .init(with_token(pb::InitRequest { members }, &admin))
        .await
        .expect("init");
    let leader = wait_leader(&c, &[0, 1, 2], &admin).await;
    let follower = (leader + 1) % 3;
    let other_follower = (leader + 2) % 3;
    let leader_id = c.nodes[leader].id;
    let leader_status = status(&c.nodes[leader], &admin).await;
    let leader_target = format!("{leader_id}:{}", leader_status.incarnation);
    // The cluster adopts its apply rules: a node-own command with no caller, forwarded or not.
    let deadline = Instant::now() + DEADLINE;
    while status(&c.nodes[leader], &admin)
        .await
        .dedupe_window_secs
        .is_none()
    {
        assert!(Instant::now() < deadline, "rules never adopted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peer_id = c.nodes[follower].id;
    let peer_token = mint(&node_subject(peer_id), &[], &[], NODE_AUDIENCE);
    let stranger = mint(&node_subject(9), &[], &[], NODE_AUDIENCE);

    let mut table: Vec<(String, String, String)> = Vec::new();
    let mut wrong = Vec::new();
    let mut record = |case: String, want: &str, got: String| {
        if got != want {
            wrong.push(format!("{case}: want {want}, got {got}"));
        }
        table.push((case, want.to_owned(), got));
    };

    // A write through a follower, with the caller's token: forwarded, authorized again by
    // the leader, applied.
    let mut fc = c.nodes[follower].client().await;
    let r = fc
        .append(with_token(
            append_req("fwd-ok", None, vec![new_event("E", "{}")]),
            &writer,
        ))
        .await;
    record(
        "writer appends through a follower".into(),
        "OK",
        code_of(&r),
    );
    // A reader's write through a follower is refused (by the follower's client plane; the
    // leader would refuse it too, as the forwarded batch below shows).
    let r = fc
        .append(with_token(
            append_req("attack-reader", None, vec![new_event("E", "{}")]),
            &reader,
        ))
        .await;
    record(
        "reader appends through a follower".into(),
        "PermissionDenied",
        code_of(&r),
    );
    assert_eq!(events_under(&c.nodes[leader], &admin, "attack-").await, 0);

    // raft.v1 with a client token (any role), no token, a stranger's node token.
    let term = leader_status.term;
    let targets = [(follower, "follower"), (leader, "leader")];
    let rpcs = [
        "AppendEntries",
        "InstallSnapshot",
        "Vote",
        "Propose",
        "ProposeAs",
        "Lease",
        "Clock",
        "ReadIndex",
    ];
    for rpc in rpcs {
        for (i, where_) in targets {
            let node = &c.nodes[i];
            let attempts: Vec<(String, Option<&str>, &str)> = vec![
                (
                    "reader token".into(),
                    Some(reader.as_str()),
                    "Unauthenticated",
                ),
                (
                    "writer token".into(),
                    Some(writer.as_str()),
                    "Unauthenticated",
                ),
                (
                    "admin token".into(),
                    Some(admin.as_str()),
                    "Unauthenticated",
                ),
                ("no token".into(), None, "Unauthenticated"),
                (
                    "node-9 (not a member)".into(),
                    Some(stranger.as_str()),
                    "PermissionDenied",
                ),
            ];
            for (who, token, want) in attempts {
                let before = status(node, &admin).await.term;
                let r = raft_call(node, rpc, body(rpc, leader_id, term + 100), token, None).await;
                let after = status(node, &admin).await.term;
                record(
                    format!("{rpc} to the {where_}, {who}"),
                    want,
                    code_and_term(&r, before, after),
                );
            }
        }
    }
    // A member speaking for another node.
    let spoofs = [
        (
            "Vote naming another candidate",
            "Vote",
            other_follower,
            leader,
        ),
        (
            "AppendEntries naming another leader",
            "AppendEntries",
            leader,
            other_follower,
        ),
        (
            "Lease with another node's `from`",
            "Lease",
            other_follower,
            leader,
        ),
    ];
    for (case, rpc, named, to) in spoofs {
        let node = &c.nodes[to];
        let target = format!("{}:{}", node.id, status(node, &admin).await.incarnation);
        let before = status(node, &admin).await.term;
        let r = raft_call(
            node,
            rpc,
            body(rpc, c.nodes[named].id, term + 100),
            Some(&peer_token),
            Some(&target),
        )
        .await;
        let after = status(node, &admin).await.term;
        record(
            format!("node {peer_id}'s token: {case}"),
            "PermissionDenied",
            code_and_term(&r, before, after),
        );
    }
    // The control: the same member's own lease request is taken.
    let r = raft_call(
        &c.nodes[leader],
        "Lease",
        body("Lease", peer_id, 0),
        Some(&peer_token),
        Some(&leader_target),
    )
    .await;
    record(
        format!("node {peer_id}'s own Lease, token without tgt (older code)"),
        "OK",
        code_of(&r),
    );
    // Node tokens bound to a member (`tgt`): taken by that member only, so a member that
    // received one cannot replay it to a third in the sender's name.
    let bound = |to: usize| {
        mint_bound(
            &node_subject(peer_id),
            &[],
            &[],
            NODE_AUDIENCE,
            Some(c.nodes[to].id),
        )
    };
    // A leader's entries follow prev_log_id index by index (openraft asserts as much).
    let id =
        |index| openraft::LogId::new(openraft::CommittedLeaderId::new(term + 100, peer_id), index);
    let blank = |index| openraft::Entry::<TypeConfig> {
        log_id: id(index),
        payload: openraft::EntryPayload::Blank,
    };
    let gap = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(term + 100, peer_id),
        prev_log_id: None,
        entries: vec![blank(0), blank(2)],
        leader_commit: None,
    };
    let ahead = term + 100;
    let cases = [
        (
            "Lease",
            "token bound to the leader",
            leader,
            body("Lease", peer_id, 0),
            "OK",
        ),
        (
            "Lease",
            "token bound to another member",
            other_follower,
            body("Lease", peer_id, 0),
            "PermissionDenied",
        ),
        (
            "AppendEntries",
            "token bound to another member",
            other_follower,
            body("AppendEntries", peer_id, ahead),
            "PermissionDenied",
        ),
        // A leader's messages carry its committed vote (openraft sends no other); one that
        // does not is malformed, whoever sends it, and must not reach openraft (whose state
        // asserts a committed vote there). A candidate's Vote carries an uncommitted one.
        (
            "AppendEntries",
            "with an uncommitted vote",
            leader,
            body("AppendEntries", peer_id, ahead),
            "InvalidArgument",
        ),
        (
            "InstallSnapshot",
            "with an uncommitted vote",
            leader,
            body("InstallSnapshot", peer_id, ahead),
            "InvalidArgument",
        ),
        (
            "Vote",
            "with a committed vote",
            leader,
            body_with(
                "Vote",
                peer_id,
                openraft::Vote::new_committed(ahead, peer_id),
            ),
            "InvalidArgument",
        ),
        (
            "AppendEntries",
            "entries with a gap",
            leader,
            postcard::to_allocvec(&gap).unwrap(),
            "InvalidArgument",
        ),
    ];
    for (rpc, case, to, message, want) in cases {
        let before = status(&c.nodes[leader], &admin).await.term;
        let r = raft_call(
            &c.nodes[leader],
            rpc,
            message,
            Some(&bound(to)),
            Some(&leader_target),
        )
        .await;
        let after = status(&c.nodes[leader], &admin).await.term;
        record(
            format!("node {peer_id}'s own {rpc} to the leader, {case}"),
            want,
            code_and_term(&r, before, after),
        );
    }

    // A forwarded batch: each command authorized as its own caller; the refused one gets
    // its own refusal, its neighbours go ahead.
    let batch = ProposeAs::new(
        vec![
            append_cmd("orders-fwd-1"),
            append_cmd("attack-scope"),
            append_cmd("orders-fwd-2"),
            append_cmd("attack-nocaller"),
        ],
        &[
            Some(Arc::from(orders_writer.as_str())),
            Some(Arc::from(orders_writer.as_str())),
            Some(Arc::from(orders_writer.as_str())),
            None,
        ],
    );
    let reply = raft_call(
        &c.nodes[leader],
        "ProposeAs",
        postcard::to_allocvec(&batch).unwrap(),
        Some(&peer_token),
        Some(&leader_target),
    )
    .await
    .expect("ProposeAs");
    let outcomes: Result<Vec<CommandOutcome>, ProposeError> = postcard::from_bytes(&reply).unwrap();
    let outcomes = outcomes.expect("the batch was taken");
    let name = |o: &CommandOutcome| match o {
        CommandOutcome::Append(AppendOutcome::Appended(_)) => "Appended".to_owned(),
        CommandOutcome::Denied(Denial::Forbidden(_)) => "PermissionDenied".to_owned(),
        CommandOutcome::Denied(Denial::Unauthenticated(_)) => "Unauthenticated".to_owned(),
        other => format!("{other:?}"),
    };
    let wants = [
        ("orders- writer, orders-fwd-1", "Appended"),
        ("orders- writer, attack-scope", "PermissionDenied"),
        ("orders- writer, orders-fwd-2", "Appended"),
        ("no caller, attack-nocaller", "Unauthenticated"),
    ];
    assert_eq!(outcomes.len(), wants.len(), "{outcomes:?}");
    for ((case, want), o) in wants.iter().zip(&outcomes) {
        record(format!("forwarded batch: {case}"), want, name(o));
    }

    // Read back on every node, once it applied what the leader committed: the allowed
    // writes are there, nothing of any refused one.
    let deadline = Instant::now() + DEADLINE;
    for node in &c.nodes {
        let applied = || async {
            (
                events_under(node, &admin, "orders-fwd-").await,
                events_under(node, &admin, "fwd-ok").await,
            )
        };
        while applied().await != (2, 1) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        record(
            format!("node {}: events of allowed writes", node.id),
            "(2, 1)",
            format!("{:?}", applied().await),
        );
        record(
            format!("node {}: events of refused writes", node.id),
            "0",
            events_under(node, &admin, "attack-").await.to_string(),
        );
    }

    // A join: the learner being added has no membership yet when the leader's first
    // AppendEntries reach it, and takes them; then it is a member like any other.
    let learner = c.spawn_node_with_config(Some(&toml)).await;
    let leader = wait_leader(&c, &[0, 1, 2], &admin).await;
    let joining = member(&c, learner, &admin).await;
    c.nodes[leader]
        .admin()
        .await
        .add_learner(with_token(
            pb::AddLearnerRequest {
                member: Some(joining),
                blocking: true,
            },
            &admin,
        ))
        .await
        .expect("add learner");
    let learner_id = c.nodes[learner].id;
    let r = c.nodes[learner]
        .client()
        .await
        .append(with_token(
            append_req("fwd-learner", None, vec![new_event("E", "{}")]),
            &writer,
        ))
        .await;
    record(
        "writer appends through the new learner".into(),
        "OK",
        code_of(&r),
    );
    let learner_token = mint(&node_subject(learner_id), &[], &[], NODE_AUDIENCE);
    let leader_target = format!(
        "{}:{}",
        c.nodes[leader].id,
        status(&c.nodes[leader], &admin).await.incarnation
    );
    let clock = |token: String, target: String| {
        let node = &c.nodes[leader];
        async move { raft_call(node, "Clock", Vec::new(), Some(&token), Some(&target)).await }
    };
    let r = clock(learner_token.clone(), leader_target.clone()).await;
    record(
        format!("node {learner_id} (learner): Clock"),
        "OK",
        code_of(&r),
    );
    // A removal: once the membership without it is in the leader's log, it is refused.
    c.nodes[leader]
        .admin()
        .await
        .remove_node(with_token(
            pb::RemoveNodeRequest {
                node_id: learner_id,
            },
            &admin,
        ))
        .await
        .expect("remove the learner");
    // The removal is committed when the call returns; wait until the leader's Raft reports
    // it (its metrics, which the check reads, follow within a loop turn).
    let deadline = Instant::now() + DEADLINE;
    while status(&c.nodes[leader], &admin)
        .await
        .learners
        .iter()
        .any(|m| m.node_id == learner_id)
    {
        assert!(Instant::now() < deadline, "node {learner_id} never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = clock(learner_token, leader_target).await;
    record(
        format!("node {learner_id} (removed): Clock"),
        "PermissionDenied",
        code_of(&r),
    );

    println!("{:<62} {:<18} got", "case", "expected");
    for (case, want, got) in &table {
        println!("{case:<62} {want:<18} {got}");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
