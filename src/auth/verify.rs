//! Token verification. Order matters: the size first (before any decoding), then the header
//! (its `alg` against the allow-list of the key its `kid` names, `crit`, `typ`), then the
//! signature, and only then the claims — so nothing an unsigned or forged token says is
//! believed. jsonwebtoken checks the signature, `exp`, `nbf`, `iss` and `aud`; the header
//! rules and the claims of an [`Identity`] are checked here.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::cache::{self, VerifiedCache};
use super::error::{AuthError, Reason};
use super::identity::{Identity, Role};
use super::keys::{KeyError, KeySet, KeySources};

/// Largest token accepted by default: a token with a few dozen scopes is ~1 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 << 10;
/// Clock difference tolerated on `exp` and `nbf` by default.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Verified tokens remembered by default.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// Longest `sub` accepted.
const MAX_SUBJECT_BYTES: usize = 256;

/// Where a token is presented: the client API, or the node-to-node service. Each has its
/// own audience, so a token for one is refused on the other whatever its roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Plane {
    Client = 1,
    Node = 2,
}

impl fmt::Display for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plane::Client => "client",
            Plane::Node => "node",
        })
    }
}

/// What a token must say to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `iss`, matched exactly.
    pub issuer: String,
    /// `aud` on the client plane.
    pub audience: String,
    /// `aud` on the node plane (distinct from `audience`).
    pub node_audience: String,
    pub leeway_secs: u64,
    pub max_token_bytes: usize,
    /// Verified tokens remembered (0: none).
    pub cache_entries: usize,
}

impl Policy {
    fn audience_of(&self, plane: Plane) -> &str {
        match plane {
            Plane::Client => &self.audience,
            Plane::Node => &self.node_audience,
        }
    }
}

/// A key set and the tokens verified with it: a reload replaces both at once, so a token
/// verified with a removed key is not served from the cache afterwards.
struct Loaded {
    sources: KeySources,
    keys: KeySet,
    cache: Mutex<VerifiedCache>,
}

/// Verifies tokens against the configured keys; shared by every adapter.
pub struct Verifier {
    policy: Policy,
    current: RwLock<Arc<Loaded>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .field("kids", &self.kids())
            .finish()
    }
}

