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

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// What the node-to-node service answers a connection without a member certificate.
pub const MEMBER_CERTIFICATE_REQUIRED: &str = "node-to-node calls need a member certificate";

/// A handshake not finished within this is dropped (a silent client holds nothing longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP handshakes in progress at once; more connections wait to be accepted.
const MAX_HTTP_HANDSHAKES: usize = 256;

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
    /// The HTTP listener's server config (no client certificates asked).
    http: Arc<rustls::ServerConfig>,
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
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Invalid {
                    setting: Setting::CaFile,
                    path: ca_file.to_owned(),
                    reason: e.to_string(),
                })?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| TlsError::Invalid {
                setting: Setting::CertFile,
                path: cert_file.to_owned(),
                reason: format!(
                    "not a member certificate of tls.ca_file ({}): {e}",
                    ca_file.display()
                ),
            })?;
        let mut http = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Mismatch(e.to_string()))?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert_pem,
            key_pem,
            ca_pem,
            http: Arc::new(http),
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

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The gRPC server's TLS: this node's certificate; client certificates optional but,
    /// when presented, verified against the cluster's CA (peers present theirs).
    pub fn grpc_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
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

    /// The HTTP listener, serving TLS with this node's certificate.
    pub fn http_listener(&self, listener: TcpListener) -> io::Result<HttpsListener> {
        HttpsListener::new(listener, tokio_rustls::TlsAcceptor::from(self.http.clone()))
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
/// `MAX_HTTP_HANDSHAKES`, each within `HANDSHAKE_TIMEOUT`) so that a slow or silent client
/// never holds up the others; finished ones are handed to the server with the peer's
/// address.
pub struct HttpsListener {
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl HttpsListener {
    fn new(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(MAX_HTTP_HANDSHAKES);
        tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(HttpsListener {
            accepted,
            local_addr,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HTTP_HANDSHAKES));
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
                    tracing::warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY");
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "HTTP TLS handshake timed out"),
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
