//! Failure detectors: what counts as a failure of a call is the caller's to say, since the
//! same outcome means different things to different callers (`NOT_FOUND` is a healthy peer's
//! answer; `UNAVAILABLE` is not). The breaker sees only the verdict.
//!
//! Three stock detectors: gRPC status codes (as `i32` numbers from the gRPC spec, so this crate
//! needs no gRPC library), I/O error kinds, and latency over a threshold. A caller with other
//! outcomes implements [`FailureDetector`] itself.

use std::io::ErrorKind;

use serde::{Deserialize, Serialize};

use crate::GuardError;

/// Decides whether an outcome is a failure of the callee.
pub trait FailureDetector {
    type Outcome: ?Sized;
    fn is_failure(&self, outcome: &Self::Outcome) -> bool;
}

/// gRPC status codes (0 = OK … 16 = UNAUTHENTICATED) that count as failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpcCodes {
    /// Bit `c` set: code `c` is a failure.
    mask: u32,
}

impl GrpcCodes {
    /// The last code the spec defines (UNAUTHENTICATED).
    pub const MAX_CODE: i32 = 16;
    /// The spec says a code a client does not know is to be taken as UNKNOWN.
    pub const UNKNOWN: i32 = 2;
    /// Codes that say the callee is unwell rather than that the request was wrong: UNKNOWN (2),
    /// DEADLINE_EXCEEDED (4), RESOURCE_EXHAUSTED (8), INTERNAL (13), UNAVAILABLE (14),
    /// DATA_LOSS (15). INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
    /// FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED and
    /// CANCELLED are the caller's business: they do not count.
    pub const DEFAULT_FAILURES: [i32; 6] = [2, 4, 8, 13, 14, 15];

    /// These codes (1..=16) count as failures; OK (0) can never be one.
    pub fn new(codes: &[i32]) -> Result<GrpcCodes, GuardError> {
        let mut mask = 0u32;
        for &c in codes {
            if !(1..=Self::MAX_CODE).contains(&c) {
                return Err(GuardError::policy("failure codes", "gRPC codes 1 to 16"));
            }
            mask |= 1 << c;
        }
        Ok(GrpcCodes { mask })
    }
}

impl Default for GrpcCodes {
    fn default() -> GrpcCodes {
        GrpcCodes::new(&GrpcCodes::DEFAULT_FAILURES).expect("the default codes are valid")
    }
}

impl FailureDetector for GrpcCodes {
    /// The status code of the call (0 when it succeeded).
    type Outcome = i32;
    fn is_failure(&self, code: &i32) -> bool {
        let code = if (0..=Self::MAX_CODE).contains(code) {
            *code
        } else {
            Self::UNKNOWN
        };
        self.mask & (1 << code) != 0
    }
}

/// I/O error kinds that count as failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorKinds {
    kinds: Vec<ErrorKind>,
}

impl ErrorKinds {
    /// A list of kinds is short; a longer one is a mistake.
    pub const MAX_KINDS: usize = 64;

    pub fn new(kinds: &[ErrorKind]) -> Result<ErrorKinds, GuardError> {
        if kinds.len() > Self::MAX_KINDS {
            return Err(GuardError::policy("error kinds", "at most 64"));
        }
        Ok(ErrorKinds {
            kinds: kinds.to_vec(),
        })
    }

    /// The kinds that say the connection or the peer failed (refused, reset, aborted, not
    /// connected, broken pipe, timed out, unexpected end, unreachable): not the kinds a
    /// request's own content causes (invalid input, not found, permission denied, …).
    pub fn transport() -> ErrorKinds {
        ErrorKinds {
            kinds: vec![
                ErrorKind::ConnectionRefused,
                ErrorKind::ConnectionReset,
                ErrorKind::ConnectionAborted,
                ErrorKind::NotConnected,
                ErrorKind::BrokenPipe,
                ErrorKind::TimedOut,
                ErrorKind::UnexpectedEof,
                ErrorKind::HostUnreachable,
                ErrorKind::NetworkUnreachable,
                ErrorKind::NetworkDown,
            ],
        }
    }
}

impl FailureDetector for ErrorKinds {
    /// The kind of the error the call ended with.
    type Outcome = ErrorKind;
    fn is_failure(&self, kind: &ErrorKind) -> bool {
        self.kinds.contains(kind)
    }
}

/// A call slower than `threshold_ns` is a failure, whatever it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowerThan {
    pub threshold_ns: u64,
}

impl FailureDetector for SlowerThan {
    /// The call's latency, ns.
    type Outcome = u64;
    fn is_failure(&self, latency_ns: &u64) -> bool {
        *latency_ns > self.threshold_ns
    }
}
