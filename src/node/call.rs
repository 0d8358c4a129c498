//! What a failed gRPC call says about its request: the peer answered it, it never left this
//! process, or it may have reached the peer. For a write the difference is everything: only
//! the first two prove what happened to it; after the third its outcome is unknown, and only a
//! retry with the same ids (idempotency) settles it. Used wherever a write crosses a
//! connection: the proposer forwarding batches to the leader, the API forwarding requests, and
//! `aetherctl` reporting failures.

use std::error::Error;

use tonic::Status;

/// How a call failed, as far as the request is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// The peer answered with this status: its own verdict on the request.
    Answered,
    /// No connection could be made: the request never left this process.
    NotSent,
    /// The transport failed once the connection was up (a reset, an HTTP/2 keep-alive timeout,
    /// a local deadline): the peer may have received the request and acted on it.
    MaybeSent,
}

/// Classifies a failed call's status. A status the peer sent carries no source error; one
/// tonic made from a local transport failure carries the failure as its source, and only a
/// connect error in that chain — or a refusal of the peer's circuit breaker — proves the
/// request was not sent.
pub fn classify(s: &Status) -> CallFailure {
    let mut source = s.source();
    if source.is_none() {
        return CallFailure::Answered;
    }
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() || e.is::<crate::raft::breakers::BreakerOpen>() {
            return CallFailure::NotSent;
        }
        source = e.source();
    }
    CallFailure::MaybeSent
}

/// The messages of an error's source chain, for people: each once (wrappers often repeat
/// their source's message), without tonic's and hyper's generic wrapper words.
pub fn chain_detail(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(e);
    while let Some(err) = source {
        let msg = err.to_string();
        if !is_generic(&msg) && !parts.iter().any(|p| p.contains(msg.as_str())) {
            parts.push(msg);
        }
        source = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Words that say an error happened but not which: tonic's and hyper's wrappers.
fn is_generic(msg: &str) -> bool {
    const GENERIC: [&str; 4] = [
        "transport error",
        "tcp connect error",
        "error trying to connect",
        "client error (Connect)",
    ];
    msg.is_empty() || GENERIC.contains(&msg)
}

/// A failed call's status in words: the peer's message when it answered, else what failed
/// in the transport.
pub fn status_detail(s: &Status) -> String {
    match s.source() {
        None => format!("{:?}: {}", s.code(), s.message()),
        Some(src) => {
            let detail = chain_detail(src);
            if is_generic(s.message()) || detail.contains(s.message()) {
                detail
            } else {
                format!("{}: {detail}", s.message())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_connect_error_anywhere_in_the_chain_means_not_sent() {
        let s = Status::from_error(Box::new(tonic::ConnectError(Box::new(Error::from(
            ErrorKind::ConnectionRefused,
        )))));
        assert_eq!(classify(&s), CallFailure::NotSent);
        assert_eq!(status_detail(&s), "connection refused");
    }

    #[test]
    fn a_breaker_refusal_means_not_sent() {
        let s = crate::raft::breakers::into_status(crate::raft::breakers::BreakerOpen {
            peer: 1,
            state: crate::guard::State::Open,
            reset_ms: 1000,
        });
        assert_eq!(classify(&s), CallFailure::NotSent);
    }

    #[test]
    fn statuses_without_a_source_were_answered_by_the_peer() {
        assert_eq!(
            classify(&Status::unavailable("not the leader")),
            CallFailure::Answered
        );
        assert_eq!(
            status_detail(&Status::unavailable("not the leader")),
            "Unavailable: not the leader"
        );
    }

    #[test]
    fn transport_failures_after_connecting_may_have_been_sent() {
        let mut keep_alive = Status::unavailable("keep-alive timed out");
        keep_alive.set_source(Arc::new(Error::new(
            ErrorKind::TimedOut,
            "keep-alive timed out",
        )));
        let reset = Status::from_error(Box::new(Error::from(ErrorKind::ConnectionReset)));
        let h2_reset = Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        for s in [keep_alive, reset, h2_reset] {
            assert_eq!(classify(&s), CallFailure::MaybeSent, "{s:?}");
        }
    }

    #[test]
    fn chain_details_name_each_cause_once() {
        #[derive(Debug)]
        struct Wrap(&'static str, Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        let e = Wrap(
            "tcp connect error",
            Error::new(
                ErrorKind::ConnectionRefused,
                "Connection refused (os error 111)",
            ),
        );
        assert_eq!(chain_detail(&e), "Connection refused (os error 111)");
    }
}
