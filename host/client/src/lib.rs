//! The Rust client of a Cairn node: one QUIC connection (mutual TLS), the
//! operations of [`cairn_proto`] as typed methods, and follow streams.
//!
//! Layout: this module holds [`Client`]; [`frame`] reads and writes protocol
//! frames on quinn streams (the node's server uses it too); [`tls`] makes
//! certificates and the rustls/quinn configurations of both sides. Nothing
//! here knows about the node's internals.
//!
//! Requests reuse idle streams (cheaper than opening a stream per request,
//! docs/BENCHMARKS.md); any number of requests may run concurrently on one
//! [`Client`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod frame;
pub mod tls;

use cairn_proto::{
    ApiError, DeployRecord, EventView, FrameError, MAX_FRAME, PROTOCOL_VERSION, Payload, Request,
    Response, Retry, StateAt, TypeInfo, ValidationReport,
};

use crate::frame::{read_frame, write_frame};
use crate::tls::{ClientFiles, TlsError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node could not be reached or refused the connection.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The node's address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// Nothing answered the connection (no node listens there, or it is
    /// unreachable) within the connect timeout.
    #[error("no node answering at {addr} (no answer within {}s)", .after.as_secs_f64())]
    NoAnswer {
        /// The address tried.
        addr: SocketAddr,
        /// How long the client waited.
        after: Duration,
    },
    /// The connection was lost or closed by the node.
    #[error("connection lost: {0}")]
    Connection(String),
    /// A frame could not be exchanged.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The node answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The node answered something that does not fit the request.
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// What to do after this error, for a command (`ask`, `tell`): the
    /// node's advice for its own errors ([`ApiError::retry`]); for a
    /// failure of the connection, [`Retry::WithExpectedSeq`], since the
    /// request may have reached the node before the answer was lost;
    /// [`Retry::Later`] when no node could be reached at all (nothing was
    /// sent). A read may be sent again whatever the advice.
    pub fn retry(&self) -> Retry {
        match self {
            ClientError::Api(e) => e.retry(),
            ClientError::Connect { .. } | ClientError::NoAnswer { .. } => Retry::Later,
            ClientError::Connection(_) => Retry::WithExpectedSeq,
            ClientError::Frame(FrameError::TooLarge { .. } | FrameError::Encode(_)) => Retry::Never,
            ClientError::Frame(_) => Retry::WithExpectedSeq,
            ClientError::Tls(_) | ClientError::Unexpected(_) => Retry::Never,
        }
    }

    /// Whether a command that failed with this error may have been applied
    /// (its outcome is unknown; see [`ClientError::retry`]).
    pub fn may_have_applied(&self) -> bool {
        self.retry() == Retry::WithExpectedSeq
    }
}

/// The reply to an ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AskReply {
    /// The reply (JSON for a JSON command); `None` if the behavior gave none.
    pub reply: Option<Payload>,
    /// The entity's sequence number after the command.
    pub seq: u64,
}

/// A state read from a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateView {
    /// The state as JSON.
    pub json: String,
    /// Its sequence number.
    pub seq: u64,
    /// Events replayed to compute it.
    pub replayed: u64,
}

type Stream = (quinn::SendStream, quinn::RecvStream);

/// A connection to a node.
#[derive(Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    idle: Arc<Mutex<Vec<Stream>>>,
    node_name: String,
}

