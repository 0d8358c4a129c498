//! Authentication and authorization, transport-neutral: JWT bearer tokens verified against a
//! key set ([`Verifier`]), the caller they name ([`Identity`]), and what that caller may do
//! ([`Identity::authorize`]). The adapters (gRPC, HTTP, GraphQL, the node-to-node service)
//! hand it the token string and the plane it arrived on; they map [`AuthError`] to their
//! status codes (`Unauthenticated` → `UNAUTHENTICATED` / 401, `Forbidden` →
//! `PERMISSION_DENIED` / 403).
//!
//! Decisions (see also ARCHITECTURE.md):
//! - A token without a `kid` is accepted only while exactly one key is configured: with
//!   several, which key to try would be a guess, and trying each would let a token pick
//!   the weakest.
//! - `kid` is only ever a key of a map (never a path, never fetched, never echoed back).
//! - `jku`, `x5u` and an embedded `jwk` are ignored: keys come from the configuration only.
//! - `crit` is refused (no extension is understood); `typ`, if present, is `JWT` or `at+jwt`.
//! - A token that names any scope (`streams` or `series`) is confined to it: a token with only
//!   stream prefixes touches no series, and no cluster-wide resource.
//! - Nothing here logs a token; the verification cache is keyed by its SHA-256.

mod cache;
mod error;
mod identity;
pub mod keys;
mod mint;
mod node_token;
mod verify;

#[cfg(test)]
mod attack_tests;

pub use error::{AuthError, Denied, Reason};
pub use identity::{Access, Identity, Resource, Role};
pub use keys::{
    read_hmac_secret, KeyError, KeySet, KeySource, KeySources, KeySpec, MAX_KEYS,
    MIN_HMAC_SECRET_BYTES,
};
pub use mint::{mint_hs256, MintError, MintRequest, SigningKey};
pub use node_token::{node_id_of, node_subject, NodeTokens};
pub use verify::{
    Plane, Policy, Verifier, DEFAULT_CACHE_ENTRIES, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_TOKEN_BYTES,
};

/// The algorithm names the configuration accepts.
pub use jsonwebtoken::Algorithm;
