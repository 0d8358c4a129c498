//! The graphql-transport-ws protocol (graphql-ws's PROTOCOL.md) over an axum WebSocket: the
//! connection handshake, operations multiplexed by id, and the bounds a node needs against
//! many or slow clients. Transport only: what an operation means is the `Executor`'s business,
//! who the client is is `on_init`'s.
//!
//! One socket is three kinds of task:
//! - the reader (the decisions): it parses each client message, keeps the connection state
//!   (initialised? acknowledged? which ids are active?), starts and stops operations and, on
//!   a protocol breach, a timer (init timeout, token deadline) or a lagging operation, orders
//!   the close;
//! - the writer (the IO): it sends the reader's own messages (ack, pong, refusals) and the
//!   operations' messages, taking the next ready operation at random (`StreamMap`) so that a
//!   busy stream cannot starve a quiet one, and it obeys a close order even while a send is
//!   blocked on a client that does not read;
//! - one spawned task per operation: it pulls the GraphQL stream and pushes each message,
//!   serialized, into that operation's bounded queue; it holds one of the node's permits
//!   (`WsLimits::per_node`) until it ends.
//!
//! Invariants: memory per socket is bounded by `max_per_socket × buffer_per_subscription`
//! messages plus `CONTROL_QUEUE` control messages; an id is active from its Subscribe until
//! its final message (Complete or Error) is handed to the socket, or the client completes it,
//! so a client that saw the final message may reuse the id at once; no message of an
//! operation the client completed, or of an earlier operation with the same id, is sent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_graphql::{Data, Executor, Response};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures::stream::{BoxStream, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;