/// How long [`Client::connect`] waits for a node to answer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects to a node and checks it speaks this protocol. `server_name`
    /// is the name checked in the node's certificate
    /// ([`tls::DEFAULT_SERVER_NAME`] for certificates made by `cairn`).
    /// Gives up with [`ClientError::NoAnswer`] after
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn connect(
        addr: SocketAddr,
        files: &ClientFiles,
        server_name: &str,
    ) -> Result<Client, ClientError> {
        Client::connect_within(addr, files, server_name, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// [`Client::connect`] that gives up with [`ClientError::NoAnswer`]
    /// when the handshake and the protocol check have not finished within
    /// `timeout` (QUIC over UDP gets no refusal from an address where
    /// nothing listens: without a bound the client would wait for the
    /// transport's idle timeout).
    pub async fn connect_within(
        addr: SocketAddr,
        files: &ClientFiles,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let config = tls::client_config(files)?;
        match tokio::time::timeout(timeout, Client::handshake(addr, config, server_name)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::NoAnswer {
                addr,
                after: timeout,
            }),
        }
    }

    async fn handshake(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        server_name: &str,
    ) -> Result<Client, ClientError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("valid address")
        } else {
            "0.0.0.0:0".parse().expect("valid address")
        };
        let connect_err = |message: String| ClientError::Connect { addr, message };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_err(e.to_string()))?;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        let mut config = config;
        config.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut client = Client {
            endpoint,
            conn,
            idle: Arc::new(Mutex::new(Vec::new())),
            node_name: String::new(),
        };
        match client
            .call(&Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await
        {
            Ok(Response::Welcome { node, .. }) => client.node_name = node,
            Ok(other) => return Err(unexpected(&other)),
            Err(ClientError::Connection(m) | ClientError::Frame(FrameError::Stream(m))) => {
                // The node may have closed the connection on purpose (busy).
                let why = client.conn.close_reason().map_or(m, |r| r.to_string());
                return Err(connect_err(why));
            }
            Err(e) => return Err(e),
        }
        Ok(client)
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    async fn open(&self) -> Result<Stream, ClientError> {
        self.conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))
    }

    /// Sends one request and reads its response, on an idle stream if there
    /// is one. A response that is an error becomes [`ClientError::Api`].
    pub async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut send, mut recv) = match pooled {
            Some(s) => s,
            None => self.open().await?,
        };
        write_frame(&mut send, req).await?;
        let resp: Response = read_frame(&mut recv, MAX_FRAME).await?;
        if let Response::Error(e) = resp {
            // The node may close the stream after an error about the frame.
            if !matches!(e, ApiError::BadRequest(_)) {
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((send, recv));
            }
            return Err(ClientError::Api(e));
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((send, recv));
        Ok(resp)
    }

    /// Deploys a component to an entity type and returns the active deploy.
    /// A component that cannot replay history is refused with
    /// [`ApiError::ValidationFailed`] and its report.
    pub async fn deploy(&self, entity_type: &str, wasm: Vec<u8>) -> Result<TypeInfo, ClientError> {
        let d = self.deploy_with(entity_type, wasm, false).await?;
        d.info
            .ok_or_else(|| ClientError::Unexpected("a deploy without type information".into()))
    }

    /// Deploys (or with `check`, only validates) a component; returns the
    /// outcome with the validation report.
    pub async fn deploy_with(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
        check: bool,
    ) -> Result<Deployed, ClientError> {
        let r = self
            .call(&Request::Deploy {
                entity_type: entity_type.to_owned(),
                wasm,
                check,
            })
            .await?;
        deployed(r)
    }

    /// What the node's deploy (or check, or rollback) of `entity_type` in
    /// flight is doing now; `None` when none is. Meant to be called while a
    /// [`Client::deploy_with`] or [`Client::rollback`] on the same client is
    /// pending (each call runs on its own stream). A node that predates the
    /// request answers [`ApiError::BadRequest`].
    pub async fn deploy_progress(
        &self,
        entity_type: &str,
    ) -> Result<Option<DeployProgress>, ClientError> {
        match self
            .call(&Request::DeployProgress {
                entity_type: entity_type.to_owned(),
            })
            .await?
        {
            Response::DeployProgress {
                phase,
                done,
                total,
                elapsed_ms,
            } => Ok(phase.map(|phase| DeployProgress {
                phase,
                done,
                total,
                elapsed: Duration::from_millis(elapsed_ms),
            })),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Activates an earlier deploy of a type (deploy number `to`; the one
    /// before the active deploy if `None`), after the same validation as a
    /// deploy.
    pub async fn rollback(
        &self,
        entity_type: &str,
        to: Option<u32>,
    ) -> Result<Deployed, ClientError> {
        let r = self
            .call(&Request::Rollback {
                entity_type: entity_type.to_owned(),
                to,
            })
            .await?;
        deployed(r)
    }

    /// Every deploy of a type, the active one, and the deploy history.
    pub async fn versions(&self, entity_type: &str) -> Result<Versions, ClientError> {
        match self
            .call(&Request::Versions {
                entity_type: entity_type.to_owned(),
            })
            .await?
        {
            Response::Versions {
                versions,
                active,
                history,
            } => Ok(Versions {
                versions,
                active,
                history,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a command and waits for the reply (after its events are durable).
    pub async fn ask(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Payload,
        expected_seq: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<AskReply, ClientError> {
        match self
            .call(&Request::Ask {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                command,
                expected_seq,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
            })
            .await?
        {
            Response::Reply { reply, seq } => Ok(AskReply { reply, seq }),
            other => Err(unexpected(&other)),
        }
    }

    /// `ask` with a JSON command; the reply is JSON.
    pub async fn ask_json(
        &self,
        entity_type: &str,
        entity_id: &str,
        json: &str,
    ) -> Result<(Option<String>, u64), ClientError> {
        let r = self
            .ask(
                entity_type,
                entity_id,
                Payload::Json(json.to_owned()),
                None,
                None,
            )
            .await?;
        let reply = match r.reply {
            None => None,
            Some(Payload::Json(j)) => Some(j),
            Some(_) => {
                return Err(ClientError::Unexpected(
                    "a non-JSON reply to a JSON command".into(),
                ));
            }
        };
        Ok((reply, r.seq))
    }

    /// Queues a command without waiting for it to run.
    pub async fn tell(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Payload,
    ) -> Result<(), ClientError> {
        match self
            .call(&Request::Tell {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                command,
            })
            .await?
        {
            Response::Queued => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Events of an entity with `from <= seq <= to`, at most `limit`.
    pub async fn events(
        &self,
        entity_type: &str,
        entity_id: &str,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<EventView>, ClientError> {
        match self
            .call(&Request::Events {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                from,
                to,
                limit,
            })
            .await?
        {
            Response::Events(e) => Ok(e),
            other => Err(unexpected(&other)),
        }
    }

    /// An entity's state now, at a sequence number or at a time.
    pub async fn state(
        &self,
        entity_type: &str,
        entity_id: &str,
        at: StateAt,
    ) -> Result<StateView, ClientError> {
        match self
            .call(&Request::State {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                at,
            })
            .await?
        {
            Response::State {
                json,
                seq,
                replayed,
            } => Ok(StateView {
                json,
                seq,
                replayed,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Deployed entity types.
    pub async fn types(&self) -> Result<Vec<TypeInfo>, ClientError> {
        match self.call(&Request::Types).await? {
            Response::Types(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Encodes a JSON command with the type's behavior.
    pub async fn encode_command(
        &self,
        entity_type: &str,
        json: &str,
    ) -> Result<Vec<u8>, ClientError> {
        match self
            .call(&Request::EncodeCommand {
                entity_type: entity_type.to_owned(),
                json: json.to_owned(),
            })
            .await?
        {
            Response::Encoded(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Follows the node's lifecycle events from now on: when this returns,
    /// the node is subscribed, so nothing that happens afterwards is missed.
    pub async fn follow_lifecycle(&self) -> Result<Follow, ClientError> {
        self.follow(Request::FollowLifecycle).await
    }

    /// Follows every event of a type from `cursor` (0: from the beginning).
    pub async fn follow_events(
        &self,
        entity_type: &str,
        cursor: u64,
    ) -> Result<Follow, ClientError> {
        self.follow(Request::FollowEvents {
            entity_type: entity_type.to_owned(),
            cursor,
        })
        .await
    }

    async fn follow(&self, req: Request) -> Result<Follow, ClientError> {
        let (mut send, recv) = self.open().await?;
        write_frame(&mut send, &req).await?;
        let mut follow = Follow { send, recv };
        // The node confirms once the subscription is in place.
        match follow.next().await {
            Some(Ok(Response::Following)) => Ok(follow),
            Some(Ok(other)) => Err(unexpected(&other)),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Connection(
                "the node ended the stream before following".into(),
            )),
        }
    }
}

/// A stream of responses from a follow request.
pub struct Follow {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Follow {
    /// The next response; `None` when the node ended the stream. An error
    /// response becomes [`ClientError::Api`].
    pub async fn next(&mut self) -> Option<Result<Response, ClientError>> {
        match read_frame::<Response>(&mut self.recv, MAX_FRAME).await {
            Ok(Response::Error(e)) => Some(Err(ClientError::Api(e))),
            Ok(r) => Some(Ok(r)),
            Err(FrameError::Finished) => None,
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Stops following.
    pub fn stop(mut self) {
        let _ = self.send.finish();
        let _ = self.recv.stop(0u32.into());
    }
}

/// The outcome of a deploy, check or rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// The active deploy afterwards.
    pub info: Option<TypeInfo>,
    /// True if the active deploy changed.
    pub changed: bool,
    /// What replaying history showed.
    pub report: ValidationReport,
}

/// The phase of a deploy in flight on a node ([`Client::deploy_progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployProgress {
    /// What the deploy is doing ("compiling 18432 KiB component", ...).
    pub phase: String,
    /// Units of work of the phase done (0 when the phase does not count).
    pub done: u64,
    /// Units of work of the phase (0 when the phase does not count).
    pub total: u64,
    /// How long the deploy has been in this phase.
    pub elapsed: Duration,
}

/// The deploys of an entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versions {
    /// Every deploy, oldest first.
    pub versions: Vec<TypeInfo>,
    /// The deploy number of the active deploy.
    pub active: Option<u32>,
    /// Every deploy, refusal and rollback, oldest first.
    pub history: Vec<DeployRecord>,
}

fn deployed(r: Response) -> Result<Deployed, ClientError> {
    match r {
        Response::Deployed {
            info,
            changed,
            report,
        } => Ok(Deployed {
            info,
            changed,
            report,
        }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> ClientError {
    let text = format!("{r:?}");
    ClientError::Unexpected(text.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_advice_follows_the_node_and_a_lost_answer_is_an_unknown_outcome() {
        let api = |e| ClientError::Api(e).retry();
        assert_eq!(
            api(ApiError::Indeterminate("x".into())),
            Retry::WithExpectedSeq
        );
        assert_eq!(api(ApiError::Timeout { ms: 1 }), Retry::WithExpectedSeq);
        assert_eq!(api(ApiError::Storage("x".into())), Retry::Later);
        assert_eq!(api(ApiError::Unavailable("x".into())), Retry::Later);
        assert_eq!(api(ApiError::Rejected("x".into())), Retry::Never);
        // Sent, then the connection failed: the node may have run it.
        assert!(ClientError::Connection("lost".into()).may_have_applied());
        assert!(ClientError::Frame(FrameError::Truncated).may_have_applied());
        // Nothing was sent.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let no_answer = ClientError::NoAnswer {
            addr,
            after: Duration::from_secs(3),
        };
        assert_eq!(no_answer.retry(), Retry::Later);
        assert!(!no_answer.may_have_applied());
        assert_eq!(
            ClientError::Frame(FrameError::Encode("x".into())).retry(),
            Retry::Never
        );
    }
}
