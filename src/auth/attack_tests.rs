//! The attack matrix at the verification level: each case a token (or a configuration) an
//! attacker or a mistake could produce, and the exact refusal it must get — printed as a
//! table (`--nocapture`). Keys are made at test time (RSA, P-256, Ed25519); no private key
//! is committed.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::*;
use crate::limits::Method;

const ISS: &str = "https://issuer.test";
const AUD: &str = "aetherops";
const NODE_AUD: &str = "aetherops-node";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An RSA key pair: its signing key and its public PEM.
struct Rsa {
    signing: EncodingKey,
    public_pem: String,
    public: rsa::RsaPublicKey,
}

fn rsa_key(bits: usize) -> Rsa {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap();
    let public = private.to_public_key();
    let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    Rsa {
        signing: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
        public,
    }
}

/// A P-256 key pair: signing key, public PEM.
fn ec_key() -> (EncodingKey, String) {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(), public)
}

/// An Ed25519 key pair: signing key, public PEM.
fn ed_key() -> (EncodingKey, String) {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    use rsa::pkcs8::LineEnding;
    let signing = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let pem = signing.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(), public)
}

/// A signed token of any header and claims.
fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// Claims that pass, to be spoiled one at a time.
fn good_claims() -> Value {
    let now = now();
    json!({
        "sub": "alice", "roles": ["writer"], "iss": ISS, "aud": AUD,
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

fn policy(max_token_bytes: usize) -> Policy {
    Policy {
        issuer: ISS.into(),
        audience: AUD.into(),
        node_audience: NODE_AUD.into(),
        leeway_secs: DEFAULT_LEEWAY_SECS,
        max_token_bytes,
        cache_entries: DEFAULT_CACHE_ENTRIES,
    }
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn spec(kid: &str, algorithms: &[Algorithm], source: KeySource) -> KeySpec {
    KeySpec {
        kid: kid.into(),
        algorithms: algorithms.to_vec(),
        source,
        node: None,
        node_plane: true,
    }
}

/// How a result reads in the table.
fn show(r: &Result<(), AuthError>) -> String {
    match r {
        Ok(()) => "accepted".into(),
        Err(AuthError::Unauthenticated(r)) => format!("Unauthenticated({r:?})"),
        Err(AuthError::Forbidden(d)) => format!("Forbidden({d:?})"),
    }
}

/// Runs the cases, prints the table, fails listing every case that got something else.
/// One row: the case, what it must get, what it got.
type Row = (String, Outcome, Outcome);
type Outcome = Result<(), AuthError>;

fn check_table(title: &str, cases: Vec<Row>) {
    println!("\n{title}\n{:<52} {:<60} got", "case", "expected");
    let mut failures = Vec::new();
    for (case, expected, got) in &cases {
        let mark = if expected == got { "" } else { "   <-- WRONG" };
        println!("{case:<52} {:<60} {}{mark}", show(expected), show(got));
        if expected != got {
            failures.push(case.clone());
        }
    }
    assert!(failures.is_empty(), "cases that failed: {failures:?}");
}

fn unauth(r: Reason) -> Result<(), AuthError> {
    Err(AuthError::Unauthenticated(r))
}

fn forbidden(d: Denied) -> Result<(), AuthError> {
    Err(AuthError::Forbidden(d))
}

#[test]
fn attack_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let rs = rsa_key(2048);
    let other_cluster = rsa_key(2048);
    let (ec, ec_pem) = ec_key();
    let (ed, ed_pem) = ed_key();
    let secret = b"0123456789abcdef0123456789abcdef-dev";
    let sources = KeySources {
        keys: vec![
            spec(
                "rs1",
                &[Algorithm::RS256],
                KeySource::PemFile(write(dir.path(), "rs1.pem", rs.public_pem.as_bytes())),
            ),
            spec(
                "ec1",
                &[Algorithm::ES256],
                KeySource::PemFile(write(dir.path(), "ec1.pem", ec_pem.as_bytes())),
            ),
            spec(
                "ed1",
                &[Algorithm::EdDSA],
                KeySource::PemFile(write(dir.path(), "ed1.pem", ed_pem.as_bytes())),
            ),
            spec(
                "dev",
                &[Algorithm::HS256],
                KeySource::HmacSecretFile(write(dir.path(), "dev.secret", secret)),
            ),
        ],
        jwks_file: None,
    };
    let v = Verifier::new(policy(DEFAULT_MAX_TOKEN_BYTES), sources.clone()).unwrap();
    // The same keys with a larger size limit, to show what a 10 KB kid is past the limit.
    let roomy = Verifier::new(policy(32 << 10), sources).unwrap();
    // One RS256 key alone: a token without kid goes to it.
    let single = Verifier::new(
        policy(DEFAULT_MAX_TOKEN_BYTES),
        KeySources {
            keys: vec![spec(
                "rs1",
                &[Algorithm::RS256],
                KeySource::PemFile(dir.path().join("rs1.pem")),
            )],
            jwks_file: None,
        },
    )
    .unwrap();

    let hs_key = EncodingKey::from_secret(secret);
    let rs_header = |extra: Value| {
        let mut h = json!({"alg": "RS256", "typ": "JWT", "kid": "rs1"});
        for (k, val) in extra.as_object().unwrap() {
            h[k] = val.clone();
        }
        h
    };
    let rs_token =
        |claims: &Value| sign(&rs_header(json!({})), claims, &rs.signing, Algorithm::RS256);
    let good = rs_token(&good_claims());
    let client = |t: &str| v.verify(t, Plane::Client).map(drop);
    let node = |t: &str| v.verify(t, Plane::Node).map(drop);

    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
            b64(good_claims().to_string().as_bytes())
        )
    };
    let segments: Vec<&str> = good.split('.').collect();
    let flipped = {
        let mut p = segments[1].as_bytes().to_vec();
        let i = p.len() / 2;
        p[i] = if p[i] == b'A' { b'B' } else { b'A' };
        format!(
            "{}.{}.{}",
            segments[0],
            String::from_utf8(p).unwrap(),
            segments[2]
        )
    };
    let attacker_jwk = json!({
        "kty": "RSA",
        "n": b64(&rsa::traits::PublicKeyParts::n(&other_cluster.public).to_bytes_be()),
        "e": b64(&rsa::traits::PublicKeyParts::e(&other_cluster.public).to_bytes_be()),
    });
    let attacker = |extra: Value| {
        sign(
            &rs_header(extra),
            &good_claims(),
            &other_cluster.signing,
            Algorithm::RS256,
        )
    };
    let kid_token = |kid: &str| {
        sign(
            &rs_header(json!({"kid": kid})),
            &good_claims(),
            &rs.signing,
            Algorithm::RS256,
        )
    };
    let long_kid = "k".repeat(10 * 1024);
    let now = now();

    let reader = rs_token(&with(good_claims(), "roles", json!(["reader"])));
    let writer = good.clone();
    let sat7 = rs_token(&with(good_claims(), "series", json!(["sat-7/"])));
    let authorize =
        |t: &str, action: Method, r: &[Resource]| v.verify(t, Plane::Client)?.authorize(action, r);

    use Reason::*;
    let cases: Vec<(&str, Outcome, Outcome)> = vec![
        ("RS256, good", Ok(()), client(&good)),
        (
            "ES256, good",
            Ok(()),
            client(&sign(
                &json!({"alg": "ES256", "kid": "ec1"}),
                &good_claims(),
                &ec,
                Algorithm::ES256,
            )),
        ),
        (
            "EdDSA, good",
            Ok(()),
            client(&sign(
                &json!({"alg": "EdDSA", "kid": "ed1"}),
                &good_claims(),
                &ed,
                Algorithm::EdDSA,
            )),
        ),
        (
            "HS256 dev key, good",
            Ok(()),
            client(&sign(
                &json!({"alg": "HS256", "kid": "dev"}),
                &good_claims(),
                &hs_key,
                Algorithm::HS256,
            )),
        ),
        ("no token", unauth(Missing), client("")),
        (
            "4 segments",
            unauth(Malformed("a token has three dot-separated parts")),
            client(&format!("{good}.AAAA")),
        ),
        (
            "padding on the header",
            unauth(Malformed("header is not base64url without padding")),
            client(&format!("{}=.{}.{}", segments[0], segments[1], segments[2])),
        ),
        (
            "padding on the payload",
            unauth(Malformed("not base64url without padding")),
            client(&format!("{}.{}=.{}", segments[0], segments[1], segments[2])),
        ),
        (
            "bad base64 in the header",
            unauth(Malformed("header is not base64url without padding")),
            client(&format!("e30!*.{}.{}", segments[1], segments[2])),
        ),
        (
            "alg none, empty signature",
            unauth(AlgNone),
            client(&unsigned("none")),
        ),
        (
            "alg None, empty signature",
            unauth(AlgNone),
            client(&unsigned("None")),
        ),
        (
            "alg NONE, empty signature",
            unauth(AlgNone),
            client(&unsigned("NONE")),
        ),
        (
            "HS256 with the RSA public PEM as secret, kid rs1",
            unauth(AlgorithmNotAllowed(Algorithm::HS256)),
            client(&sign(
                &json!({"alg": "HS256", "kid": "rs1"}),
                &good_claims(),
                &EncodingKey::from_secret(rs.public_pem.as_bytes()),
                Algorithm::HS256,
            )),
        ),
        (
            "HS256 with the RSA public PEM, no kid, one RS key",
            unauth(AlgorithmNotAllowed(Algorithm::HS256)),
            single
                .verify(
                    &sign(
                        &json!({"alg": "HS256"}),
                        &good_claims(),
                        &EncodingKey::from_secret(rs.public_pem.as_bytes()),
                        Algorithm::HS256,
                    ),
                    Plane::Client,
                )
                .map(drop),
        ),
        (
            "no kid, one key",
            Ok(()),
            single
                .verify(
                    &sign(
                        &json!({"alg": "RS256"}),
                        &good_claims(),
                        &rs.signing,
                        Algorithm::RS256,
                    ),
                    Plane::Client,
                )
                .map(drop),
        ),
        (
            "no kid, several keys",
            unauth(KeyIdRequired),
            client(&sign(
                &json!({"alg": "RS256"}),
                &good_claims(),
                &rs.signing,
                Algorithm::RS256,
            )),
        ),
        (
            "ES256 header on the RS256 key",
            unauth(AlgorithmNotAllowed(Algorithm::ES256)),
            client(&sign(
                &json!({"alg": "ES256", "kid": "rs1"}),
                &good_claims(),
                &ec,
                Algorithm::ES256,
            )),
        ),
        (
            "unsupported alg",
            unauth(UnsupportedAlgorithm),
            client(&format!(
                "{}.{}.{}",
                b64(br#"{"alg":"XS999","kid":"rs1"}"#),
                segments[1],
                segments[2]
            )),
        ),
        (
            "one payload byte flipped",
            unauth(BadSignature),
            client(&flipped),
        ),
        (
            "expired beyond the leeway (120 s)",
            unauth(Expired),
            client(&rs_token(&with(good_claims(), "exp", json!(now - 120)))),
        ),
        (
            "expired inside the leeway (10 s)",
            Ok(()),
            client(&rs_token(&with(good_claims(), "exp", json!(now - 10)))),
        ),
        (
            "nbf in the future (600 s)",
            unauth(NotYetValid),
            client(&rs_token(&with(good_claims(), "nbf", json!(now + 600)))),
        ),
        (
            "exp as a string",
            unauth(BadClaim {
                claim: "exp",
                why: "must be a number (seconds since the epoch)",
            }),
            client(&rs_token(&with(
                good_claims(),
                "exp",
                json!((now + 3600).to_string()),
            ))),
        ),
        (
            "nbf as a string",
            unauth(BadClaim {
                claim: "nbf",
                why: "must be a number (seconds since the epoch)",
            }),
            client(&rs_token(&with(
                good_claims(),
                "nbf",
                json!(now.to_string()),
            ))),
        ),
        (
            "exp missing",
            unauth(MissingClaim("exp")),
            client(&rs_token(&without(good_claims(), "exp"))),
        ),
        (
            "iss wrong",
            unauth(WrongIssuer),
            client(&rs_token(&with(
                good_claims(),
                "iss",
                json!("https://evil.test"),
            ))),
        ),
        (
            "iss missing",
            unauth(MissingClaim("iss")),
            client(&rs_token(&without(good_claims(), "iss"))),
        ),
        (
            "iss numeric",
            unauth(BadClaim {
                claim: "iss",
                why: "must be a string",
            }),
            client(&rs_token(&with(good_claims(), "iss", json!(42)))),
        ),
        (
            "iss a list holding ours",
            unauth(BadClaim {
                claim: "iss",
                why: "must be one string",
            }),
            client(&rs_token(&with(good_claims(), "iss", json!([ISS, "x"])))),
        ),
        (
            "aud wrong",
            unauth(WrongAudience),
            client(&rs_token(&with(
                good_claims(),
                "aud",
                json!("someone-else"),
            ))),
        ),
        (
            "aud missing",
            unauth(MissingClaim("aud")),
            client(&rs_token(&without(good_claims(), "aud"))),
        ),
        (
            "node-plane token on the client plane",
            unauth(WrongPlane {
                token_for: Plane::Node,
                sent_to: Plane::Client,
            }),
            client(&rs_token(&with(good_claims(), "aud", json!(NODE_AUD)))),
        ),
        (
            "client token (admin) on the node plane",
            unauth(WrongPlane {
                token_for: Plane::Client,
                sent_to: Plane::Node,
            }),
            node(&rs_token(&with(good_claims(), "roles", json!(["admin"])))),
        ),
        (
            "node-plane token on the node plane",
            Ok(()),
            node(&rs_token(&with(good_claims(), "aud", json!(NODE_AUD)))),
        ),
        (
            "node-plane token with a tgt that is not a string",
            unauth(BadClaim {
                claim: "tgt",
                why: "must be a non-empty string of at most 256 bytes",
            }),
            node(&rs_token(&with(
                with(good_claims(), "aud", json!(NODE_AUD)),
                "tgt",
                json!(2),
            ))),
        ),
        (
            "client token with another issuer's tgt claim (not ours there)",
            Ok(()),
            client(&rs_token(&with(good_claims(), "tgt", json!({"x": 1})))),
        ),
        (
            "token for both planes",
            unauth(WrongPlane {
                token_for: Plane::Node,
                sent_to: Plane::Client,
            }),
            client(&rs_token(&with(
                good_claims(),
                "aud",
                json!([AUD, NODE_AUD]),
            ))),
        ),
        ("unknown kid", unauth(UnknownKey), client(&kid_token("rs2"))),
        (
            "kid ../../dev/null",
            unauth(UnknownKey),
            client(&kid_token("../../dev/null")),
        ),
        (
            "kid of 10 KB (8 KiB limit)",
            unauth(TooLarge {
                bytes: kid_token(&long_kid).len(),
                max: DEFAULT_MAX_TOKEN_BYTES,
            }),
            client(&kid_token(&long_kid)),
        ),
        (
            "kid of 10 KB (32 KiB limit)",
            unauth(UnknownKey),
            roomy.verify(&kid_token(&long_kid), Plane::Client).map(drop),
        ),
        (
            "jku to an attacker key, signed by it",
            unauth(BadSignature),
            client(&attacker(json!({"jku": "https://attacker.test/jwks.json"}))),
        ),
        (
            "x5u to an attacker cert, signed by its key",
            unauth(BadSignature),
            client(&attacker(json!({"x5u": "https://attacker.test/cert.pem"}))),
        ),
        (
            "embedded jwk of an attacker key, signed by it",
            unauth(BadSignature),
            client(&attacker(json!({"jwk": attacker_jwk}))),
        ),
        (
            "jku header, signed by the configured key",
            Ok(()),
            client(&sign(
                &rs_header(json!({"jku": "https://attacker.test/jwks.json"})),
                &good_claims(),
                &rs.signing,
                Algorithm::RS256,
            )),
        ),
        (
            "crit present",
            unauth(CriticalHeader),
            client(&sign(
                &rs_header(json!({"crit": ["exp"]})),
                &good_claims(),
                &rs.signing,
                Algorithm::RS256,
            )),
        ),
        (
            "typ JWE",
            unauth(WrongType),
            client(&sign(
                &rs_header(json!({"typ": "JWE"})),
                &good_claims(),
                &rs.signing,
                Algorithm::RS256,
            )),
        ),
        (
            "typ at+jwt",
            Ok(()),
            client(&sign(
                &rs_header(json!({"typ": "at+jwt"})),
                &good_claims(),
                &rs.signing,
                Algorithm::RS256,
            )),
        ),
        (
            "64 KiB token",
            unauth(TooLarge {
                bytes: 64 << 10,
                max: DEFAULT_MAX_TOKEN_BYTES,
            }),
            client(&"A".repeat(64 << 10)),
        ),
        (
            "another cluster's key, same kid",
            unauth(BadSignature),
            client(&attacker(json!({}))),
        ),
        (
            "sub missing",
            unauth(MissingClaim("sub")),
            client(&rs_token(&without(good_claims(), "sub"))),
        ),
        (
            "unknown role",
            unauth(BadClaim {
                claim: "roles",
                why: "must be a list of reader, writer, admin",
            }),
            client(&rs_token(&with(good_claims(), "roles", json!(["root"])))),
        ),
        (
            "reader appending",
            forbidden(Denied::Role {
                action: Method::Append,
                needs: Role::Writer,
            }),
            authorize(&reader, Method::Append, &[Resource::Stream("orders-1")]),
        ),
        (
            "writer changing membership",
            forbidden(Denied::Role {
                action: Method::Admin,
                needs: Role::Admin,
            }),
            authorize(&writer, Method::Admin, &[Resource::Cluster]),
        ),
        (
            "scope sat-7/ ingesting into sat-8/x",
            forbidden(Denied::Scope {
                resource: "series \"sat-8/x\"".into(),
            }),
            authorize(&sat7, Method::Ingest, &[Resource::Series("sat-8/x")]),
        ),
        (
            "scope sat-7/ ingesting into sat-7/x",
            Ok(()),
            authorize(&sat7, Method::Ingest, &[Resource::Series("sat-7/x")]),
        ),
    ];
    check_table(
        "token attack matrix (verification level)",
        cases
            .into_iter()
            .map(|(c, e, g)| (c.to_owned(), e, g))
            .collect(),
    );
}

/// Two keys in a JWKS file; the old one removed and the file reloaded (as on SIGHUP):
/// tokens it signed are refused, even one verified (and cached) before. A reload that
/// fails keeps the keys in force.
#[test]
fn key_rotation_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (rsa_key(2048), rsa_key(2048));
    let jwk = |kid: &str, k: &Rsa| {
        use rsa::traits::PublicKeyParts;
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
               "n": b64(&k.public.n().to_bytes_be()), "e": b64(&k.public.e().to_bytes_be())})
    };
    let jwks = dir.path().join("jwks.json");
    let set =
        |keys: Vec<Value>| std::fs::write(&jwks, json!({ "keys": keys }).to_string()).unwrap();
    set(vec![jwk("old", &old), jwk("new", &new)]);
    let v = Verifier::new(
        policy(DEFAULT_MAX_TOKEN_BYTES),
        KeySources {
            keys: vec![],
            jwks_file: Some(jwks.clone()),
        },
    )
    .unwrap();
    let token = |kid: &str, k: &Rsa| {
        sign(
            &json!({"alg": "RS256", "kid": kid}),
            &good_claims(),
            &k.signing,
            Algorithm::RS256,
        )
    };
    let (by_old, by_new) = (token("old", &old), token("new", &new));
    let verify = |t: &str| v.verify(t, Plane::Client).map(drop);

    let mut cases = vec![
        ("before: old key".to_owned(), Ok(()), verify(&by_old)),
        (
            "before: old key again (cached)".to_owned(),
            Ok(()),
            verify(&by_old),
        ),
        ("before: new key".to_owned(), Ok(()), verify(&by_new)),
    ];
    // A reload that fails (a broken file) changes nothing and says why.
    std::fs::write(&jwks, "{not json").unwrap();
    let failed = v.reload();
    assert!(matches!(failed, Err(KeyError::Jwks { .. })), "{failed:?}");
    cases.push((
        "after a failed reload: old key".into(),
        Ok(()),
        verify(&by_old),
    ));
    set(vec![jwk("new", &new)]);
    assert_eq!(v.reload().unwrap(), ["new"]);
    cases.push((
        "after reload: old key".into(),
        unauth(Reason::UnknownKey),
        verify(&by_old),
    ));
    cases.push(("after reload: new key".into(), Ok(()), verify(&by_new)));
    check_table("key rotation", cases);
    assert_eq!(v.kids(), ["new"]);
}

