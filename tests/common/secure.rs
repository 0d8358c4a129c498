//! Secure mode of the harness (`AETHER_TEST_SECURE=1`): cluster members start with `[auth]`
//! and `[tls]` on, and every client the harness hands out speaks TLS and carries an admin
//! token, so that the 3-node and fault suites run unchanged against protected nodes.
//!
//! The material — a throwaway CA, the HMAC secrets of the client and node planes, an admin
//! token — is made once per test process and kept in memory; each node writes the files it
//! needs next to its data directory (`<data dir>.secure/`), so they go with the test's
//! temporary directory. Also the test CA and its node certificates ([`Ca`]), which
//! `tests/tls.rs` uses too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aetherops::auth::{mint_hs256, MintRequest, Role};
use aetherops::proto::aetherops::v1 as pb;
use pb::admin_client::AdminClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::tokens::{AUD, ISS, NODE_AUD};

/// The variable that selects secure mode.
pub const ENV: &str = "AETHER_TEST_SECURE";

/// Whether this test process runs in secure mode (`AETHER_TEST_SECURE=1`), read once.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var(ENV).as_deref() {
        Err(_) | Ok("") | Ok("0") => false,
        Ok("1") => true,
        // A typo must not quietly run the plain suite.
        Ok(other) => panic!("{ENV}={other:?}: set it to 1 (secure) or 0 (plain)"),
    })
}

/// A CA made at test time (no private key is committed): its certificate, and the means
/// to sign node certificates.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A node certificate (server and client) and its key, PEM.
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeCert {
    /// Writes `dir/NAME.pem` and `dir/NAME.key`: (cert, key).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).expect("write certificate");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

impl Ca {
    pub fn generate(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A node certificate named `name`, for these addresses (IPs become IP SANs, names DNS
    /// SANs), good for serving and for dialling peers.
    pub fn node(&self, name: &str, sans: &[String]) -> NodeCert {
        self.node_with(name, sans, |_| {})
    }

    /// [`Ca::node`], valid until the end of the day `(year, month, day)` begins (UTC).
    pub fn node_until(&self, name: &str, sans: &[String], (y, m, d): (i32, u8, u8)) -> NodeCert {
        self.node_with(name, sans, |p| p.not_after = rcgen::date_time_ymd(y, m, d))
    }

    fn node_with(
        &self,
        name: &str,
        sans: &[String],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> NodeCert {
        let mut params = CertificateParams::new(sans.to_vec()).expect("node params");
        adjust(&mut params);
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("node key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("node certificate");
        NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// What secure mode shares across the process: one CA, one client-plane secret (kid
/// `harness`), one node-plane secret (kid `harness-node`), an admin token.
pub struct Material {
    ca: Ca,
    client_secret: String,
    node_secret: String,
    admin_token: String,
    bearer: AsciiMetadataValue,
}

const CLIENT_KID: &str = "harness";
const NODE_KID: &str = "harness-node";
/// Longer than any test process lives (nextest ends a test after 8 minutes).
const TOKEN_TTL_SECS: u64 = 24 * 3600;

fn random_secret() -> String {
    // 64 hex characters: twice the 32 bytes the node asks of an HMAC secret.
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The process's material (made on first use).
pub fn material() -> &'static Material {
    static MATERIAL: OnceLock<Material> = OnceLock::new();
    MATERIAL.get_or_init(|| {
        let client_secret = random_secret();
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let admin_token = mint_hs256(
            client_secret.as_bytes(),
            &MintRequest {
                subject: "harness-admin".into(),
                roles: vec![Role::Admin],
                stream_prefixes: Vec::new(),
                series_prefixes: Vec::new(),
                issuer: ISS.into(),
                audience: AUD.into(),
                kid: Some(CLIENT_KID.into()),
                target: None,
                now_secs,
                ttl_secs: TOKEN_TTL_SECS,
            },
        )
        .expect("mint the harness's admin token");
        Material {
            ca: Ca::generate("harness-ca"),
            bearer: format!("Bearer {admin_token}")
                .parse()
                .expect("a token is ASCII"),
            client_secret,
            node_secret: random_secret(),
            admin_token,
        }
    })
}

/// The files a secure node was started with that its clients need too.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
}

impl Material {
    /// Writes node `id`'s certificate (for `ip`, 127.0.0.1 — the address its proxy and
    /// peers dial — and localhost), the CA, the secrets and the admin token into `dir`;
    /// returns the `[auth]` and `[tls]` tables that use them.
    pub fn node_config(&self, dir: &Path, id: u64, ip: &str) -> (toml::Table, NodeFiles) {
        std::fs::create_dir_all(dir).expect("secure dir");
        let mut sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        if ip != "127.0.0.1" {
            sans.push(ip.to_owned());
        }
        let (cert, key) = self
            .ca
            .node(&format!("node{id}"), &sans)
            .write(dir, &format!("node{id}"));
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a secure-mode file");
            path.display().to_string()
        };
        let ca = write("ca.pem", &self.ca.cert_pem);
        let client_secret = write("client.secret", &self.client_secret);
        let node_secret = write("node.secret", &self.node_secret);
        let token = write("admin.token", &self.admin_token);
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let toml = format!(
            "[auth]\nenabled = true\nissuer = {ISS:?}\naudience = {AUD:?}\n\
             node_audience = {NODE_AUD:?}\nnode_key_kid = {NODE_KID:?}\n\
             node_key_file = {node_secret:?}\n\n\
             [[auth.keys]]\nkid = {CLIENT_KID:?}\nalgorithms = [\"HS256\"]\n\
             hmac_secret_file = {client_secret:?}\n\n\
             [[auth.keys]]\nkid = {NODE_KID:?}\nalgorithms = [\"HS256\"]\nnode_plane = true\n\
             hmac_secret_file = {node_secret:?}\n\n\
             [tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nca_file = {ca:?}\n"
        );
        let table = toml.parse().expect("the secure sections parse");
        (
            table,
            NodeFiles {
                ca_file: ca.into(),
                token_file: token.into(),
            },
        )
    }

    /// The TLS endpoint of `addr` (`HOST:PORT`), trusting the harness's CA only.
    pub fn endpoint(&self, addr: &str) -> Endpoint {
        let host = aetherops::tls::server_name(addr).to_owned();
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca.cert_pem))
                    .domain_name(host),
            )
            .expect("TLS config")
    }

    pub fn bearer(&self) -> Bearer {
        Bearer(Some(self.bearer.clone()))
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A rustls client trusting the harness's CA (for HTTPS).
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(client_config(self.ca.cert_pem.as_bytes(), None))
    }
}

/// Puts a bearer token on every request that carries none of its own (tests that send
/// their own token, or none on purpose through a plain node, are left as they are).
#[derive(Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            if !req.metadata().contains_key("authorization") {
                req.metadata_mut().insert("authorization", v.clone());
            }
        }
        Ok(req)
    }
}

