//! Bearer tokens on the client APIs: the one interceptor every client gRPC service is
//! mounted behind, and the header parsing the HTTP adapter shares. A verified token's
//! identity rides in the request's extensions to [`caller`](super::caller); the service
//! layer authorizes each operation against it.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::auth::{AuthError, Identity, Plane, Reason, Verifier};

/// What a verified request carries in its extensions.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Arc<Identity>,
    pub token: Arc<str>,
}

/// Checks the bearer token of every request to the services it wraps (`None`:
/// authentication is off, every request passes as anonymous).
#[derive(Clone)]
pub struct ClientAuth {
    verifier: Option<Arc<Verifier>>,
}

impl ClientAuth {
    pub fn new(verifier: Option<Arc<Verifier>>) -> Self {
        ClientAuth { verifier }
    }
}

impl tonic::service::Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(verifier) = &self.verifier else {
            return Ok(req);
        };
        let authenticated = verify(verifier, bearer(req.metadata()))?;
        req.extensions_mut().insert(authenticated);
        Ok(req)
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme is case-insensitive).
/// `Err` for a header that is present but not a bearer token.
pub fn bearer_of(value: Option<&[u8]>) -> Result<Option<&str>, AuthError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| malformed("the authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(malformed(
            "the authorization header is not \"Bearer <token>\"",
        )),
    }
}

fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, AuthError> {
    bearer_of(metadata.get("authorization").map(|v| v.as_bytes()))
}

fn malformed(what: &'static str) -> AuthError {
    AuthError::Unauthenticated(Reason::Malformed(what))
}

/// Verifies a client-plane token (or its absence) into what a request carries.
pub fn verify(
    verifier: &Verifier,
    token: Result<Option<&str>, AuthError>,
) -> Result<Authenticated, Status> {
    authenticate(verifier, token).map_err(auth_status)
}

/// [`verify`], transport-neutral: for the HTTP adapters (`/metrics`, GraphQL) and the
/// gRPC interceptor alike.
pub fn authenticate(
    verifier: &Verifier,
    token: Result<Option<&str>, AuthError>,
) -> Result<Authenticated, AuthError> {
    let token = token.and_then(|t| t.ok_or(AuthError::Unauthenticated(Reason::Missing)))?;
    let identity = verifier.verify(token, Plane::Client)?;
    Ok(Authenticated {
        identity,
        token: Arc::from(token),
    })
}

/// `UNAUTHENTICATED` or `PERMISSION_DENIED`, with the error's message (which never says
/// which part of a signature failed).
pub fn auth_status(e: AuthError) -> Status {
    super::status(e.into())
}

/// `stream` until `deadline` (the caller's token expiring), then one `UNAUTHENTICATED`
/// saying so, and the end: a subscription does not outlive its credential. `None`: no end.
pub fn until_expiry<T, S>(
    stream: S,
    deadline: Option<tokio::time::Instant>,
) -> impl futures::Stream<Item = Result<T, Status>> + Send
where
    T: Send + 'static,
    S: futures::Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
{
    use futures::StreamExt;
    let expiry = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    futures::stream::unfold(
        (stream, Box::pin(expiry), false),
        |(mut stream, mut expiry, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                item = stream.next() => item.map(|i| (i, (stream, expiry, false))),
                () = &mut expiry => Some((
                    Err(auth_status(AuthError::Unauthenticated(Reason::Expired))),
                    (stream, expiry, true),
                )),
            }
        },
    )
}
