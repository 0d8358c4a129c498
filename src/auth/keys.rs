//! The keys tokens are verified with: public keys from PEM files (RS256, ES256, EdDSA, …)
//! and from a JWKS file, and HMAC secrets (HS256, for development), each under its `kid`
//! with an explicit allow-list of algorithms. Every key is checked when loaded — a key
//! allowed for two families (an RSA public key is public, so letting it serve as an HMAC
//! secret would let anyone sign), a short secret, a private key where a public one belongs,
//! a curve that does not match the algorithm, a weak RSA modulus — so a bad key stops a
//! (re)load with an error naming it, never a token later.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

use super::error::Reason;

/// Shortest HMAC secret accepted: 256 bits, the output size of SHA-256 (RFC 7518 §3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Most keys a key set holds (each is a map entry; rotation needs two or three).
pub const MAX_KEYS: usize = 64;
/// Largest key, secret or JWKS file read.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;
/// Longest configured key id (a token's `kid` is only looked up, whatever its length).
const MAX_KID_BYTES: usize = 256;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// Where a configured key's material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    PemFile(PathBuf),
    /// A file holding an HMAC secret (its bytes; one trailing newline is not part of it).
    HmacSecretFile(PathBuf),
}

/// One configured key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub kid: String,
    /// The algorithms a token signed with this key may name; one family only.
    pub algorithms: Vec<Algorithm>,
    pub source: KeySource,
    /// The one node this key belongs to: it then verifies only that node's node-plane
    /// tokens (`sub` `node-<id>`), never a client token nor another node's, so a node's own
    /// key cannot speak for another node or for a client. `None`: not bound to a node.
    pub node: Option<u64>,
    /// A key not bound to a node verifies node-plane tokens only when this says so: a
    /// client issuer's key must not let whoever it signs for speak for a node. With it,
    /// any holder of the key can speak for any node (a development cluster's one shared
    /// secret); a node-bound key verifies its node's node-plane tokens regardless.
    pub node_plane: bool,
}

/// Everything a key set is (re)loaded from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySources {
    pub keys: Vec<KeySpec>,
    /// A JWKS file (`{"keys": [...]}`): public keys, each with its `kid` and `alg`.
    pub jwks_file: Option<PathBuf>,
}

/// Why a key set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_KEY_FILE_BYTES} bytes")]
    FileTooLarge { path: PathBuf },
    #[error("no keys: configure keys or a JWKS file")]
    NoKeys,
    #[error("{0} keys, more than the {MAX_KEYS} a key set holds")]
    TooManyKeys(usize),
    #[error("key id {0:?} is configured twice")]
    DuplicateKid(String),
    #[error("key {kid:?}: {problem}")]
    Key { kid: String, problem: KeyProblem },
    #[error("JWKS file {path}: {why}")]
    Jwks { path: PathBuf, why: String },
}

/// What is wrong with one key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("empty key id")]
    EmptyKid,
    #[error("key id longer than {MAX_KID_BYTES} bytes")]
    LongKid,
    #[error("no algorithms allowed")]
    NoAlgorithms,
    #[error(
        "allowed for algorithms of different families ({0}): one key serves one family, or a \
         public key could be used as an HMAC secret"
    )]
    MixedFamilies(String),
    #[error("an EC key has one curve: allow ES256 or ES384, not both")]
    TwoCurves,
    #[error("HMAC algorithms take hmac_secret_file, public-key algorithms take pem_file")]
    WrongSource,
    #[error("HMAC secret of {bytes} bytes: at least {MIN_HMAC_SECRET_BYTES} are required")]
    ShortSecret { bytes: usize },
    #[error("a private key: configure the public key only")]
    PrivateKey,
    #[error("not a usable {family} public key: {why}")]
    BadKey { family: &'static str, why: String },
    #[error("RSA key of {bits} bits: at least {MIN_RSA_BITS} are required")]
    WeakRsa { bits: usize },
    #[error("algorithm {0} is not supported")]
    Unsupported(String),
    #[error("a JWKS holds public keys: put HMAC secrets in hmac_secret_file")]
    SecretInJwks,
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "EdDSA",
    }
}

/// A key's configuration on its own (no file read): a sane kid, one family, the right
/// source for it.
pub fn check_spec(spec: &KeySpec) -> Result<(), KeyError> {
    let bad = |problem| {
        Err(KeyError::Key {
            kid: spec.kid.clone(),
            problem,
        })
    };
    if let Err(problem) = check_kid(&spec.kid) {
        return bad(problem);
    }
    let family = match check_algorithms(&spec.algorithms) {
        Ok(f) => f,
        Err(problem) => return bad(problem),
    };
    let hmac_source = matches!(spec.source, KeySource::HmacSecretFile(_));
    if hmac_source != (family == AlgorithmFamily::Hmac) {
        return bad(KeyProblem::WrongSource);
    }
    Ok(())
}

