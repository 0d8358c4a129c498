//! Tokens for tests against nodes with `[auth]` on: keys made at test time (no private key is
//! committed), a node configuration that trusts them, and JWTs of any header and claims —
//! well-formed ones and the ones an attacker crafts.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::TestChannel;
use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::admin_client::AdminClient;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

pub const ISS: &str = "aetherops-test";
pub const AUD: &str = "aetherops";
pub const NODE_AUD: &str = "aetherops-node";
/// The kid of the HS256 development key, and of the RS256 key.
pub const DEV_KID: &str = "dev";
pub const RS_KID: &str = "rs";
pub const LEEWAY_SECS: u64 = 30;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An RSA key pair: its signing key, its public PEM and its public numbers (for a JWK).
pub struct RsaKey {
    pub signing: EncodingKey,
    pub public_pem: String,
    pub public: rsa::RsaPublicKey,
}

impl RsaKey {
    pub fn generate() -> RsaKey {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let public = private.to_public_key();
        let pem = private.to_pkcs8_pem(LineEnding::LF).expect("private PEM");
        RsaKey {
            signing: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("signing key"),
            public_pem: public
                .to_public_key_pem(LineEnding::LF)
                .expect("public PEM"),
            public,
        }
    }

    /// The public key as a JWK (what an attacker embeds in a header).
    pub fn jwk(&self) -> Value {
        use rsa::traits::PublicKeyParts;
        json!({
            "kty": "RSA",
            "n": b64(&self.public.n().to_bytes_be()),
            "e": b64(&self.public.e().to_bytes_be()),
        })
    }
}

/// The keys a test node trusts: an HS256 secret under kid "dev" and an RS256 public key
/// under kid "rs".
pub struct TrustedKeys {
    pub dev_secret: Vec<u8>,
    pub dev: EncodingKey,
    pub rs: RsaKey,
}

impl TrustedKeys {
    pub fn generate() -> TrustedKeys {
        let dev_secret = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes();
        TrustedKeys {
            dev: EncodingKey::from_secret(&dev_secret),
            dev_secret,
            rs: RsaKey::generate(),
        }
    }

    /// Writes the key files into `dir` and returns the `[auth]` section that trusts them.
    pub fn auth_toml(&self, dir: &Path) -> String {
        let secret = dir.join("dev.secret");
        let pem = dir.join("rs.pem");
        std::fs::write(&secret, &self.dev_secret).expect("write secret");
        std::fs::write(&pem, &self.rs.public_pem).expect("write PEM");
        format!(
            "[auth]\nenabled = true\nissuer = {ISS:?}\naudience = {AUD:?}\n\
             node_audience = {NODE_AUD:?}\nleeway_secs = {LEEWAY_SECS}\n\
             node_key_kid = {DEV_KID:?}\nnode_key_file = {:?}\n\n\
             [[auth.keys]]\nkid = {DEV_KID:?}\nalgorithms = [\"HS256\"]\nnode_plane = true\nhmac_secret_file = {:?}\n\n\
             [[auth.keys]]\nkid = {RS_KID:?}\nalgorithms = [\"RS256\"]\npem_file = {:?}\n",
            secret.display().to_string(),
            secret.display().to_string(),
            pem.display().to_string(),
        )
    }

    /// An HS256 token under kid "dev" with these claims.
    pub fn hs(&self, claims: &Value) -> String {
        sign(
            &json!({"alg": "HS256", "typ": "JWT", "kid": DEV_KID}),
            claims,
            &self.dev,
            Algorithm::HS256,
        )
    }

    /// An RS256 token under kid "rs" with this header (merged over the usual one) and claims.
    pub fn rs_with_header(&self, extra: &Value, claims: &Value) -> String {
        sign(
            &merged(json!({"alg": "RS256", "typ": "JWT", "kid": RS_KID}), extra),
            claims,
            &self.rs.signing,
            Algorithm::RS256,
        )
    }

    /// A valid HS256 token for `sub` with one role.
    pub fn role(&self, role: &str) -> String {
        self.hs(&claims(role))
    }
}

/// `base` with the members of `extra` set over it.
pub fn merged(mut base: Value, extra: &Value) -> Value {
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            base[k] = v.clone();
        }
    }
    base
}

/// A signed token of any header and claims (the header is not checked against the key).
pub fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("sign a test token");
    format!("{message}.{signature}")
}

/// Claims that pass, for one role, to be spoiled one at a time.
pub fn claims(role: &str) -> Value {
    let now = now();
    json!({
        "sub": format!("test-{role}"), "roles": [role], "iss": ISS, "aud": AUD,
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    })
}

pub fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

pub fn without(mut v: Value, key: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove(key);
    }
    v
}

/// An unsigned token (`alg` as given, empty signature).
pub fn unsigned(alg: &str, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// `token` with one byte of its payload segment changed (still base64url).
pub fn flip_payload_byte(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut p = parts[1].as_bytes().to_vec();
    let i = p.len() / 2;
    p[i] = if p[i] == b'A' { b'B' } else { b'A' };
    format!(
        "{}.{}.{}",
        parts[0],
        String::from_utf8(p).expect("ascii"),
        parts[2]
    )
}

/// A request carrying `authorization: Bearer <token>` (none for `None`).
pub fn bearer<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .expect("an ASCII header value");
        req.metadata_mut().insert("authorization", value);
    }
    req
}

/// The node's status, asked with `token`.
pub async fn status_as(
    admin: &mut AdminClient<TestChannel>,
    token: &str,
) -> Result<pb::StatusResponse, tonic::Status> {
    admin
        .status(bearer(pb::StatusRequest {}, Some(token)))
        .await
        .map(|r| r.into_inner())
}