/// The WebSocket subprotocol this module speaks.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// Close codes: the protocol's, the WebSocket standard's 1009, and our private 4499.
pub mod close_code {
    /// An invalid message (not JSON, unknown type, missing or ill-typed field).
    pub const BAD_REQUEST: u16 = 4400;
    /// A Subscribe before the connection was acknowledged.
    pub const UNAUTHORIZED: u16 = 4401;
    /// `on_init` refused the connection, or its token expired (`Accepted::deadline`).
    pub const FORBIDDEN: u16 = 4403;
    /// The client did not ask for `graphql-transport-ws` (graphql-ws closes so too).
    pub const SUBPROTOCOL_NOT_ACCEPTABLE: u16 = 4406;
    /// No ConnectionInit within `WsLimits::init_timeout`.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// A Subscribe whose id is already active.
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    /// A second ConnectionInit.
    pub const TOO_MANY_INIT: u16 = 4429;
    /// The client does not read its messages fast enough (private code: graphql-ws's client
    /// retries on it, as it does on 4403).
    pub const CLIENT_TOO_SLOW: u16 = 4499;
    /// A message over `WsLimits::max_message_bytes` (RFC 6455's "message too big").
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// `extensions.code` of the Error message sent, just before the 4499 close, for the operation
/// whose queue stayed full.
pub const LAGGING: &str = "LAGGING";
/// `extensions.code` of the Error message that refuses a Subscribe over a cap (per socket or
/// per node); the same word as `ServiceError::Overloaded`'s kind.
pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED";

/// A close frame's reason is at most 123 bytes (RFC 6455: 125 bytes of payload, 2 of them
/// the code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Messages the reader queues for the writer (acks, pongs, refusals): a client that sends
/// pings but does not read is cut off (4499) once this many are waiting.
const CONTROL_QUEUE: usize = 64;

/// How long a close (its preface message, the close frame, then the client's closing reply)
/// may take before the socket is dropped: a client that does not read cannot hold the socket
/// longer than this after the decision to close it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A sane default for [`WsLimits::lag_grace`]: a healthy client drains a full queue in
/// milliseconds; five seconds of no room means it stopped reading.
pub const DEFAULT_LAG_GRACE: Duration = Duration::from_secs(5);

/// The bounds of one socket (and, through `per_node`, of every socket of the node).
#[derive(Clone, Debug)]
pub struct WsLimits {
    /// How long the server waits for ConnectionInit before closing with 4408.
    pub init_timeout: Duration,
    /// Active operations on one socket; a Subscribe over it is refused with an Error message.
    pub max_per_socket: usize,
    /// Operations across the node: one permit per active operation, released when it ends;
    /// a Subscribe when none is free is refused with an Error message.
    pub per_node: Arc<Semaphore>,
    /// Messages queued per operation for a client that reads slower than the operation emits.
    pub buffer_per_subscription: usize,
    /// The largest client message accepted; a larger one closes the socket with 1009.
    pub max_message_bytes: usize,
    /// How long an operation's full queue may stay full before the client counts as lagging
    /// (Error `LAGGING`, then close 4499). A full queue alone is backpressure: a stream that
    /// emits as fast as it can is slowed to the client's pace, not cut off.
    pub lag_grace: Duration,
}

/// What `on_init` grants a connection.
pub struct Accepted {
    /// Given to every operation as its session data (`Context::data` finds it).
    pub data: Data,
    /// When the credential behind the connection expires: the socket is then closed with 4403.
    pub deadline: Option<Instant>,
}

/// The axum handler's half: asks for `graphql-transport-ws`, bounds the message size, and
/// serves the upgraded socket. A client that did not offer the subprotocol is upgraded and at
/// once closed with 4406 "Subprotocol not acceptable", as graphql-ws does (a browser cannot
/// read an HTTP refusal of a WebSocket handshake, but it can read a close code).
pub fn upgrade<E, F, Fut>(
    upgrade: WebSocketUpgrade,
    executor: E,
    on_init: F,
    limits: WsLimits,
) -> axum::response::Response
where
    E: Executor,
    F: FnOnce(Option<Value>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Accepted, String>> + Send + 'static,
{
    // tungstenite's own cap (it fails the read, with no close frame) is twice ours, so that a
    // message somewhat over the limit gets `serve`'s clear 1009 close, while tungstenite
    // still refuses to buffer an absurd one.
    let hard_cap = limits.max_message_bytes.saturating_mul(2);
    let upgrade = upgrade
        .protocols([PROTOCOL])
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap);
    let agreed = upgrade.selected_protocol().is_some();
    upgrade.on_upgrade(move |mut socket| async move {
        if agreed {
            serve(socket, executor, on_init, limits).await;
        } else {
            let frame = close_frame(
                close_code::SUBPROTOCOL_NOT_ACCEPTABLE,
                "Subprotocol not acceptable",
            );
            // The socket is dropped right after: a failed send only means it is gone already.
            let _ = timeout(CLOSE_TIMEOUT, socket.send(frame)).await;
        }
    })
}

/// Serve one upgraded socket until it closes. `on_init` gets the ConnectionInit payload and
/// returns what the connection is granted, or the reason (closed with 4403) it is refused.
pub async fn serve<E, F, Fut>(socket: WebSocket, executor: E, on_init: F, limits: WsLimits)
where
    E: Executor,
    F: FnOnce(Option<Value>) -> Fut + Send,
    Fut: Future<Output = Result<Accepted, String>> + Send,
{
    let (sink, stream) = socket.split();
    let active = Active::default();
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (close_tx, close_rx) = oneshot::channel();
    let reader = Reader {
        executor,
        limits,
        active: active.clone(),
        control: control_tx,
        generation: 0,
    };
    let writer = write_loop(sink, control_rx, close_rx, active);
    tokio::join!(reader.run(stream, on_init, close_tx), writer);
    // Dropping the reader and the writer dropped every handle on `active`: its Drop aborted
    // the operations still running.
}

/// What the reader orders the writer to close the socket with.
struct CloseOrder {
    code: u16,
    reason: String,
    /// A message sent just before the close frame (the LAGGING error).
    preface: Option<String>,
}

impl CloseOrder {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        CloseOrder {
            code,
            reason: reason.into(),
            preface: None,
        }
    }
}

