//! A fault-injecting TCP proxy in front of one node: peers reach the node through it, and
//! a test cuts links by source IP (every node connects from its own 127.0.0.x address).
//! Cutting a link also severs the connections already open over it. The proxy counts the
//! bytes each source sent through it, so a test can cut a link once a request has passed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    target: Option<SocketAddr>,
    blocked: HashSet<IpAddr>,
    conns: Vec<(IpAddr, AbortHandle)>,
    /// Bytes forwarded to the target, by source IP.
    sent: HashMap<IpAddr, Arc<AtomicU64>>,
}

/// Copies one direction of a connection, counting what was handed on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(c) = &counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let (target, blocked, counter) = {
                    let mut s = st.lock().unwrap();
                    let counter = s.sent.entry(peer.ip()).or_default().clone();
                    (s.target, s.blocked.contains(&peer.ip()), counter)
                };
                let Some(target) = target.filter(|_| !blocked) else {
                    drop(inbound);
                    continue;
                };
                let task = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, Some(counter)),
                        pump(out_read, in_write, None)
                    );
                });
                let mut s = st.lock().unwrap();
                s.conns.retain(|(_, h)| !h.is_finished());
                s.conns.push((peer.ip(), task.abort_handle()));
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn set_target(&self, target: &str) {
        self.state.lock().unwrap().target = Some(target.parse().expect("target addr"));
    }

    /// Cuts the link from `src` to this proxy's node, including open connections.
    pub fn block(&self, src: IpAddr) {
        let mut s = self.state.lock().unwrap();
        s.blocked.insert(src);
        for (ip, h) in &s.conns {
            if *ip == src {
                h.abort();
            }
        }
    }

    /// Bytes `src` has sent through this proxy to its node so far.
    pub fn bytes_from(&self, src: IpAddr) -> u64 {
        self.state
            .lock()
            .unwrap()
            .sent
            .get(&src)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn unblock_all(&self) {
        self.state.lock().unwrap().blocked.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, h) in &self.state.lock().unwrap().conns {
            h.abort();
        }
    }
}
