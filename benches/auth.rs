//! Token verification cost (criterion): what a request pays for its bearer token, with and
//! without the verification cache. Run: `cargo bench --bench auth -j 1`.
//!
//! `uncached` verifies the signature and the claims every time (a cache of 0 entries);
//! `cached` is the same token again, found by its SHA-256 — what every request after the
//! first pays once auth is wired in (tokens are reused until they expire).
//!
//! Measured (2 shared cores, busy; `cargo bench --profile dev --bench auth -- --warm-up-time 1
//! --measurement-time 3`, dependencies optimized): uncached HS256 52 µs, RS256 551 µs,
//! ES256 617 µs; cached 3.5–5.4 µs whatever the algorithm — the signature is paid once per
//! token. (The budget — at most 5% of `bench append` throughput — is measured end
//! to end once auth is wired into the APIs.)

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use aetherops::auth::{
    Algorithm, KeySource, KeySources, KeySpec, Plane, Policy, Verifier, DEFAULT_LEEWAY_SECS,
    DEFAULT_MAX_TOKEN_BYTES,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{EncodingKey, Header};

fn verifier(kid: &str, alg: Algorithm, source: KeySource, cache: usize) -> Verifier {
    Verifier::new(
        Policy {
            issuer: "bench".into(),
            audience: "aetherops".into(),
            node_audience: "aetherops-node".into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cache_entries: cache,
        },
        KeySources {
            keys: vec![KeySpec {
                kid: kid.into(),
                algorithms: vec![alg],
                source,
                node: None,
                node_plane: false,
            }],
            jwks_file: None,
        },
    )
    .unwrap()
}

fn token(kid: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "bench", "roles": ["writer"], "streams": ["orders-"], "iss": "bench",
        "aud": "aetherops", "iat": now, "nbf": now, "exp": now + 3600,
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn bench(c: &mut Criterion) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dev.secret");
    std::fs::write(&secret, [7u8; 32]).unwrap();
    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let rsa_pem = dir.path().join("rs.pem");
    std::fs::write(
        &rsa_pem,
        rsa.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let ec_pem = dir.path().join("ec.pem");
    std::fs::write(
        &ec_pem,
        ec.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();

    let cases = [
        (
            "HS256",
            Algorithm::HS256,
            KeySource::HmacSecretFile(secret),
            EncodingKey::from_secret(&[7u8; 32]),
        ),
        (
            "RS256",
            Algorithm::RS256,
            KeySource::PemFile(rsa_pem),
            EncodingKey::from_rsa_pem(rsa.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes())
                .unwrap(),
        ),
        (
            "ES256",
            Algorithm::ES256,
            KeySource::PemFile(ec_pem),
            EncodingKey::from_ec_pem(ec.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap(),
        ),
    ];
    let mut g = c.benchmark_group("verify");
    for (name, alg, source, key) in cases {
        let t = token("k", alg, &key);
        let uncached = verifier("k", alg, source.clone(), 0);
        g.bench_with_input(BenchmarkId::new("uncached", name), &t, |b, t| {
            b.iter(|| uncached.verify(black_box(t), Plane::Client).unwrap())
        });
        let cached = verifier("k", alg, source, 10_000);
        cached.verify(&t, Plane::Client).unwrap();
        g.bench_with_input(BenchmarkId::new("cached", name), &t, |b, t| {
            b.iter(|| cached.verify(black_box(t), Plane::Client).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