/// What the reader hands the writer besides operation messages.
enum Control {
    Send(String),
    /// A new operation's queue, under its generation.
    Register(u64, mpsc::Receiver<Queued>),
}

/// One serialized message of an operation.
struct Queued {
    id: Arc<str>,
    text: String,
    /// Complete or Error: the operation ends when this is handed to the socket.
    last: bool,
}

/// An active operation: its generation tells it from an earlier operation with the same id.
struct Operation {
    generation: u64,
    task: AbortHandle,
}

/// The active operations of one socket, shared by the reader and the writer.
#[derive(Clone, Default)]
struct Active(Arc<ActiveInner>);

#[derive(Default)]
struct ActiveInner(Mutex<HashMap<Arc<str>, Operation>>);

impl Active {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Operation>> {
        // A panic while holding this lock cannot leave the map half-updated (every critical
        // section is one map call), so a poisoned lock is still a consistent map.
        self.0
             .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The text to send for `item` of operation `generation`, or None when that operation is
    /// no longer the active one under its id. Its last message retires the id.
    fn admit(&self, generation: u64, item: Queued) -> Option<String> {
        let mut active = self.lock();
        let current = active.get(&item.id)?;
        if current.generation != generation {
            return None;
        }
        if item.last {
            active.remove(&item.id);
        }
        Some(item.text)
    }
}

impl Active {
    fn abort_all(&self) {
        for (_, op) in self.lock().drain() {
            op.task.abort();
        }
    }
}

impl Drop for ActiveInner {
    fn drop(&mut self) {
        let active = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, op) in active.drain() {
            op.task.abort();
        }
    }
}

/// The reader's state besides the socket.
struct Reader<E> {
    executor: E,
    limits: WsLimits,
    active: Active,
    control: mpsc::Sender<Control>,
    generation: u64,
}

/// What one client message leads to.
enum Step {
    Continue,
    Close(CloseOrder),
}

