//! Signing tokens: HS256 tokens for development and tests (`aetherctl auth mint`), and the
//! node's own node-plane tokens ([`super::NodeTokens`]) with whatever key the configuration
//! names (an HMAC secret, or a PKCS#8 PEM private key for EdDSA, ES256/ES384 or RS*/PS*).
//! A secret is held to the same rule as the verifier's (at least 32 bytes).

use std::fmt;
use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde::Serialize;

use super::identity::Role;
use super::keys::{check_hmac_secret, read_hmac_secret, KeyError, KeyProblem};

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
    /// `tgt`: the one member a node-plane token is meant for (its node id, decimal). A
    /// member refuses a token bound to another one, so a token one member received cannot
    /// be replayed to a third. `None`: no `tgt` claim.
    pub target: Option<String>,
    /// Seconds since the epoch: `iat` and `nbf`.
    pub now_secs: u64,
    pub ttl_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("secret: {0}")]
    Secret(KeyProblem),
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    tgt: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// A key to sign with: its algorithm and the `kid` its tokens name.
pub struct SigningKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl SigningKey {
    /// An HS256 key from a shared secret of at least 32 bytes.
    pub fn hs256(secret: &[u8], kid: Option<String>) -> Result<SigningKey, MintError> {
        check_hmac_secret(secret).map_err(MintError::Secret)?;
        Ok(SigningKey {
            kid,
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// The key in `path` for `algorithm`: for an HMAC algorithm the file holds the secret
    /// (as `hmac_secret_file` does), else a PEM private key (PKCS#8 `PRIVATE KEY`; RSA also
    /// `RSA PRIVATE KEY`, EC also `EC PRIVATE KEY`).
    pub fn from_file(
        path: &Path,
        algorithm: Algorithm,
        kid: Option<String>,
    ) -> Result<SigningKey, MintError> {
        let bad = |why: String| {
            MintError::Key(KeyError::Key {
                kid: kid.clone().unwrap_or_default(),
                problem: KeyProblem::BadKey {
                    family: "signing",
                    why,
                },
            })
        };
        let key = match algorithm.family() {
            AlgorithmFamily::Hmac => {
                let secret = read_hmac_secret(path)?;
                check_hmac_secret(&secret).map_err(MintError::Secret)?;
                EncodingKey::from_secret(&secret)
            }
            family => {
                let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let parsed = match family {
                    AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
                    AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                    _ => EncodingKey::from_rsa_pem(&pem),
                };
                parsed.map_err(|e| bad(format!("{}: {e}", path.display())))?
            }
        };
        Ok(SigningKey {
            kid,
            algorithm,
            key,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A signed token for `req` (its `kid` is this key's, whatever `req.kid` says).
    pub fn mint(&self, req: &MintRequest) -> Result<String, MintError> {
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
            tgt: req.target.as_deref(),
            iat: req.now_secs,
            nbf: req.now_secs,
            exp: req.now_secs.saturating_add(req.ttl_secs),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// A signed HS256 token for `req`.
pub fn mint_hs256(secret: &[u8], req: &MintRequest) -> Result<String, MintError> {
    SigningKey::hs256(secret, req.kid.clone())?.mint(req)
}