/// The parts of a header this node reads; the others (`jku`, `x5u`, `jwk`, …) are ignored.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_base64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Verifier {
    /// Loads the keys; fails if any key is bad.
    pub fn new(policy: Policy, sources: KeySources) -> Result<Verifier, KeyError> {
        let keys = KeySet::load(&sources)?;
        let current = RwLock::new(Arc::new(Loaded {
            sources,
            keys,
            cache: Mutex::new(VerifiedCache::new(policy.cache_entries)),
        }));
        Ok(Verifier { policy, current })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The key ids in force.
    pub fn kids(&self) -> Vec<String> {
        self.loaded().keys.kids()
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the key files again and puts the new set in force at once, with an empty
    /// cache. On any error the keys in force stay as they were, and the error says why.
    /// Returns the key ids now in force.
    pub fn reload(&self) -> Result<Vec<String>, KeyError> {
        let sources = self.loaded().sources.clone();
        self.reload_from(sources)
    }

    /// [`Verifier::reload`] from other sources (a configuration read again): the sources
    /// too are replaced only if every key loads.
    pub fn reload_from(&self, sources: KeySources) -> Result<Vec<String>, KeyError> {
        let keys = KeySet::load(&sources)?;
        let kids = keys.kids();
        let fresh = Arc::new(Loaded {
            sources,
            keys,
            cache: Mutex::new(VerifiedCache::new(self.policy.cache_entries)),
        });
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(kids)
    }

    /// The identity `token` names, if it is valid on `plane`.
    pub fn verify(&self, token: &str, plane: Plane) -> Result<Arc<Identity>, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Unauthenticated(Reason::Missing));
        }
        if token.len() > self.policy.max_token_bytes {
            return Err(AuthError::Unauthenticated(Reason::TooLarge {
                bytes: token.len(),
                max: self.policy.max_token_bytes,
            }));
        }
        let loaded = self.loaded();
        let key = cache::key(plane, token);
        let lock = |c: &Mutex<VerifiedCache>| {
            // A panic while holding it cannot leave the cache inconsistent in a way that
            // admits a token: entries are only ever whole verified identities.
            c.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key, now_secs())
        };
        if let Some(id) = lock(&loaded.cache) {
            return Ok(id);
        }
        let identity = Arc::new(
            self.check(&loaded.keys, token, plane)
                .map_err(AuthError::Unauthenticated)?,
        );
        let valid_until = identity.expires_at.saturating_add(self.policy.leeway_secs);
        loaded
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, identity.clone(), valid_until);
        Ok(identity)
    }

    fn check(&self, keys: &KeySet, token: &str, plane: Plane) -> Result<Identity, Reason> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::Malformed("a token has three dot-separated parts"));
        };
        let header = parse_header(header)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(Reason::AlgNone);
        }
        if payload.is_empty() || signature.is_empty() {
            return Err(Reason::Malformed("empty payload or signature"));
        }
        if !is_base64url(payload) || !is_base64url(signature) {
            return Err(Reason::Malformed("not base64url without padding"));
        }
        if header.crit.is_some() {
            return Err(Reason::CriticalHeader);
        }
        if let Some(typ) = &header.typ {
            let ok = ["JWT", "at+jwt", "application/at+jwt"]
                .iter()
                .any(|t| typ.eq_ignore_ascii_case(t));
            if !ok {
                return Err(Reason::WrongType);
            }
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| Reason::UnsupportedAlgorithm)?;
        let key = keys.select(header.kid.as_deref())?;
        if !key.algorithms.contains(&alg) {
            return Err(Reason::AlgorithmNotAllowed(alg));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.policy.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&self.policy.issuer]);
        v.set_audience(&[self.policy.audience_of(plane)]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &v)
            .map_err(|e| self.reason_of(e.kind(), payload, plane))?;
        let identity = self.identity(&data.claims, plane)?;
        if plane == Plane::Node && key.node.is_none() && !key.node_plane {
            return Err(Reason::BadClaim {
                claim: "kid",
                why: "names a key that does not sign node-plane tokens",
            });
        }
        if let Some(node) = key.node {
            if plane != Plane::Node {
                return Err(Reason::BadClaim {
                    claim: "sub",
                    why: "is signed by a node's key, which signs only node-plane tokens",
                });
            }
            if identity.subject != super::node_subject(node) {
                return Err(Reason::BadClaim {
                    claim: "sub",
                    why: "names another node than the one its key belongs to",
                });
            }
        }
        Ok(identity)
    }

    /// What a jsonwebtoken refusal means. Claims are refused only after the signature
    /// verified, so reading the payload again to say more is safe.
    fn reason_of(&self, kind: &ErrorKind, payload: &str, plane: Plane) -> Reason {
        match kind {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::ExpiredSignature => Reason::Expired,
            ErrorKind::ImmatureSignature => Reason::NotYetValid,
            ErrorKind::InvalidIssuer => Reason::WrongIssuer,
            ErrorKind::InvalidAudience => self.plane_mismatch(&claims_of(payload), plane),
            ErrorKind::MissingRequiredClaim(c) => {
                let claim = claim_name(c);
                if claims_of(payload).contains_key(claim) {
                    let why = if claim == "exp" {
                        "must be a number (seconds since the epoch)"
                    } else {
                        "must be a string"
                    };
                    Reason::BadClaim { claim, why }
                } else {
                    Reason::MissingClaim(claim)
                }
            }
            ErrorKind::InvalidClaimFormat(c) => Reason::BadClaim {
                claim: claim_name(c),
                why: "must be a number (seconds since the epoch)",
            },
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                Reason::UnsupportedAlgorithm
            }
            // A key that cannot verify (it was checked when loaded, so this is unexpected):
            // the client learns only that the signature did not verify.
            ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::Provider(_) => {
                tracing::warn!("a configured key could not verify a token: {kind:?}");
                Reason::BadSignature
            }
            _ => Reason::Malformed("undecodable header, payload or signature"),
        }
    }

    /// `WrongPlane` if the token is for the other plane's audience, else `WrongAudience`.
    fn plane_mismatch(&self, claims: &Map<String, Value>, plane: Plane) -> Reason {
        let other = match plane {
            Plane::Client => Plane::Node,
            Plane::Node => Plane::Client,
        };
        if audiences(claims).any(|a| a == self.policy.audience_of(other)) {
            Reason::WrongPlane {
                token_for: other,
                sent_to: plane,
            }
        } else {
            Reason::WrongAudience
        }
    }

    /// The identity of verified claims.
    fn identity(&self, claims: &Map<String, Value>, plane: Plane) -> Result<Identity, Reason> {
        // jsonwebtoken accepts a list of issuers with ours among them; one issuer is meant.
        if !matches!(claims.get("iss"), Some(Value::String(_))) {
            return Err(Reason::BadClaim {
                claim: "iss",
                why: "must be one string",
            });
        }
        // A token for both planes is a token for neither.
        if let mismatch @ Reason::WrongPlane { .. } = self.plane_mismatch(claims, plane) {
            return Err(mismatch);
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Reason::BadClaim {
                claim: "exp",
                why: "must be a whole number of seconds since the epoch",
            })?;
        let subject = match claims.get("sub") {
            None => return Err(Reason::MissingClaim("sub")),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_BYTES => s.clone(),
            Some(_) => {
                return Err(Reason::BadClaim {
                    claim: "sub",
                    why: "must be a non-empty string of at most 256 bytes",
                })
            }
        };
        let roles = match claims.get("roles") {
            None => Default::default(),
            Some(v) => strings(v)
                .and_then(|names| {
                    names
                        .iter()
                        .map(|n| Role::from_str(n).ok())
                        .collect::<Option<_>>()
                })
                .ok_or(Reason::BadClaim {
                    claim: "roles",
                    why: "must be a list of reader, writer, admin",
                })?,
        };
        let prefixes = |claim: &'static str| match claims.get(claim) {
            None => Ok(None),
            Some(v) => strings(v).map(Some).ok_or(Reason::BadClaim {
                claim,
                why: "must be a list of prefixes (strings)",
            }),
        };
        // `tgt` binds a node token to a member; on the client plane it is another issuer's
        // claim, none of ours.
        let target = match claims.get("tgt").filter(|_| plane == Plane::Node) {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_BYTES => {
                Some(s.clone())
            }
            Some(_) => {
                return Err(Reason::BadClaim {
                    claim: "tgt",
                    why: "must be a non-empty string of at most 256 bytes",
                })
            }
        };
        Ok(Identity {
            subject,
            roles,
            stream_prefixes: prefixes("streams")?,
            series_prefixes: prefixes("series")?,
            expires_at,
            target,
        })
    }
}

fn parse_header(segment: &str) -> Result<RawHeader, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reason::Malformed("header is not base64url without padding"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| Reason::Malformed("header is not a JSON object with a string alg"))
}

/// The payload's claims, or none if it does not decode (only used to explain a refusal).
fn claims_of(payload: &str) -> Map<String, Value> {
    URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn audiences(claims: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let list: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The static name of a registered claim jsonwebtoken reports.
fn claim_name(c: &str) -> &'static str {
    match c {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}
