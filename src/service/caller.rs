//! Who is asking. Every operation of the service layer receives its caller: authorization
//! and rate limits key on it. Until authentication lands every caller is anonymous; the peer
//! address is kept so that limits can key on it meanwhile.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The identity a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// No credential was presented (authentication is not configured yet).
    Anonymous,
}

/// The caller of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub principal: Principal,
    /// Where the request came from, when the transport knows.
    pub peer: Option<SocketAddr>,
}

impl Caller {
    pub fn anonymous(peer: Option<SocketAddr>) -> Self {
        Caller {
            principal: Principal::Anonymous,
            peer,
        }
    }
}
