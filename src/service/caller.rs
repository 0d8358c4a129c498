//! Who is asking. Every operation of the service layer receives its caller: authorization
//! and rate limits key on it. With authentication off (`--dev`, or `[auth]` not enabled)
//! every caller is anonymous and limits key on the peer's address.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Identity;

/// The identity a request was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off on this node: no credential is asked for.
    Anonymous,
    /// The caller a verified token names.
    User(Arc<Identity>),
}

/// The caller of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// Where the request came from, when the transport knows.
    pub peer: Option<SocketAddr>,
    /// The bearer token as presented, kept so that a write this node forwards to the leader
    /// carries the caller's own credential (the leader authorizes it again).
    pub token: Option<Arc<str>>,
}

impl Caller {
    pub fn anonymous(peer: Option<SocketAddr>) -> Self {
        Caller {
            principal: Principal::Anonymous,
            peer,
            token: None,
        }
    }

    /// A caller whose `token` verified as `identity`.
    pub fn user(identity: Arc<Identity>, token: Arc<str>, peer: Option<SocketAddr>) -> Self {
        Caller {
            principal: Principal::User(identity),
            peer,
            token: Some(token),
        }
    }

    /// The verified identity, if authentication is on.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.principal {
            Principal::Anonymous => None,
            Principal::User(id) => Some(id),
        }
    }
}
