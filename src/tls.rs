//! Transport security: the node's certificate, key and cluster CA read from PEM files and
//! checked once at start; the TLS settings of the gRPC server, of the node-to-node client
//! and of the HTTP listener built from them; and the rule of the node-to-node service:
//! a caller proves it is a member with a certificate the cluster's CA signed.
//!
//! One certificate per node serves both ends: it is the server certificate of every
//! listener and the client certificate a node presents to its peers. So a node certificate
//! carries, as subject alternative names, the addresses peers and clients dial (IPs as IP
//! SANs, host names as DNS SANs): a peer checks the name of the address it dialled against
//! them ([`server_name`]).
//!
//! Client certificates are optional at the handshake (clients of the public API have none);
//! a certificate that is presented must chain to the cluster's CA or the handshake fails.
//! The node-to-node service then refuses a connection that presented none
//! ([`require_member_certificate`]).
//!
//! The files are read again on SIGHUP ([`LiveTls::reload`]): certificates rotate without a
//! restart. Both listeners run their own handshakes and take the configuration in force
//! when a connection arrives; the node-to-node client dials new connections with it (its
//! channels are replaced). Connections already open keep the certificates they were made
//! with. Files that do not load leave the ones in force.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// What the node-to-node service answers a connection without a member certificate.
pub const MEMBER_CERTIFICATE_REQUIRED: &str = "node-to-node calls need a member certificate";

/// A handshake not finished within this is dropped (a silent client holds nothing longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once on one listener; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// PEM files are small; anything larger is not what the setting should name.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Which setting a problem comes from (the message names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    CertFile,
    KeyFile,
    CaFile,
    /// `aetherctl --ca-file`.
    ClientCaFile,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::CertFile => "tls.cert_file",
            Setting::KeyFile => "tls.key_file",
            Setting::CaFile => "tls.ca_file",
            Setting::ClientCaFile => "--ca-file",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} ({path}): cannot read: {source}")]
    Read {
        setting: Setting,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{setting} ({path}): {reason}")]
    Invalid {
        setting: Setting,
        path: PathBuf,
        reason: String,
    },
    #[error("tls.cert_file and tls.key_file: {0}")]
    Mismatch(String),
}

