//! This node's own node-plane credential: a short-lived token (`sub` = `node-<id>`, `aud` =
//! the node audience) that every outgoing peer call carries. Signed once and cached; a call
//! that finds it past half its life signs the next one, so signing happens once per half
//! life (2.5 min by default), never per call, and a token in use always has at least half
//! its life (minus the verifier's leeway on the other side) left.
//!
//! `node-<id>` is the only subject the node plane accepts ([`node_id_of`]): the raft service
//! checks that the node it names is a member and, where a message names its sender, that
//! the two agree.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::mint::{MintError, MintRequest, SigningKey};

/// Prefix of a node's `sub`.
const NODE_SUBJECT_PREFIX: &str = "node-";

/// The `sub` of node `id`'s tokens.
pub fn node_subject(id: u64) -> String {
    format!("{NODE_SUBJECT_PREFIX}{id}")
}

/// The node a node-plane `sub` names: `node-<id>` with `id` in canonical decimal (no sign,
/// no leading zero), so that one node has one subject.
pub fn node_id_of(subject: &str) -> Option<u64> {
    let digits = subject.strip_prefix(NODE_SUBJECT_PREFIX)?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Current {
    /// `Bearer <token>`, ready for the `authorization` header.
    bearer: Arc<str>,
    minted_at: u64,
}

/// Mints and caches this node's node-plane token.
pub struct NodeTokens {
    key: SigningKey,
    issuer: String,
    audience: String,
    subject: String,
    ttl_secs: u64,
    current: Mutex<Current>,
}

impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTokens")
            .field("subject", &self.subject)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl NodeTokens {
    /// Signs the first token now: a key that cannot sign fails here, at start.
    pub fn new(
        key: SigningKey,
        issuer: String,
        audience: String,
        node_id: u64,
        ttl_secs: u64,
    ) -> Result<NodeTokens, MintError> {
        let mut t = NodeTokens {
            key,
            issuer,
            audience,
            subject: node_subject(node_id),
            ttl_secs,
            current: Mutex::new(Current {
                bearer: Arc::from(""),
                minted_at: 0,
            }),
        };
        let now = now_secs();
        let first = t.mint_at(now)?;
        *t.current.get_mut().unwrap_or_else(PoisonError::into_inner) = Current {
            bearer: first,
            minted_at: now,
        };
        Ok(t)
    }

    /// The token alone (no `Bearer `), as minted at `now_secs`: for the start-up check.
    pub fn token_at(&self, now_secs: u64) -> Result<String, MintError> {
        self.key.mint(&self.request(now_secs))
    }

    fn request(&self, now_secs: u64) -> MintRequest {
        MintRequest {
            subject: self.subject.clone(),
            roles: Vec::new(),
            stream_prefixes: Vec::new(),
            series_prefixes: Vec::new(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            kid: None,
            now_secs,
            ttl_secs: self.ttl_secs,
        }
    }

    fn mint_at(&self, now_secs: u64) -> Result<Arc<str>, MintError> {
        Ok(Arc::from(format!("Bearer {}", self.token_at(now_secs)?)))
    }

    /// `Bearer <token>` for the next call: the cached token, or a fresh one once the cached
    /// one is half way through its life. If signing fails (it worked at start, so this is
    /// not expected) the cached token is used while it lasts, and the failure logged.
    pub fn bearer(&self) -> Arc<str> {
        let now = now_secs();
        let mut c = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_sub(c.minted_at) >= self.ttl_secs / 2 || now < c.minted_at {
            match self.mint_at(now) {
                Ok(bearer) => {
                    *c = Current {
                        bearer,
                        minted_at: now,
                    }
                }
                Err(e) => tracing::error!("signing this node's node-plane token: {e}"),
            }
        }
        c.bearer.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_node_subjects_name_a_node() {
        let cases = [
            ("node-1", Some(1)),
            ("node-18446744073709551615", Some(u64::MAX)),
            ("node-0", Some(0)),
            ("node-01", None),
            ("node-+1", None),
            ("node--1", None),
            ("node-", None),
            ("node-1x", None),
            ("Node-1", None),
            ("alice", None),
            ("node-18446744073709551616", None),
        ];
        for (sub, want) in cases {
            assert_eq!(node_id_of(sub), want, "{sub}");
        }
        assert_eq!(node_id_of(&node_subject(42)), Some(42));
    }

    #[test]
    fn the_token_is_cached_and_renewed_after_half_its_life() {
        let key = SigningKey::hs256(&[7; 32], Some("k".into())).unwrap();
        let t = NodeTokens::new(key, "iss".into(), "node".into(), 3, 300).unwrap();
        let first = t.bearer();
        assert!(first.starts_with("Bearer "));
        // Within half its life: the same token, not signed again.
        assert!(Arc::ptr_eq(&first, &t.bearer()));
        // Pretend it was signed 150 s ago: renewed.
        t.current.lock().unwrap().minted_at -= 150;
        let renewed = t.bearer();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(Arc::ptr_eq(&renewed, &t.bearer()));
    }
}

#[cfg(test)]
mod bound_key_tests {
    use super::*;
    use crate::auth::{
        mint_hs256, Algorithm, KeySource, KeySources, KeySpec, Plane, Policy, Verifier,
    };

    const SECRET: &[u8] = b"the secret of node 3, 32 bytes or more";

    /// A key bound to node 3 verifies node 3's node-plane tokens and nothing else: not
    /// another node's, not a client token of any role.
    #[test]
    fn a_node_key_speaks_only_for_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n3.secret");
        std::fs::write(&path, SECRET).unwrap();
        let policy = Policy {
            issuer: "iss".into(),
            audience: "aud".into(),
            node_audience: "node-aud".into(),
            leeway_secs: 0,
            max_token_bytes: 4096,
            cache_entries: 0,
        };
        let v = Verifier::new(
            policy,
            KeySources {
                keys: vec![KeySpec {
                    kid: "n3".into(),
                    algorithms: vec![Algorithm::HS256],
                    source: KeySource::HmacSecretFile(path),
                    node: Some(3),
                    node_plane: false,
                }],
                jwks_file: None,
            },
        )
        .unwrap();
        let token = |sub: &str, aud: &str| {
            let req = MintRequest {
                subject: sub.into(),
                roles: vec![crate::auth::Role::Admin],
                stream_prefixes: Vec::new(),
                series_prefixes: Vec::new(),
                issuer: "iss".into(),
                audience: aud.into(),
                kid: Some("n3".into()),
                now_secs: now_secs(),
                ttl_secs: 60,
            };
            mint_hs256(SECRET, &req).unwrap()
        };
        let cases = [
            (
                "node 3 on the node plane",
                token("node-3", "node-aud"),
                Plane::Node,
                true,
            ),
            (
                "node 4 on the node plane",
                token("node-4", "node-aud"),
                Plane::Node,
                false,
            ),
            (
                "an admin on the client plane",
                token("alice", "aud"),
                Plane::Client,
                false,
            ),
            (
                "node 3 on the client plane",
                token("node-3", "aud"),
                Plane::Client,
                false,
            ),
        ];
        for (name, t, plane, ok) in cases {
            let got = v.verify(&t, plane);
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
        }
    }
}
