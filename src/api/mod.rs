//! The gRPC and HTTP adapters over the service layer: each handler decodes the request into
//! core types, calls one operation of [`Service`](crate::service::Service), and encodes the
//! answer. Errors become status codes in one place ([`status`]).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod eventstore;
pub mod graphql;
pub mod http;
pub mod telemetry;
pub mod workflow;

use tonic::{Code, Request, Status};

use crate::service::{Caller, ServiceError};

/// Header carrying the leader's gRPC address on `UNAVAILABLE` "not the leader" replies.
pub const LEADER_HEADER: &str = "x-aether-leader";
/// Trailer carrying, on `RESOURCE_EXHAUSTED` from a rate limit, the milliseconds to wait
/// before retrying.
pub const RETRY_AFTER_HEADER: &str = "retry-after-ms";
/// Header carrying the stream's current version on expected-version conflicts ("none": no
/// stream).
pub const CURRENT_VERSION_HEADER: &str = "x-aether-current-version";

/// The caller of a gRPC request: the identity [`auth::ClientAuth`] verified, or anonymous
/// when authentication is off (the service layer refuses anonymous callers when it is on).
pub(crate) fn caller<T>(req: &Request<T>) -> Caller {
    match req.extensions().get::<auth::Authenticated>() {
        Some(a) => Caller::user(a.identity.clone(), a.token.clone(), req.remote_addr()),
        None => Caller::anonymous(req.remote_addr()),
    }
}

/// The one place service errors become status codes.
pub fn status(e: ServiceError) -> Status {
    let code = match &e {
        ServiceError::Invalid(_) => Code::InvalidArgument,
        ServiceError::NotFound(_) => Code::NotFound,
        ServiceError::OutOfRange(_) => Code::OutOfRange,
        ServiceError::AlreadyExists(_) => Code::AlreadyExists,
        ServiceError::WrongExpectedVersion { .. } | ServiceError::FailedPrecondition(_) => {
            Code::FailedPrecondition
        }
        ServiceError::NotLeader { .. }
        | ServiceError::BreakerOpen { .. }
        | ServiceError::Unavailable(_) => Code::Unavailable,
        ServiceError::Overloaded(_) | ServiceError::RateLimited { .. } => Code::ResourceExhausted,
        ServiceError::OutcomeUnknown(_) | ServiceError::Timeout(_) => Code::DeadlineExceeded,
        ServiceError::Unauthenticated(_) => Code::Unauthenticated,
        ServiceError::Forbidden(_) => Code::PermissionDenied,
        ServiceError::Internal(_) => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    match &e {
        ServiceError::NotLeader {
            leader: Some((_, info)),
        }
        | ServiceError::BreakerOpen {
            leader: (_, info), ..
        } => {
            if let Ok(v) = info.grpc_addr.parse() {
                status.metadata_mut().insert(LEADER_HEADER, v);
            }
        }
        ServiceError::WrongExpectedVersion { current, .. } => {
            let value = current.map_or("none".to_owned(), |v| v.to_string());
            if let Ok(v) = value.parse() {
                status.metadata_mut().insert(CURRENT_VERSION_HEADER, v);
            }
        }
        ServiceError::RateLimited { retry_after_ms, .. } => {
            if let Ok(v) = retry_after_ms.to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER_HEADER, v);
            }
        }
        _ => {}
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::NodeInfo;

    /// Every kind of service error, its code, and the headers a client acts on.
    #[test]
    fn each_service_error_has_one_code_and_its_headers() {
        let leader = NodeInfo {
            grpc_addr: "127.0.0.1:7001".into(),
            ..Default::default()
        };
        let cases = [
            (ServiceError::invalid("x"), Code::InvalidArgument, None),
            (ServiceError::NotFound("x".into()), Code::NotFound, None),
            (ServiceError::OutOfRange("x".into()), Code::OutOfRange, None),
            (
                ServiceError::AlreadyExists("x".into()),
                Code::AlreadyExists,
                None,
            ),
            (
                ServiceError::WrongExpectedVersion {
                    message: "x".into(),
                    current: Some(7),
                },
                Code::FailedPrecondition,
                Some((CURRENT_VERSION_HEADER, "7")),
            ),
            (
                ServiceError::WrongExpectedVersion {
                    message: "x".into(),
                    current: None,
                },
                Code::FailedPrecondition,
                Some((CURRENT_VERSION_HEADER, "none")),
            ),
            (
                ServiceError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
                None,
            ),
            (
                ServiceError::NotLeader {
                    leader: Some((2, leader.clone())),
                },
                Code::Unavailable,
                Some((LEADER_HEADER, "127.0.0.1:7001")),
            ),
            (
                ServiceError::BreakerOpen {
                    leader: (2, leader.clone()),
                    message: "the circuit breaker to node 2 is open".into(),
                },
                Code::Unavailable,
                Some((LEADER_HEADER, "127.0.0.1:7001")),
            ),
            (
                ServiceError::NotLeader { leader: None },
                Code::Unavailable,
                None,
            ),
            (
                ServiceError::Unavailable("x".into()),
                Code::Unavailable,
                None,
            ),
            (
                ServiceError::Overloaded("x".into()),
                Code::ResourceExhausted,
                None,
            ),
            (
                ServiceError::OutcomeUnknown("x".into()),
                Code::DeadlineExceeded,
                None,
            ),
            (
                ServiceError::Timeout("x".into()),
                Code::DeadlineExceeded,
                None,
            ),
            (ServiceError::Internal("x".into()), Code::Internal, None),
        ];
        for (e, code, header) in cases {
            let kind = e.kind();
            let s = status(e.clone());
            assert_eq!(s.code(), code, "{e:?}");
            assert_eq!(
                format!("{:?}", s.code()).to_uppercase(),
                kind.replace('_', ""),
                "{e:?}"
            );
            assert_eq!(s.message(), e.to_string());
            match header {
                Some((name, value)) => {
                    assert_eq!(s.metadata().get(name).unwrap().to_str().unwrap(), value)
                }
                None => {
                    assert!(s.metadata().get(LEADER_HEADER).is_none());
                    assert!(s.metadata().get(CURRENT_VERSION_HEADER).is_none());
                    assert!(s.metadata().get(RETRY_AFTER_HEADER).is_none());
                }
            }
        }
    }
}
