//! The one map from the service layer's errors (and this adapter's own refusals) to GraphQL
//! errors: a message and `extensions.code`.

use async_graphql::ErrorExtensions;

use crate::service::ServiceError;

/// `extensions.code` of a service error.
pub fn code(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Invalid(_) | ServiceError::OutOfRange(_) => BAD_USER_INPUT,
        ServiceError::NotFound(_) => "NOT_FOUND",
        ServiceError::AlreadyExists(_) => "ALREADY_EXISTS",
        ServiceError::WrongExpectedVersion { .. } | ServiceError::FailedPrecondition(_) => {
            "FAILED_PRECONDITION"
        }
        ServiceError::NotLeader { .. }
        | ServiceError::BreakerOpen { .. }
        | ServiceError::Unavailable(_) => "UNAVAILABLE",
        ServiceError::Overloaded(_) => "OVERLOADED",
        ServiceError::RateLimited { .. } => "RATE_LIMITED",
        ServiceError::OutcomeUnknown(_) | ServiceError::Timeout(_) => "TIMEOUT",
        ServiceError::Unauthenticated(_) => "UNAUTHENTICATED",
        ServiceError::Forbidden(_) => "FORBIDDEN",
        ServiceError::Internal(_) => "INTERNAL_SERVER_ERROR",
    }
}

pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
pub const QUERY_TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";

/// A service error as a GraphQL error (a rate limit also says when to come back).
pub fn from_service(e: ServiceError) -> async_graphql::Error {
    let retry = match &e {
        ServiceError::RateLimited { retry_after_ms, .. } if *retry_after_ms != u64::MAX => {
            Some(*retry_after_ms)
        }
        _ => None,
    };
    async_graphql::Error::new(e.to_string()).extend_with(|_, ext| {
        ext.set("code", code(&e));
        if let Some(ms) = retry {
            ext.set("retryAfterMs", ms);
        }
    })
}

/// An argument the adapter itself refuses (a bad zone, a calendar unit without a zone).
pub fn bad_input(msg: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(msg.into()).extend_with(|_, ext| ext.set("code", BAD_USER_INPUT))
}

/// Resolvers' results: the service's errors carried with their codes.
pub trait OrGql<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> OrGql<T> for Result<T, ServiceError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(from_service)
    }
}

impl<T> OrGql<T> for Result<T, String> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(bad_input)
    }
}
