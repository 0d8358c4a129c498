//! What a refused token or a refused action says. The messages name what is wrong (expired,
//! wrong audience, unknown key, …) so that a caller can fix it, but never which part of a
//! signature check failed (an oracle for forging) and never echo the token or its `kid`.

use std::fmt;

use crate::limits::Method;

use super::identity::Role;
use super::verify::Plane;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable credential: the caller should present another token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(Reason),
    /// A valid token that lacks the role or the scope for this action.
    #[error("permission denied: {0}")]
    Forbidden(Denied),
}

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No token, or an empty one.
    Missing,
    /// Longer than the configured maximum; refused before any decoding.
    TooLarge { bytes: usize, max: usize },
    /// Not three base64url segments, or a header that is not a JSON object.
    Malformed(&'static str),
    /// `alg: none` in any spelling: an unsigned token.
    AlgNone,
    /// An `alg` this node does not implement.
    UnsupportedAlgorithm,
    /// An `alg` the key named by `kid` is not allowed for.
    AlgorithmNotAllowed(jsonwebtoken::Algorithm),
    /// No configured key has this `kid`.
    UnknownKey,
    /// No `kid`, and several keys are configured.
    KeyIdRequired,
    /// A `crit` header: extensions this node does not understand.
    CriticalHeader,
    /// A `typ` other than `JWT` / `at+jwt`.
    WrongType,
    /// The signature does not verify with the key.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` is not this plane's audience.
    WrongAudience,
    /// `aud` is the other plane's audience: a node-plane token on the client API, or the
    /// other way round.
    WrongPlane { token_for: Plane, sent_to: Plane },
    /// A required claim is absent (or, for `iss`/`aud`, not a string).
    MissingClaim(&'static str),
    /// A claim of the wrong type or value.
    BadClaim {
        claim: &'static str,
        why: &'static str,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => f.write_str("no bearer token"),
            Reason::TooLarge { bytes, max } => {
                write!(f, "token of {bytes} bytes is over the limit of {max}")
            }
            Reason::Malformed(why) => write!(f, "malformed token: {why}"),
            Reason::AlgNone => f.write_str("unsigned token (alg none) refused"),
            Reason::UnsupportedAlgorithm => f.write_str("unsupported signing algorithm"),
            Reason::AlgorithmNotAllowed(alg) => {
                write!(f, "algorithm {alg:?} is not allowed for this key")
            }
            Reason::UnknownKey => f.write_str("unknown signing key (kid)"),
            Reason::KeyIdRequired => {
                f.write_str("the token names no key (kid) and several keys are configured")
            }
            Reason::CriticalHeader => {
                f.write_str("critical header extensions (crit) are not supported")
            }
            Reason::WrongType => f.write_str("token type (typ) must be JWT"),
            Reason::BadSignature => f.write_str("invalid signature"),
            Reason::Expired => f.write_str("token expired"),
            Reason::NotYetValid => f.write_str("token not valid yet (nbf)"),
            Reason::WrongIssuer => f.write_str("wrong issuer (iss)"),
            Reason::WrongAudience => f.write_str("wrong audience (aud)"),
            Reason::WrongPlane { token_for, sent_to } => write!(
                f,
                "a token for the {token_for} plane is not accepted on the {sent_to} plane"
            ),
            Reason::MissingClaim(c) => write!(f, "claim {c} is missing or of the wrong type"),
            Reason::BadClaim { claim, why } => write!(f, "claim {claim} {why}"),
        }
    }
}

/// Why a valid token may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The action needs a role the token does not hold (nor one that implies it).
    Role { action: Method, needs: Role },
    /// A resource outside the token's stream or series prefixes.
    Scope { resource: String },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Role { action, needs } => {
                write!(f, "{action} needs the {needs} role")
            }
            Denied::Scope { resource } => {
                write!(f, "{resource} is outside the token's scope")
            }
        }
    }
}
