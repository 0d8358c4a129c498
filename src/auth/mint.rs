//! HS256 tokens for development and tests (`aetherctl auth mint`): the claims a node reads,
//! signed with a shared secret held to the same rule as the node's (at least 32 bytes).

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use super::identity::Role;
use super::keys::{check_hmac_secret, KeyProblem};

/// What to put in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    pub subject: String,
    pub roles: Vec<Role>,
    /// Empty: no stream scope.
    pub stream_prefixes: Vec<String>,
    /// Empty: no series scope.
    pub series_prefixes: Vec<String>,
    pub issuer: String,
    pub audience: String,
    pub kid: Option<String>,
    /// Seconds since the epoch: `iat` and `nbf`.
    pub now_secs: u64,
    pub ttl_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("secret: {0}")]
    Secret(KeyProblem),
    #[error("--sub must not be empty")]
    NoSubject,
    #[error("--ttl must be at least one second")]
    NoTtl,
    #[error("encoding the token: {0}")]
    Encode(#[from] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    roles: &'a [Role],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    streams: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    series: &'a [String],
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// A signed HS256 token for `req`.
pub fn mint_hs256(secret: &[u8], req: &MintRequest) -> Result<String, MintError> {
    check_hmac_secret(secret).map_err(MintError::Secret)?;
    if req.subject.is_empty() {
        return Err(MintError::NoSubject);
    }
    if req.ttl_secs == 0 {
        return Err(MintError::NoTtl);
    }
    let claims = Claims {
        sub: &req.subject,
        roles: &req.roles,
        streams: &req.stream_prefixes,
        series: &req.series_prefixes,
        iss: &req.issuer,
        aud: &req.audience,
        iat: req.now_secs,
        nbf: req.now_secs,
        exp: req.now_secs.saturating_add(req.ttl_secs),
    };
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = req.kid.clone();
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}