/// The endpoint the harness dials `addr` with: TLS with the harness's CA in secure mode,
/// plaintext otherwise (for helpers that know an address only; nodes know their own mode,
/// `TestNode::endpoint`).
pub fn endpoint(addr: &str) -> Endpoint {
    if enabled() {
        material().endpoint(addr)
    } else {
        Endpoint::from_shared(format!("http://{addr}")).expect("endpoint")
    }
}

/// The token the harness's clients carry: the admin token in secure mode, none otherwise.
pub fn bearer() -> Bearer {
    if enabled() {
        material().bearer()
    } else {
        Bearer::default()
    }
}

/// Parses a config the test gave (a file or text), for secure mode to add to it.
pub fn parse_config(toml: &str, from: &str) -> toml::Table {
    toml.parse()
        .unwrap_or_else(|e| panic!("the test's config ({from}) does not parse: {e}"))
}

/// How long the mode check waits for one answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's own account of its protection (its status), asked over `ch` with `bearer`.
async fn security(ch: Channel, bearer: Bearer) -> Result<pb::Security, tonic::Status> {
    let s = AdminClient::with_interceptor(ch, bearer)
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    Ok(s.security.expect("status reports the node's security"))
}

fn plaintext(grpc_addr: &str) -> Endpoint {
    Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("endpoint")
        .connect_timeout(CHECK_TIMEOUT)
        .timeout(CHECK_TIMEOUT)
}

/// Proves that a node the harness secured is secured: a call without a token is
/// UNAUTHENTICATED, a plaintext connection gets no answer, and the node's own status says
/// that tokens are checked and TLS is on. So the secure pass can never silently run plain.
pub async fn assert_secured(grpc_addr: &str, log: impl Fn() -> String) {
    let m = material();
    let ch = m
        .endpoint(grpc_addr)
        .timeout(CHECK_TIMEOUT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("TLS connect {grpc_addr}: {e}\n{}", log()));
    let refused = security(ch.clone(), Bearer::default())
        .await
        .expect_err("a secure node answered a call without a token");
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "a call without a token: {refused:?}"
    );
    let r = security(plaintext(grpc_addr).connect_lazy(), m.bearer()).await;
    assert!(r.is_err(), "a secure node answered in plaintext: {r:?}");
    let s = security(ch, m.bearer())
        .await
        .expect("status with the admin token");
    assert!(
        s.auth && s.tls && !s.dev && !s.insecure,
        "a secure node reports {s:?}"
    );
}

/// The other side: a node the harness started plain answers without a token, in
/// plaintext, and says that it checks no token.
pub async fn assert_plain(grpc_addr: &str, log: impl Fn() -> String) {
    let ch = plaintext(grpc_addr)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {grpc_addr}: {e}\n{}", log()));
    let s = security(ch, Bearer::default())
        .await
        .expect("a plain node answers without a token");
    assert!(!s.auth && !s.tls, "a plain node reports {s:?}");
}

/// [`super::http_get_with`] over HTTPS, trusting the harness's CA.
pub async fn https_get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> super::HttpReply {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect https");
    let name =
        rustls::pki_types::ServerName::try_from(aetherops::tls::server_name(addr).to_owned())
            .expect("a server name");
    let tls = tokio_rustls::TlsConnector::from(material().rustls_client())
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    super::http_exchange(tls, addr, path, headers).await
}

/// A rustls client trusting the CA certificates in `ca_pem`, presenting `member` (a PEM
/// certificate chain and its key) if given.
pub fn client_config(ca_pem: &[u8], member: Option<(&[u8], &[u8])>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    match member {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate PEM");
            let key = PrivateKeyDer::from_pem_slice(key).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    }
}
