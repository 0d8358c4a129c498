//! This node's own node-plane credential: a short-lived token (`sub` = `node-<id>`, `aud` =
//! the node audience) that every outgoing peer call carries. Signed once and cached; a call
//! that finds it past half its life signs the next one, so signing happens once per half
//! life (2.5 min by default), never per call, and a token in use always has at least half
//! its life (minus the verifier's leeway on the other side) left.
//!
//! `node-<id>` is the only subject the node plane accepts ([`node_id_of`]): the raft service
//! checks that the node it names is a member and, where a message names its sender, that
//! the two agree.
//!
//! Each token is bound to the member it is sent to (`tgt`, one cached token per peer): a
//! member refuses a token bound to another, so a member that received this node's token
//! cannot replay it to a third member in this node's name. (A token without `tgt`, from a
//! node on older code, is still taken: only its own key signs this node's tokens, so
//! nobody else can make one.)

use std::collections::HashMap;
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
    /// The token in use for each member calls go to.
    current: Mutex<HashMap<u64, Current>>,
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
        let t = NodeTokens {
            key,
            issuer,
            audience,
            subject: node_subject(node_id),
            ttl_secs,
            current: Mutex::default(),
        };
        t.token_at(now_secs(), None)?;
        Ok(t)
    }

    /// The token alone (no `Bearer `), as minted at `now_secs` for calls to `target`
    /// (`None`: unbound): for the start-up check.
    pub fn token_at(&self, now_secs: u64, target: Option<u64>) -> Result<String, MintError> {
        self.key.mint(&self.request(now_secs, target))
    }

    fn request(&self, now_secs: u64, target: Option<u64>) -> MintRequest {
        MintRequest {
            subject: self.subject.clone(),
            roles: Vec::new(),
            stream_prefixes: Vec::new(),
            series_prefixes: Vec::new(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            kid: None,
            target: target.map(|t| t.to_string()),
            now_secs,
            ttl_secs: self.ttl_secs,
        }
    }

    /// `Bearer <token>` for the next call to member `target`: the cached token, or a fresh
    /// one once the cached one is half way through its life. If signing fails (it worked
    /// at start, so this is not expected) the cached token is used while it lasts, and the
    /// failure logged.
    pub fn bearer(&self, target: u64) -> Arc<str> {
        let now = now_secs();
        let mut tokens = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = tokens.get(&target);
        if let Some(c) = cached {
            if now.saturating_sub(c.minted_at) < self.ttl_secs / 2 && now >= c.minted_at {
                return c.bearer.clone();
            }
        }
        match self.token_at(now, Some(target)) {
            Ok(token) => {
                let bearer: Arc<str> = Arc::from(format!("Bearer {token}"));
                tokens.insert(
                    target,
                    Current {
                        bearer: bearer.clone(),
                        minted_at: now,
                    },
                );
                bearer
            }
            Err(e) => {
                tracing::error!("signing this node's node-plane token: {e}");
                // None cached yet: an empty bearer, which the peer refuses as unauthenticated.
                cached.map_or_else(|| Arc::from("Bearer "), |c| c.bearer.clone())
            }
        }
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
        let first = t.bearer(1);
        assert!(first.starts_with("Bearer "));
        // Within half its life: the same token, not signed again.
        assert!(Arc::ptr_eq(&first, &t.bearer(1)));
        // Pretend it was signed 150 s ago: renewed.
        t.current.lock().unwrap().get_mut(&1).unwrap().minted_at -= 150;
        let renewed = t.bearer(1);
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(Arc::ptr_eq(&renewed, &t.bearer(1)));
    }

    /// Each member gets a token bound to it (`tgt`), cached apart.
    #[test]
    fn each_member_gets_a_token_bound_to_it() {
        use base64::Engine;
        let key = SigningKey::hs256(&[7; 32], Some("k".into())).unwrap();
        let t = NodeTokens::new(key, "iss".into(), "node".into(), 3, 300).unwrap();
        let tgt = |bearer: &str| {
            let payload = bearer.split('.').nth(1).unwrap();
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            (claims["sub"].clone(), claims["tgt"].clone())
        };
        let (to1, to2) = (t.bearer(1), t.bearer(2));
        assert_ne!(to1, to2);
        assert_eq!(tgt(&to1), ("node-3".into(), "1".into()));
        assert_eq!(tgt(&to2), ("node-3".into(), "2".into()));
        assert!(Arc::ptr_eq(&to1, &t.bearer(1)));
        let unbound = t.token_at(now_secs(), None).unwrap();
        assert_eq!(tgt(&unbound), ("node-3".into(), serde_json::Value::Null));
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
                target: None,
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