fn check_kid(kid: &str) -> Result<(), KeyProblem> {
    if kid.is_empty() {
        return Err(KeyProblem::EmptyKid);
    }
    if kid.len() > MAX_KID_BYTES {
        return Err(KeyProblem::LongKid);
    }
    Ok(())
}

/// The one family of an allow-list.
fn check_algorithms(algorithms: &[Algorithm]) -> Result<AlgorithmFamily, KeyProblem> {
    let first = algorithms.first().ok_or(KeyProblem::NoAlgorithms)?;
    let family = first.family();
    if algorithms.iter().any(|a| a.family() != family) {
        let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
        return Err(KeyProblem::MixedFamilies(names.join(", ")));
    }
    if family == AlgorithmFamily::Ec && algorithms.iter().any(|a| a != first) {
        return Err(KeyProblem::TwoCurves);
    }
    Ok(family)
}

/// Reads a file of at most [`MAX_KEY_FILE_BYTES`].
fn read_limited(path: &Path) -> Result<Vec<u8>, KeyError> {
    let read = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// An HMAC secret file's secret: its bytes, less one trailing newline (`\n` or `\r\n`), so
/// that a secret written by `echo` or an editor is the same secret for the node and for
/// `aetherctl auth mint`. Its length is checked by the caller
/// ([`check_hmac_secret`]).
pub fn read_hmac_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut bytes = read_limited(path)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// An HMAC secret must be at least [`MIN_HMAC_SECRET_BYTES`] long.
pub fn check_hmac_secret(secret: &[u8]) -> Result<(), KeyProblem> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(KeyProblem::ShortSecret {
            bytes: secret.len(),
        });
    }
    Ok(())
}

/// A key ready to verify with.
pub(crate) struct Key {
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
    /// See [`KeySpec::node`].
    pub node: Option<u64>,
    /// See [`KeySpec::node_plane`].
    pub node_plane: bool,
}

/// The keys in force, by `kid`.
pub struct KeySet {
    keys: HashMap<String, Key>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kids())
            .finish()
    }
}

impl KeySet {
    /// Reads and checks every key; any bad key fails the whole set.
    pub fn load(sources: &KeySources) -> Result<KeySet, KeyError> {
        let mut keys = HashMap::new();
        let mut add = |kid: String, key: Key| {
            if keys.contains_key(&kid) {
                return Err(KeyError::DuplicateKid(kid));
            }
            keys.insert(kid, key);
            Ok(())
        };
        for spec in &sources.keys {
            check_spec(spec)?;
            let key = load_spec(spec).map_err(|problem| match problem {
                Loaded::Problem(problem) => KeyError::Key {
                    kid: spec.kid.clone(),
                    problem,
                },
                Loaded::Io(e) => e,
            })?;
            add(spec.kid.clone(), key)?;
        }
        if let Some(path) = &sources.jwks_file {
            for (kid, key) in load_jwks(path)? {
                add(kid, key)?;
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooManyKeys(keys.len()));
        }
        Ok(KeySet { keys })
    }

    /// The key ids in force, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.keys().cloned().collect();
        kids.sort_unstable();
        kids
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a token's `kid` names: only ever a map lookup. Without a `kid`, the one key
    /// if there is exactly one.
    pub(crate) fn select(&self, kid: Option<&str>) -> Result<&Key, Reason> {
        match kid {
            Some(kid) => self.keys.get(kid).ok_or(Reason::UnknownKey),
            None if self.keys.len() == 1 => Ok(self.keys.values().next().expect("one key")),
            None => Err(Reason::KeyIdRequired),
        }
    }
}

/// Why one configured key did not load: its own problem, or its file.
enum Loaded {
    Problem(KeyProblem),
    Io(KeyError),
}

impl From<KeyProblem> for Loaded {
    fn from(p: KeyProblem) -> Self {
        Loaded::Problem(p)
    }
}

fn load_spec(spec: &KeySpec) -> Result<Key, Loaded> {
    let decoding = match &spec.source {
        KeySource::HmacSecretFile(path) => {
            let secret = read_hmac_secret(path).map_err(Loaded::Io)?;
            check_hmac_secret(&secret)?;
            DecodingKey::from_secret(&secret)
        }
        KeySource::PemFile(path) => {
            let pem = read_limited(path).map_err(Loaded::Io)?;
            pem_key(&pem, &spec.algorithms)?
        }
    };
    Ok(Key {
        algorithms: spec.algorithms.clone(),
        decoding,
        node: spec.node,
        node_plane: spec.node_plane,
    })
}

/// The label of the first PEM block (`PUBLIC KEY`, `RSA PRIVATE KEY`, …).
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(&text[start..start + len])
}

