//! A fault-injecting TCP proxy in front of one node: peers reach the node through it, and
//! a test cuts links by source IP (every node connects from its own 127.0.0.x address).
//! Cutting a link also severs the connections already open over it.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    target: Option<SocketAddr>,
    blocked: HashSet<IpAddr>,
    conns: Vec<(IpAddr, AbortHandle)>,
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
                let (target, blocked) = {
                    let s = st.lock().unwrap();
                    (s.target, s.blocked.contains(&peer.ip()))
                };
                let Some(target) = target.filter(|_| !blocked) else {
                    drop(inbound);
                    continue;
                };
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let mut inbound = inbound;
                    let _ = inbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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
