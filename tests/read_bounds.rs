//! Memory bounded by bytes, on a real node (issue 9, point 7): read pages end at a byte
//! budget and paging still reaches every event once; subscriptions are limited in number
//! and deliver large events whole.

mod common;

use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// The node's default `max_read_bytes`.
const MAX_READ_BYTES: usize = 3 << 20;
/// 24 events of 700 KB: 16.8 MB, four times what a gRPC client accepts in one reply.
const BIG_EVENTS: usize = 24;
const BIG: usize = 700_000;

fn big_event(i: usize) -> pb::NewEvent {
    let mut e = new_event("Blob", "");
    let mut payload = vec![b'x'; BIG];
    payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
    e.payload = payload.into();
    e
}

/// Stream "big": 24 large events; stream "small": one small event after each append.
async fn store_big_events(node: &TestNode) {
    let mut c = node.client().await;
    for a in 0..BIG_EVENTS / 4 {
        let events = (4 * a..4 * a + 4).map(big_event).collect();
        c.append(append_req("big", None, events)).await.unwrap();
        c.append(append_req("small", None, vec![new_event("Tick", "{}")]))
            .await
            .unwrap();
    }
}

/// Pages until `next` is unset, checking each page against the byte budget (one event
/// may exceed it alone); returns the events in the order read.
async fn page_through<F, Fut>(mut read: F) -> Vec<pb::RecordedEvent>
where
    F: FnMut(Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::ReadResponse>, tonic::Status>>,
{
    let mut out = Vec::new();
    let mut from = None;
    for _ in 0..1000 {
        let page = read(from).await.expect("read").into_inner();
        let bytes: usize = page.events.iter().map(|e| e.payload.len()).sum();
        assert!(
            page.events.len() == 1 || bytes <= MAX_READ_BYTES,
            "a page of {} events carries {bytes} payload bytes",
            page.events.len()
        );
        out.extend(page.events);
        match page.next {
            Some(n) => from = Some(n),
            None => return out,
        }
    }
    panic!("paging did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_large_events_come_in_pages_bounded_by_bytes() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    store_big_events(&node).await;
    // A plain client: it accepts replies of up to 4 MiB, as gRPC clients do by default.
    let c = node.client().await;
    for backwards in [false, true] {
        let events = page_through(|from| {
            let mut c = c.clone();
            async move {
                c.read_stream(pb::ReadStreamRequest {
                    stream: "big".into(),
                    from_version: from,
                    backwards,
                    limit: 1000,
                    consistency: 0,
                })
                .await
            }
        })
        .await;
        let mut versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        if backwards {
            versions.reverse();
        }
        assert_eq!(versions, (0..BIG_EVENTS as u64).collect::<Vec<_>>());

        let events = page_through(|from| {
            let mut c = c.clone();
            async move {
                c.read_all(pb::ReadAllRequest {
                    from_position: from,
                    backwards,
                    limit: 0,
                    consistency: 0,
                })
                .await
            }
        })
        .await;
        let mut positions: Vec<u64> = events.iter().map(|e| e.global_position).collect();
        if backwards {
            positions.reverse();
        }
        let all = (BIG_EVENTS + BIG_EVENTS / 4) as u64;
        assert_eq!(positions, (0..all).collect::<Vec<_>>());
        let big = events.iter().filter(|e| e.stream == "big").count();
        assert_eq!(big, BIG_EVENTS);
    }
}

async fn subscribe(
    node: &TestNode,
    stream: &str,
) -> Result<tonic::Streaming<pb::SubscribeResponse>, tonic::Status> {
    node.client()
        .await
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Stream(stream.into())),
            from: Some(0),
        })
        .await
        .map(|r| r.into_inner())
}

/// Reads a subscription until it is caught up; returns the stream versions it delivered.
async fn until_caught_up(s: &mut tonic::Streaming<pb::SubscribeResponse>) -> Vec<u64> {
    let mut versions = Vec::new();
    loop {
        let item = tokio::time::timeout(DEADLINE, s.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("subscription failed");
        match item.kind {
            Some(pb::subscribe_response::Kind::Event(e)) => versions.push(e.stream_version),
            Some(pb::subscribe_response::Kind::CaughtUp(_)) => return versions,
            None => panic!("empty subscription item"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_limit_are_refused_and_large_events_arrive_whole() {
    let node = NodeBuilder::dev()
        .config("max_subscriptions = 2\nsubscriber_buffer_bytes = 500000\n")
        .start();
    node.wait_leader().await;
    store_big_events(&node).await;

    // Events larger than the subscriber's byte buffer still arrive, each once, in order.
    let mut first = subscribe(&node, "big").await.expect("first subscription");
    assert_eq!(
        until_caught_up(&mut first).await,
        (0..BIG_EVENTS as u64).collect::<Vec<_>>()
    );
    let mut second = subscribe(&node, "small")
        .await
        .expect("second subscription");
    assert_eq!(until_caught_up(&mut second).await.len(), BIG_EVENTS / 4);

    let refused = subscribe(&node, "small").await.expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_subscriptions"),
        "{}",
        refused.message()
    );

    // A subscriber that leaves frees its slot (once the node notices it is gone).
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    let mut third = loop {
        match subscribe(&node, "small").await {
            Ok(s) => break s,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the freed slot was not given out: {e:?}"),
        }
    };
    assert_eq!(until_caught_up(&mut third).await.len(), BIG_EVENTS / 4);
}