impl<E: Executor> Reader<E> {
    async fn run<F, Fut>(
        mut self,
        mut stream: SplitStream<WebSocket>,
        on_init: F,
        close: oneshot::Sender<CloseOrder>,
    ) where
        F: FnOnce(Option<Value>) -> Fut + Send,
        Fut: Future<Output = Result<Accepted, String>> + Send,
    {
        let init_deadline = Instant::now() + self.limits.init_timeout;
        let mut on_init = Some(on_init);
        let mut session: Option<(Arc<Data>, Option<Instant>)> = None;
        // Operations report a lagging client here; one report is enough to close.
        let (lagged_tx, mut lagged_rx) = mpsc::channel::<Arc<str>>(1);
        let order = loop {
            let token_deadline = session.as_ref().and_then(|(_, d)| *d);
            let message = tokio::select! {
                biased;
                _ = sleep_until(init_deadline), if on_init.is_some() => {
                    break CloseOrder::new(
                        close_code::INIT_TIMEOUT,
                        "Connection initialisation timeout",
                    );
                }
                _ = sleep_until(token_deadline.unwrap_or(init_deadline)),
                    if token_deadline.is_some() =>
                {
                    break CloseOrder::new(close_code::FORBIDDEN, "Forbidden: token expired");
                }
                Some(id) = lagged_rx.recv() => {
                    let error = error_message(
                        &id,
                        &[refusal(
                            format!(
                                "operation {id}: the client did not read its messages for {} ms",
                                self.limits.lag_grace.as_millis()
                            ),
                            LAGGING,
                        )],
                    );
                    break CloseOrder {
                        code: close_code::CLIENT_TOO_SLOW,
                        reason: "Client too slow".into(),
                        preface: Some(error),
                    };
                }
                message = stream.next() => message,
            };
            let text = match message {
                // The socket is gone (or closed by the client, which tungstenite answers):
                // nothing to send, and dropping `close` lets the writer end.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // WebSocket-level pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                // graphql-ws reads a binary frame as its UTF-8 text; so do we.
                Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => text,
                    Err(_) => {
                        break CloseOrder::new(
                            close_code::BAD_REQUEST,
                            "Invalid message: binary frame is not UTF-8",
                        )
                    }
                },
            };
            if text.len() > self.limits.max_message_bytes {
                break CloseOrder::new(
                    close_code::MESSAGE_TOO_BIG,
                    format!(
                        "Message of {} bytes over the limit of {}",
                        text.len(),
                        self.limits.max_message_bytes
                    ),
                );
            }
            let parsed = match parse_client_message(&text) {
                Ok(parsed) => parsed,
                Err(reason) => break CloseOrder::new(close_code::BAD_REQUEST, reason),
            };
            let step = match parsed {
                ClientMessage::ConnectionInit { payload } => {
                    let Some(on_init) = on_init.take() else {
                        break CloseOrder::new(
                            close_code::TOO_MANY_INIT,
                            "Too many initialisation requests",
                        );
                    };
                    match on_init(payload).await {
                        Ok(accepted) => {
                            session = Some((Arc::new(accepted.data), accepted.deadline));
                            self.control(json!({"type": "connection_ack"}).to_string())
                        }
                        Err(reason) => Step::Close(CloseOrder::new(close_code::FORBIDDEN, reason)),
                    }
                }
                ClientMessage::Ping { payload } => {
                    let mut pong = json!({"type": "pong"});
                    if let Some(payload) = payload {
                        pong["payload"] = payload;
                    }
                    self.control(pong.to_string())
                }
                ClientMessage::Pong => Step::Continue,
                ClientMessage::Subscribe { id, request } => match &session {
                    None => Step::Close(CloseOrder::new(close_code::UNAUTHORIZED, "Unauthorized")),
                    Some((data, _)) => {
                        let data = data.clone();
                        self.subscribe(id, *request, data, &lagged_tx)
                    }
                },
                ClientMessage::Complete { id } => {
                    // Unknown ids (completed already, or never seen) are ignored, per spec.
                    if let Some(op) = self.active.lock().remove(id.as_str()) {
                        op.task.abort();
                    }
                    Step::Continue
                }
            };
            if let Step::Close(order) = step {
                break order;
            }
        };
        // The operations end with the decision to close, not with the closing handshake
        // (which a client may take CLOSE_TIMEOUT to answer): their permits come back now.
        self.active.abort_all();
        let _ = close.send(order);
        // The closing handshake: read (and ignore) until the client answers the close frame,
        // so the socket is not dropped with unread input (which would reset the connection
        // and could lose the close frame on its way).
        let _ = timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }

    /// Queue a message of the reader's own; a client that lets CONTROL_QUEUE of them pile up
    /// does not read, and is cut off.
    fn control(&self, text: String) -> Step {
        self.queue_control(Control::Send(text))
    }

    fn queue_control(&self, control: Control) -> Step {
        match self.control.try_send(control) {
            Ok(()) => Step::Continue,
            // Closed: the writer is gone, so is the socket; the next read ends the loop.
            Err(TrySendError::Closed(_)) => Step::Continue,
            Err(TrySendError::Full(_)) => Step::Close(CloseOrder::new(
                close_code::CLIENT_TOO_SLOW,
                "Client too slow",
            )),
        }
    }

    fn subscribe(
        &mut self,
        id: String,
        request: async_graphql::Request,
        session: Arc<Data>,
        lagged: &mpsc::Sender<Arc<str>>,
    ) -> Step {
        let id: Arc<str> = id.into();
        let mut active = self.active.lock();
        if active.contains_key(&id) {
            return Step::Close(CloseOrder::new(
                close_code::SUBSCRIBER_EXISTS,
                format!("Subscriber for {id} already exists"),
            ));
        }
        if active.len() >= self.limits.max_per_socket {
            drop(active);
            let message = format!(
                "too many active operations on this socket (the limit is {})",
                self.limits.max_per_socket
            );
            return self.control(error_message(&id, &[refusal(message, RESOURCE_EXHAUSTED)]));
        }
        let Ok(permit) = self.limits.per_node.clone().try_acquire_owned() else {
            drop(active);
            let message = "too many active operations on this node; retry later".to_owned();
            return self.control(error_message(&id, &[refusal(message, RESOURCE_EXHAUSTED)]));
        };
        self.generation += 1;
        let generation = self.generation;
        let (queue, queued) = mpsc::channel(self.limits.buffer_per_subscription.max(1));
        let pusher = Pusher {
            id: id.clone(),
            queue,
            lagged: lagged.clone(),
            grace: self.limits.lag_grace,
        };
        let stream = self.executor.execute_stream(request, Some(session));
        // Spawned under the lock: the writer admits this operation's messages only once it
        // is in the map, which it is before the lock is released.
        let task = tokio::spawn(run_operation(stream, pusher, permit));
        active.insert(
            id,
            Operation {
                generation,
                task: task.abort_handle(),
            },
        );
        drop(active);
        self.queue_control(Control::Register(generation, queued))
    }
}