fn pem_key(pem: &[u8], algorithms: &[Algorithm]) -> Result<DecodingKey, KeyProblem> {
    let family = check_algorithms(algorithms)?;
    let bad = |why: String| KeyProblem::BadKey {
        family: family_name(family),
        why,
    };
    let label = pem_label(pem).ok_or_else(|| bad("no PEM block".into()))?;
    if label.contains("PRIVATE") {
        return Err(KeyProblem::PrivateKey);
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(bad(format!("a {label} PEM block, not a PUBLIC KEY")));
    }
    let key = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => return Err(KeyProblem::WrongSource),
    }
    .map_err(|e| bad(e.to_string()))?;
    check_material(&key, algorithms[0])?;
    Ok(key)
}

/// Parses a public key the way verification will, so a broken one is found now: the RSA
/// modulus and its size, the point on the algorithm's curve, the Ed25519 point.
fn check_material(key: &DecodingKey, alg: Algorithm) -> Result<(), KeyProblem> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let family = alg.family();
    let bad = |why: String| KeyProblem::BadKey {
        family: family_name(family),
        why,
    };
    match (family, key.kind()) {
        (AlgorithmFamily::Hmac, _) => Ok(()),
        (AlgorithmFamily::Rsa, kind) => {
            let rsa = match kind {
                DecodingKeyKind::SecretOrDer(der) => {
                    rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|e| bad(e.to_string()))?
                }
                DecodingKeyKind::RsaModulusExponent { n, e } => rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(n),
                    rsa::BigUint::from_bytes_be(e),
                )
                .map_err(|e| bad(e.to_string()))?,
            };
            let bits = rsa.n().bits();
            if bits < MIN_RSA_BITS {
                return Err(KeyProblem::WeakRsa { bits });
            }
            Ok(())
        }
        (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) => match alg {
            Algorithm::ES256 => p256::PublicKey::from_sec1_bytes(point)
                .map(drop)
                .map_err(|_| bad("not a P-256 point (ES256 needs a P-256 key)".into())),
            Algorithm::ES384 => p384::PublicKey::from_sec1_bytes(point)
                .map(drop)
                .map_err(|_| bad("not a P-384 point (ES384 needs a P-384 key)".into())),
            _ => Err(KeyProblem::Unsupported(format!("{alg:?}"))),
        },
        (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(point)) => {
            let bytes: &[u8; 32] = point
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("{} bytes, not 32", point.len())))?;
            ed25519_dalek::VerifyingKey::from_bytes(bytes)
                .map(drop)
                .map_err(|_| bad("not an Ed25519 point".into()))
        }
        (_, DecodingKeyKind::RsaModulusExponent { .. }) => {
            Err(bad("RSA components for a non-RSA algorithm".into()))
        }
    }
}

/// The algorithm a JWK's `alg` names, if it is a signature algorithm we verify.
fn jwk_algorithm(alg: KeyAlgorithm) -> Result<Algorithm, KeyProblem> {
    Ok(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => return Err(KeyProblem::Unsupported(format!("{other:?}"))),
    })
}

/// A JWKS file's keys. Each must carry `kid` and `alg` (its allow-list of one), be a
/// signature key, and have the key type and curve its `alg` needs.
fn load_jwks(path: &Path) -> Result<Vec<(String, Key)>, KeyError> {
    let text = read_limited(path)?;
    let set: JwkSet = serde_json::from_slice(&text).map_err(|e| KeyError::Jwks {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().ok_or_else(|| KeyError::Jwks {
            path: path.to_owned(),
            why: format!("key {i} has no kid"),
        })?;
        let key = jwk_key(jwk).map_err(|problem| KeyError::Key {
            kid: kid.clone(),
            problem,
        })?;
        keys.push((kid, key));
    }
    Ok(keys)
}

fn jwk_key(jwk: &Jwk) -> Result<Key, KeyProblem> {
    check_kid(jwk.common.key_id.as_deref().unwrap_or_default())?;
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err(KeyProblem::BadKey {
                family: "JWK",
                why: "not a signature key (use is not \"sig\")".into(),
            });
        }
    }
    let alg = jwk_algorithm(jwk.common.key_algorithm.ok_or(KeyProblem::NoAlgorithms)?)?;
    let mismatch = |why: &str| KeyProblem::BadKey {
        family: family_name(alg.family()),
        why: why.to_owned(),
    };
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::OctetKey(_), _) => return Err(KeyProblem::SecretInJwks),
        (AlgorithmParameters::RSA(_), a) if a.family() == AlgorithmFamily::Rsa => {}
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256)
            if p.curve == EllipticCurve::P256 => {}
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384)
            if p.curve == EllipticCurve::P384 => {}
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA)
            if p.curve == EllipticCurve::Ed25519 => {}
        _ => return Err(mismatch("its key type or curve does not match its alg")),
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| mismatch(&e.to_string()))?;
    check_material(&decoding, alg)?;
    Ok(Key {
        algorithms: vec![alg],
        decoding,
        // JWKS keys are an issuer's public keys: client tokens only.
        node: None,
        node_plane: false,
    })
}