/// This node's TLS material, read and checked.
#[derive(Clone)]
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    /// The gRPC listener's server config: client certificates optional but, when
    /// presented, verified against the cluster's CA (peers present theirs); ALPN h2.
    grpc: Arc<rustls::ServerConfig>,
    /// The HTTP listener's server config (no client certificates asked).
    http: Arc<rustls::ServerConfig>,
    /// When the node certificate expires (Unix seconds).
    not_after: i64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(setting: Setting, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            setting,
            path: path.to_owned(),
            reason: format!("{len} bytes: not a PEM file (at most {MAX_PEM_BYTES})"),
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    setting: Setting,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        setting,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

impl Tls {
    /// Reads and checks the files: the certificates and key parse, the key is the
    /// certificate's, the CA is a usable trust anchor and the node's certificate chains to
    /// it (peers would refuse it otherwise).
    pub fn load(cert_file: &Path, key_file: &Path, ca_file: &Path) -> Result<Tls, TlsError> {
        let cert_pem = read_pem(Setting::CertFile, cert_file)?;
        let key_pem = read_pem(Setting::KeyFile, key_file)?;
        let ca_pem = read_pem(Setting::CaFile, ca_file)?;
        let chain = certificates(Setting::CertFile, cert_file, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
            setting: Setting::KeyFile,
            path: key_file.to_owned(),
            reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        })?;
        let roots = Self::roots(Setting::CaFile, ca_file, &ca_pem)?;
        // The gRPC listener's verifier (client certificates optional there) checks this
        // node's own certificate too: peers will verify it the same way.
        let members =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Invalid {
                    setting: Setting::CaFile,
                    path: ca_file.to_owned(),
                    reason: e.to_string(),
                })?;
        members
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| TlsError::Invalid {
                setting: Setting::CertFile,
                path: cert_file.to_owned(),
                reason: format!(
                    "not a member certificate of tls.ca_file ({}): {e}",
                    ca_file.display()
                ),
            })?;
        let not_after = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| TlsError::Invalid {
                setting: Setting::CertFile,
                path: cert_file.to_owned(),
                reason: format!("not an X.509 certificate: {e}"),
            })?
            .1
            .validity()
            .not_after
            .timestamp();
        let server = || {
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Mismatch(e.to_string()))
        };
        let mismatch = |e: rustls::Error| TlsError::Mismatch(e.to_string());
        let mut grpc = server()?
            .with_client_cert_verifier(members)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        let mut http = server()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(mismatch)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert_pem,
            key_pem,
            ca_pem,
            grpc: Arc::new(grpc),
            http: Arc::new(http),
            not_after,
        })
    }

    fn roots(
        setting: Setting,
        ca_file: &Path,
        ca_pem: &[u8],
    ) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(setting, ca_file, ca_pem)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                setting,
                path: ca_file.to_owned(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(Arc::new(roots))
    }

    /// When the node certificate expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The node-to-node client's TLS towards the peer at `addr`: trusts the cluster's CA
    /// only, presents this node's certificate, and checks the peer's certificate against
    /// the address's host ([`server_name`]).
    pub fn peer_client(&self, addr: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
            .domain_name(server_name(addr))
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// The TLS material in force, read again from the same files by [`LiveTls::reload`].
#[derive(Clone)]
pub struct LiveTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
    current: Arc<RwLock<Arc<Tls>>>,
    /// Counts successful reloads: a client built with an older generation is rebuilt.
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("cert_file", &self.cert_file)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl LiveTls {
    /// Reads and checks the files ([`Tls::load`]).
    pub fn load(cert_file: &Path, key_file: &Path, ca_file: &Path) -> Result<LiveTls, TlsError> {
        let tls = Tls::load(cert_file, key_file, ca_file)?;
        Ok(LiveTls {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            ca_file: ca_file.to_owned(),
            current: Arc::new(RwLock::new(Arc::new(tls))),
            generation: Arc::default(),
        })
    }

    /// The material in force.
    pub fn current(&self) -> Arc<Tls> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many reloads have taken effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the files again and, if they pass every check of [`Tls::load`], puts them in
    /// force for new connections, returning the new generation. Otherwise nothing changes.
    pub fn reload(&self) -> Result<u64, TlsError> {
        let tls = Arc::new(Tls::load(&self.cert_file, &self.key_file, &self.ca_file)?);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = tls;
        // Bumped under the lock: whoever sees the new generation reads the new material.
        Ok(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// The node-to-node client's TLS towards `addr`, with the material in force.
    pub fn peer_client(&self, addr: &str) -> ClientTlsConfig {
        self.current().peer_client(addr)
    }

    /// The gRPC listener's connections, each handshaken with the material in force when it
    /// arrived (this node's certificate; a client certificate is optional but, when
    /// presented, must chain to the cluster's CA). For `serve_with_incoming`.
    pub fn grpc_incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_loop(listener, self.clone(), |t| t.grpc.clone(), tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|(tls, _)| Ok(tls))
    }

    /// The HTTP listener, serving TLS with the material in force when a connection arrives.
    pub fn http_listener(&self, listener: TcpListener) -> io::Result<HttpsListener> {
        HttpsListener::new(listener, self.clone())
    }
}

/// The name a certificate must carry for a peer dialled at `addr` (`host:port`): its host,
/// an IP without the brackets of an IPv6 address (checked against the IP SANs) or a DNS
/// name (checked against the DNS SANs).
pub fn server_name(addr: &str) -> &str {
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return addr;
    }
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A client's TLS trusting the CA in `ca_file` only (for `aetherctl --ca-file`), checking
/// the server's certificate against `addr`'s host.
pub fn client_trusting(ca_pem: &[u8], addr: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name(addr))
        .timeout(HANDSHAKE_TIMEOUT)
}

/// Reads a CA file for a client and checks that it holds a usable CA certificate.
pub fn read_ca(ca_file: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read_pem(Setting::ClientCaFile, ca_file)?;
    Tls::roots(Setting::ClientCaFile, ca_file, &pem)?;
    Ok(pem)
}

/// The node-to-node service's interceptor: with TLS (`required`), a call is served only on
/// a connection that presented a client certificate, which the handshake verified against
/// the cluster's CA; any other is UNAUTHENTICATED. Without TLS every call passes (plaintext
/// clusters trust their network, as before).
pub fn require_member_certificate(
    required: bool,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        if !required || request.peer_certs().is_some_and(|c| !c.is_empty()) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(MEMBER_CERTIFICATE_REQUIRED))
        }
    }
}