/// An operation's side of its queue.
struct Pusher {
    id: Arc<str>,
    queue: mpsc::Sender<Queued>,
    lagged: mpsc::Sender<Arc<str>>,
    grace: Duration,
}

impl Pusher {
    /// Queue one message: wait for room (backpressure) at most `grace`, then report the
    /// client as lagging. False: the operation must stop.
    async fn push(&self, text: String, last: bool) -> bool {
        let item = Queued {
            id: self.id.clone(),
            text,
            last,
        };
        let item = match self.queue.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(item)) => item,
        };
        match timeout(self.grace, self.queue.send(item)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                // Full: another operation reported already, and one report closes the socket.
                let _ = self.lagged.try_send(self.id.clone());
                false
            }
        }
    }
}

/// Pull one operation's stream into its queue. The permit is held until the operation ends
/// (or is aborted: the client completed it, or the socket closed).
async fn run_operation(
    mut stream: BoxStream<'static, Response>,
    pusher: Pusher,
    _permit: OwnedSemaphorePermit,
) {
    let mut first = true;
    while let Some(response) = stream.next().await {
        if first && is_request_error(&response) {
            let text = match serde_json::to_value(&response.errors) {
                Ok(Value::Array(errors)) => error_message(&pusher.id, &errors),
                _ => error_message(
                    &pusher.id,
                    &[refusal("the errors could not be encoded", "INTERNAL")],
                ),
            };
            pusher.push(text, true).await;
            return;
        }
        first = false;
        let text = json!({"id": &*pusher.id, "type": "next", "payload": response}).to_string();
        if !pusher.push(text, false).await {
            return;
        }
    }
    let text = json!({"id": &*pusher.id, "type": "complete"}).to_string();
    pusher.push(text, true).await;
}

/// A response that failed before execution (parse, validation, unknown operation): no data,
/// and no error with a path (a field error always has one). graphql-transport-ws sends those
/// errors as an Error message that ends the operation, not as a Next.
fn is_request_error(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

/// The writer: the reader's messages first, then one ready operation's next message, picked
/// at random among the ready ones. A close order wins over everything, a blocked send too.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut control: mpsc::Receiver<Control>,
    mut close: oneshot::Receiver<CloseOrder>,
    active: Active,
) {
    let mut queues: StreamMap<u64, ReceiverStream<Queued>> = StreamMap::new();
    loop {
        let text = tokio::select! {
            biased;
            order = &mut close => return finish(sink, order.ok()).await,
            next = control.recv() => match next {
                Some(Control::Send(text)) => text,
                Some(Control::Register(generation, queue)) => {
                    queues.insert(generation, ReceiverStream::new(queue));
                    continue;
                }
                // The reader ended without an order: the socket is gone.
                None => return,
            },
            Some((generation, item)) = queues.next(), if !queues.is_empty() => {
                match active.admit(generation, item) {
                    Some(text) => text,
                    None => continue,
                }
            }
        };
        tokio::select! {
            biased;
            order = &mut close => return finish(sink, order.ok()).await,
            sent = sink.send(Message::Text(text.into())) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Send the close order (its preface, then the close frame), within CLOSE_TIMEOUT.
async fn finish(mut sink: SplitSink<WebSocket, Message>, order: Option<CloseOrder>) {
    let Some(order) = order else { return };
    // A failed or late send means the client is gone or not reading: the socket is dropped
    // either way.
    let _ = timeout(CLOSE_TIMEOUT, async {
        if let Some(preface) = order.preface {
            sink.send(Message::Text(preface.into())).await?;
        }
        sink.send(close_frame(order.code, &order.reason)).await
    })
    .await;
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: truncate(reason, MAX_CLOSE_REASON_BYTES).into(),
    }))
}

