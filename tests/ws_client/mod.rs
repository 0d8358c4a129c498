//! A graphql-transport-ws client written by hand for the tests (JSON messages spelled out
//! here, tokio-tungstenite underneath), sharing nothing with the server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Every wait of a test: generous, so that a loaded machine does not fail it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What the client reads next.
#[derive(Debug, PartialEq)]
pub enum Got {
    Json(Value),
    Closed(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

pub struct Client(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, Some("graphql-transport-ws")).await
    }

    pub async fn connect_with(addr: SocketAddr, protocol: Option<&str>) -> Client {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        if let Some(protocol) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        }
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        let agreed = response.headers().get("Sec-WebSocket-Protocol");
        assert_eq!(
            agreed.map(|v| v.to_str().unwrap()),
            protocol,
            "the server agrees to graphql-transport-ws, and to nothing else"
        );
        Client(socket)
    }

    /// A client that already has its ConnectionAck.
    pub async fn acked(addr: SocketAddr, payload: Value) -> Client {
        let mut client = Client::connect(addr).await;
        client
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        assert_eq!(
            client.next().await,
            Got::Json(json!({"type": "connection_ack"}))
        );
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.0.send(Message::text(text)).await.unwrap();
    }

    pub async fn subscribe(&mut self, id: &str, query: &str) {
        self.send(json!({"id": id, "type": "subscribe", "payload": {"query": query}}))
            .await;
    }

    /// The next protocol message, or how the connection ended (within PATIENCE).
    pub async fn next(&mut self) -> Got {
        loop {
            let read = timeout(PATIENCE, self.0.next())
                .await
                .expect("the server said nothing within the deadline");
            return match read {
                Some(Ok(Message::Text(text))) => Got::Json(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(Some(frame)))) => {
                    Got::Closed(frame.code.into(), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    Got::Closed(CloseCode::Status.into(), String::new())
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => Got::Ended,
            };
        }
    }

    /// Reads until the close frame, which must have this code; returns its reason.
    pub async fn closed_with(&mut self, code: u16) -> String {
        match self.next().await {
            Got::Closed(got, reason) => {
                assert_eq!(got, code, "closed with {got} {reason:?}");
                reason
            }
            other => panic!("expected a close {code}, got {other:?}"),
        }
    }

    /// `{ hello }` under `id`: one Next greeting `user`, then Complete.
    pub async fn hello(&mut self, id: &str, user: &str) {
        self.subscribe(id, "{ hello }").await;
        let greeting = format!("hello {user}");
        assert_eq!(self.next().await, next(id, json!({"hello": greeting})));
        assert_eq!(self.next().await, complete(id));
    }

    /// The next message is an Error for `id`: its GraphQL errors.
    pub async fn error_for(&mut self, id: &str) -> Vec<Value> {
        let Got::Json(mut error) = self.next().await else {
            panic!("expected an Error message for {id}")
        };
        assert_eq!(
            (&error["id"], &error["type"]),
            (&json!(id), &json!("error")),
            "{error}"
        );
        match error["payload"].take() {
            Value::Array(errors) => errors,
            other => panic!("the payload of an Error is an array of GraphQL errors: {other}"),
        }
    }

    /// A Ping answered by a Pong: the socket is open and the server reads it.
    pub async fn still_open(&mut self) {
        self.send(json!({"type": "ping"})).await;
        assert_eq!(self.next().await, Got::Json(json!({"type": "pong"})));
    }
}

pub fn next(id: &str, data: Value) -> Got {
    Got::Json(json!({"id": id, "type": "next", "payload": {"data": data}}))
}

pub fn complete(id: &str) -> Got {
    Got::Json(json!({"id": id, "type": "complete"}))
}