/// A TLS listener for `axum::serve`: handshakes run concurrently (at most
/// `MAX_HANDSHAKES`, each within `HANDSHAKE_TIMEOUT`) so that a slow or silent client
/// never holds up the others; finished ones are handed to the server with the peer's
/// address.
pub struct HttpsListener {
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl HttpsListener {
    fn new(listener: TcpListener, tls: LiveTls) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_loop(listener, tls, |t| t.http.clone(), tx));
        Ok(HttpsListener {
            accepted,
            local_addr,
        })
    }
}

/// Accepts connections on `listener` and runs their handshakes concurrently, each with the
/// server config `config` picks from the material in force when the connection arrived;
/// hands finished ones to `tx`. Ends when `tx`'s receiver is gone (the server stopped).
async fn accept_loop(
    listener: TcpListener,
    tls: LiveTls,
    config: fn(&Tls) -> Arc<rustls::ServerConfig>,
    tx: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        // The server dropped the listener (shutdown): stop accepting.
        let permit = tokio::select! {
            _ = tx.closed() => return,
            p = handshakes.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY");
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(config(&tls.current()));
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_dialled_host() {
        let cases = [
            ("127.0.0.1:50051", "127.0.0.1"),
            ("[::1]:50051", "::1"),
            ("node-1.example:7000", "node-1.example"),
            ("localhost", "localhost"),
            ("::1", "::1"),
        ];
        for (addr, name) in cases {
            assert_eq!(server_name(addr), name, "{addr}");
        }
    }

    /// A CA and a node certificate for 127.0.0.1 signed by it, made here: (CA PEM, node
    /// certificate PEM, node key PEM).
    fn made_material() -> (String, String, String) {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut node = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = node.signed_by(&key, &issuer).unwrap();
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_reload_puts_files_in_force_only_when_they_pass_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let [cert, key, ca] = ["node.pem", "node.key", "ca.pem"].map(|f| dir.path().join(f));
        let (ca_pem, cert_pem, key_pem) = made_material();
        std::fs::write(&ca, &ca_pem).unwrap();
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        let live = LiveTls::load(&cert, &key, &ca).unwrap();
        let first = live.current();
        assert_eq!(live.generation(), 0);

        // Another CA's certificate and key: they match, but the CA did not sign them.
        let (_, foreign_cert, foreign_key) = made_material();
        std::fs::write(&cert, &foreign_cert).unwrap();
        std::fs::write(&key, &foreign_key).unwrap();
        let refused = live.reload().unwrap_err().to_string();
        assert!(refused.contains("not a member certificate"), "{refused}");
        // A key that is not the certificate's.
        std::fs::write(&cert, &cert_pem).unwrap();
        assert!(live.reload().is_err());
        // A file that is gone.
        std::fs::remove_file(&key).unwrap();
        assert!(live
            .reload()
            .unwrap_err()
            .to_string()
            .contains("tls.key_file"));
        assert_eq!(live.generation(), 0);
        assert!(
            Arc::ptr_eq(&first, &live.current()),
            "the material in force changed"
        );

        // Good files again (the certificate and its key): read anew and in force, one
        // generation on.
        std::fs::write(&key, &key_pem).unwrap();
        assert_eq!(live.reload().unwrap(), 1);
        assert_eq!(live.generation(), 1);
        assert!(!Arc::ptr_eq(&first, &live.current()));
        assert_eq!(live.current().cert_pem, cert_pem.as_bytes());
    }

    #[test]
    fn the_member_check_passes_everything_without_tls() {
        let mut open = require_member_certificate(false);
        assert!(open(tonic::Request::new(())).is_ok());
        let mut closed = require_member_certificate(true);
        let refused = closed(tonic::Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), MEMBER_CERTIFICATE_REQUIRED);
    }
}