/// The longest prefix of `text` within `max_bytes`, cut at a character boundary.
fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A GraphQL error of our own, with its `extensions.code`.
fn refusal(message: impl Into<String>, code: &str) -> Value {
    json!({"message": message.into(), "extensions": {"code": code}})
}

fn error_message(id: &str, errors: &[Value]) -> String {
    json!({"id": id, "type": "error", "payload": errors}).to_string()
}

/// A message from the client, checked as graphql-ws checks it.
#[derive(Debug)]
enum ClientMessage {
    ConnectionInit {
        payload: Option<Value>,
    },
    Ping {
        payload: Option<Value>,
    },
    Pong,
    Subscribe {
        id: String,
        request: Box<async_graphql::Request>,
    },
    Complete {
        id: String,
    },
}

/// Parse and check one client message; the error is the 4400 close reason.
fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("Invalid message: not JSON ({e})"))?;
    let Value::Object(mut message) = value else {
        return Err("Invalid message: not a JSON object".into());
    };
    let kind = match message.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return Err("Invalid message: 'type' is not a string".into()),
        None => return Err("Invalid message: no 'type'".into()),
    };
    match kind.as_str() {
        "connection_init" | "ping" | "pong" => {
            let payload = optional_object(&mut message, "payload")
                .map_err(|e| format!("Invalid '{kind}' message: {e}"))?;
            Ok(match kind.as_str() {
                "connection_init" => ClientMessage::ConnectionInit {
                    payload: payload.map(Value::Object),
                },
                "ping" => ClientMessage::Ping {
                    payload: payload.map(Value::Object),
                },
                _ => ClientMessage::Pong,
            })
        }
        "subscribe" => {
            let id = operation_id(&message, &kind)?;
            let Some(Value::Object(mut payload)) = message.remove("payload") else {
                return Err("Invalid 'subscribe' message: 'payload' is not an object".into());
            };
            let request = subscribe_request(&mut payload)
                .map_err(|e| format!("Invalid 'subscribe' message: {e}"))?;
            Ok(ClientMessage::Subscribe {
                id,
                request: Box::new(request),
            })
        }
        "complete" => Ok(ClientMessage::Complete {
            id: operation_id(&message, &kind)?,
        }),
        "connection_ack" | "next" | "error" => Err(format!(
            "Invalid message: '{kind}' is sent by the server only"
        )),
        _ => Err(format!(
            "Invalid message: unknown type '{}'",
            truncate(&kind, 40)
        )),
    }
}

fn operation_id(message: &Map<String, Value>, kind: &str) -> Result<String, String> {
    match message.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(Value::String(_)) => Err(format!("Invalid '{kind}' message: 'id' is empty")),
        Some(_) => Err(format!("Invalid '{kind}' message: 'id' is not a string")),
        None => Err(format!("Invalid '{kind}' message: no 'id'")),
    }
}

/// `field` of `object`: absent or null → None, an object → it, anything else → an error.
fn optional_object(
    object: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<Map<String, Value>>, String> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(format!("'{field}' is not an object")),
    }
}