/// Key sets that must not load, each refusal naming the key and the problem.
#[test]
fn bad_keys_refuse_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rs = rsa_key(2048);
    let weak = rsa_key(1024);
    let (_, ec_pem) = ec_key();
    let private_pem = {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .unwrap()
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string()
    };
    let pem = |name: &str, text: &str| KeySource::PemFile(write(d, name, text.as_bytes()));
    let hmac = |name: &str, bytes: &[u8]| KeySource::HmacSecretFile(write(d, name, bytes));
    let one = |s: KeySpec| KeySources {
        keys: vec![s],
        jwks_file: None,
    };
    let jwks = |name: &str, keys: Value| KeySources {
        keys: vec![],
        jwks_file: Some(write(
            d,
            name,
            json!({ "keys": keys }).to_string().as_bytes(),
        )),
    };
    use rsa::traits::PublicKeyParts;
    let rsa_jwk = json!({"kty": "RSA", "kid": "j", "n": b64(&rs.public.n().to_bytes_be()),
                         "e": b64(&rs.public.e().to_bytes_be())});
    let cases: Vec<(&str, KeySources, &str)> = vec![
        ("no keys", KeySources::default(), "no keys"),
        (
            "HMAC secret of 31 bytes",
            one(spec("dev", &[Algorithm::HS256], hmac("short", &[b'x'; 31]))),
            "HMAC secret of 31 bytes",
        ),
        (
            "31 bytes and a newline",
            one(spec(
                "dev",
                &[Algorithm::HS256],
                hmac("short-nl", b"0123456789012345678901234567890\n"),
            )),
            "HMAC secret of 31 bytes",
        ),
        (
            "one key for HS256 and RS256",
            one(spec(
                "k",
                &[Algorithm::HS256, Algorithm::RS256],
                pem("hsrs.pem", &rs.public_pem),
            )),
            "different families",
        ),
        (
            "ES256 and ES384 on one key",
            one(spec(
                "k",
                &[Algorithm::ES256, Algorithm::ES384],
                pem("ec2.pem", &ec_pem),
            )),
            "one curve",
        ),
        (
            "no algorithms",
            one(spec("k", &[], pem("none.pem", &rs.public_pem))),
            "no algorithms",
        ),
        (
            "HS256 from a PEM file",
            one(spec(
                "k",
                &[Algorithm::HS256],
                pem("hs.pem", &rs.public_pem),
            )),
            "hmac_secret_file",
        ),
        (
            "a private key PEM",
            one(spec(
                "k",
                &[Algorithm::RS256],
                pem("private.pem", &private_pem),
            )),
            "private key",
        ),
        (
            "an EC key for RS256",
            one(spec("k", &[Algorithm::RS256], pem("ec-as-rs.pem", &ec_pem))),
            "RSA public key",
        ),
        (
            "an RSA key for ES256",
            one(spec(
                "k",
                &[Algorithm::ES256],
                pem("rs-as-ec.pem", &rs.public_pem),
            )),
            "EC public key",
        ),
        (
            "RSA of 1024 bits",
            one(spec(
                "k",
                &[Algorithm::RS256],
                pem("weak.pem", &weak.public_pem),
            )),
            "1024 bits",
        ),
        (
            "empty kid",
            one(spec("", &[Algorithm::RS256], pem("e.pem", &rs.public_pem))),
            "empty key id",
        ),
        (
            "missing file",
            one(spec(
                "k",
                &[Algorithm::RS256],
                KeySource::PemFile(d.join("absent.pem")),
            )),
            "absent.pem",
        ),
        (
            "the same kid twice",
            KeySources {
                keys: vec![
                    spec("k", &[Algorithm::RS256], pem("a.pem", &rs.public_pem)),
                    spec("k", &[Algorithm::RS256], pem("b.pem", &rs.public_pem)),
                ],
                jwks_file: None,
            },
            "configured twice",
        ),
        (
            "JWKS key without alg",
            jwks("noalg.json", json!([rsa_jwk.clone()])),
            "no algorithms",
        ),
        (
            "JWKS key without kid",
            jwks(
                "nokid.json",
                json!([without(with(rsa_jwk.clone(), "alg", json!("RS256")), "kid")]),
            ),
            "has no kid",
        ),
        (
            "JWKS HMAC secret",
            jwks(
                "oct.json",
                json!([{"kty": "oct", "kid": "o", "alg": "HS256", "k": b64(&[7; 32])}]),
            ),
            "JWKS holds public keys",
        ),
        (
            "JWKS encryption key",
            jwks(
                "enc.json",
                json!([with(
                    with(rsa_jwk.clone(), "alg", json!("RS256")),
                    "use",
                    json!("enc")
                )]),
            ),
            "not a signature key",
        ),
        (
            "JWKS RSA key claiming ES256",
            jwks(
                "mismatch.json",
                json!([with(rsa_jwk.clone(), "alg", json!("ES256"))]),
            ),
            "does not match",
        ),
    ];
    println!(
        "\n{:<32} {:<28} got",
        "configuration", "expected (in the error)"
    );
    let mut failures = Vec::new();
    for (name, sources, want) in cases {
        let got = match KeySet::load(&sources) {
            Ok(set) => format!("loaded {:?}", set.kids()),
            Err(e) => e.to_string(),
        };
        println!("{name:<32} {want:<28} {got}");
        if !got.contains(want) {
            failures.push(format!("{name}: wanted {want:?} in {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A minted token verifies with the same secret; the minting rules match the node's.
#[test]
fn minted_tokens_verify() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"a development secret of 32+ bytes\n";
    let path = write(dir.path(), "dev.secret", secret);
    let v = Verifier::new(
        policy(DEFAULT_MAX_TOKEN_BYTES),
        KeySources {
            keys: vec![spec(
                "dev",
                &[Algorithm::HS256],
                KeySource::HmacSecretFile(path.clone()),
            )],
            jwks_file: None,
        },
    )
    .unwrap();
    let req = MintRequest {
        subject: "worker-1".into(),
        roles: vec![Role::Writer],
        stream_prefixes: vec!["workflow-".into()],
        series_prefixes: vec![],
        issuer: ISS.into(),
        audience: AUD.into(),
        kid: Some("dev".into()),
        target: None,
        now_secs: now(),
        ttl_secs: 3600,
    };
    let token = mint_hs256(&read_hmac_secret(&path).unwrap(), &req).unwrap();
    let id = v.verify(&token, Plane::Client).unwrap();
    assert_eq!(id.subject, "worker-1");
    assert_eq!(
        id.stream_prefixes.as_deref(),
        Some(&["workflow-".to_owned()][..])
    );
    assert_eq!(id.series_prefixes, None);
    assert_eq!(id.expires_at, req.now_secs + 3600);
    id.authorize(Method::WorkflowWrite, &[Resource::Workflow("w-1")])
        .unwrap();
    assert!(id
        .authorize(Method::Append, &[Resource::Stream("orders-1")])
        .is_err());
    assert!(matches!(
        mint_hs256(b"short", &req),
        Err(MintError::Secret(_))
    ));
}
