//! One error type for the cores: a policy that makes no sense, a request larger than its limit
//! can ever admit, and a stored state that does not fit the policy it is restored under. The
//! variants are stable: the wiring maps them to status codes once.

/// What the cores refuse, with the reason in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// A policy setting out of its range (`field` must be `rule`).
    #[error("invalid policy: {field} must be {rule}")]
    InvalidPolicy {
        field: &'static str,
        rule: &'static str,
    },
    /// A request for more than the limit admits even when idle: it can never pass, so it is
    /// an error rather than a refusal with a retry time.
    #[error("a request for {requested} exceeds the limit of {limit}: it can never be admitted")]
    ExceedsLimit { requested: u64, limit: u64 },
    /// A stored state that cannot be restored under this policy.
    #[error("invalid limiter state: {0}")]
    InvalidState(String),
}

impl GuardError {
    pub(crate) fn policy(field: &'static str, rule: &'static str) -> GuardError {
        GuardError::InvalidPolicy { field, rule }
    }
}