/// The GraphQL request of a Subscribe payload: `query` a string; `operationName` a string,
/// `variables` and `extensions` objects, each possibly absent or null.
fn subscribe_request(payload: &mut Map<String, Value>) -> Result<async_graphql::Request, String> {
    let query = match payload.remove("query") {
        Some(Value::String(query)) => query,
        Some(_) => return Err("'query' is not a string".into()),
        None => return Err("no 'query'".into()),
    };
    let mut request = async_graphql::Request::new(query);
    match payload.remove("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name),
        Some(_) => return Err("'operationName' is not a string".into()),
    }
    if let Some(variables) = optional_object(payload, "variables")? {
        request = request.variables(async_graphql::Variables::from_json(Value::Object(
            variables,
        )));
    }
    if let Some(extensions) = optional_object(payload, "extensions")? {
        for (name, value) in extensions {
            let value = async_graphql::Value::from_json(value)
                .map_err(|e| format!("'extensions.{name}' is not a GraphQL value ({e})"))?;
            request.extensions.insert(name, value);
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each malformed message and the start of the 4400 reason it gets; each well-formed one
    /// parses.
    #[test]
    fn client_messages_are_checked_as_graphql_ws_checks_them() {
        let invalid = [
            ("not json", "Invalid message: not JSON"),
            ("[]", "Invalid message: not a JSON object"),
            ("{}", "Invalid message: no 'type'"),
            (r#"{"type":1}"#, "Invalid message: 'type' is not a string"),
            (
                r#"{"type":"hello"}"#,
                "Invalid message: unknown type 'hello'",
            ),
            (
                r#"{"type":"next","id":"1","payload":{}}"#,
                "Invalid message: 'next' is sent by",
            ),
            (
                r#"{"type":"connection_init","payload":3}"#,
                "Invalid 'connection_init' message: 'payload' is not an object",
            ),
            (r#"{"type":"ping","payload":"x"}"#, "Invalid 'ping' message"),
            (
                r#"{"type":"subscribe","payload":{"query":"{a}"}}"#,
                "Invalid 'subscribe' message: no 'id'",
            ),
            (
                r#"{"type":"subscribe","id":"","payload":{"query":"{a}"}}"#,
                "Invalid 'subscribe' message: 'id' is empty",
            ),
            (
                r#"{"type":"subscribe","id":7,"payload":{"query":"{a}"}}"#,
                "Invalid 'subscribe' message: 'id' is not a string",
            ),
            (
                r#"{"type":"subscribe","id":"1"}"#,
                "Invalid 'subscribe' message: 'payload' is not an object",
            ),
            (
                r#"{"type":"subscribe","id":"1","payload":{}}"#,
                "Invalid 'subscribe' message: no 'query'",
            ),
            (
                r#"{"type":"subscribe","id":"1","payload":{"query":1}}"#,
                "Invalid 'subscribe' message: 'query' is not",
            ),
            (
                r#"{"type":"subscribe","id":"1","payload":{"query":"{a}","variables":[]}}"#,
                "Invalid 'subscribe' message: 'variables' is not",
            ),
            (
                r#"{"type":"subscribe","id":"1","payload":{"query":"{a}","operationName":2}}"#,
                "Invalid 'subscribe' message: 'operationName'",
            ),
            (
                r#"{"type":"complete"}"#,
                "Invalid 'complete' message: no 'id'",
            ),
        ];
        for (text, reason) in invalid {
            let error = parse_client_message(text).expect_err(text);
            assert!(error.starts_with(reason), "{text}: {error}");
            assert!(error.len() <= MAX_CLOSE_REASON_BYTES, "{error}");
        }
        let valid = [
            r#"{"type":"connection_init"}"#,
            r#"{"type":"connection_init","payload":null}"#,
            r#"{"type":"connection_init","payload":{"token":"t"}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"pong","payload":{}}"#,
            r#"{"type":"complete","id":"1"}"#,
            r#"{"type":"subscribe","id":"1","payload":{"query":"{a}","operationName":null,"variables":{"x":1},"extensions":{"e":true}}}"#,
        ];
        for text in valid {
            parse_client_message(text).expect(text);
        }
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("short", 123), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate(&long, MAX_CLOSE_REASON_BYTES);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
