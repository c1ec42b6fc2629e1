//! A node's answers to the client protocol: a `cairn-proto` [`Request`]
//! run against a [`Node`], the node's errors translated into [`ApiError`]s,
//! its validation reports and deploy records into the protocol's types.
//!
//! Both the QUIC server (`cairn-server`) and a cluster member's driver
//! (`cairn-driver`, for requests forwarded to this node) answer through a
//! [`Service`], so the driver needs no handle back into the server. The
//! streaming requests (`FollowLifecycle`, `FollowEvents`) belong to the
//! server's stream loop, which uses [`lifecycle_response`] and
//! [`event_view`].

use std::time::Duration;

use cairn_proto::{
    self as api, ApiError, EventView, GuestFaultKind, PROTOCOL_VERSION, Payload, Request, Response,
    StateAt, TypeInfo,
};
use cairn_store::JournalError;

use crate::behavior::GuestFault;
use crate::deploy::{self, DeployError, DeployResult};
use crate::node::{
    AskError, AskOptions, LifecycleEvent, Node, PastState, ReadError, RegisterError,
};
use crate::registry::{self, Deployment};

/// Most events returned by one `Events` request.
pub const MAX_EVENTS_PER_REQUEST: u32 = 10_000;

/// A node's answers to client requests.
#[derive(Clone)]
pub struct Service {
    node: Node,
    name: String,
}

impl Service {
    /// Answers for `node`, which introduces itself as `name`.
    pub fn new(node: Node, name: String) -> Service {
        Service { node, name }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The answer to `req`, run on this node (no routing: a cluster member
    /// routes entity requests before they get here).
    pub async fn handle(&self, req: Request) -> Response {
        handle(&self.node, &self.name, req).await
    }
}

fn type_info(node: &Node, d: &Deployment) -> TypeInfo {
    TypeInfo {
        entity_type: d.entity_type.clone(),
        deploy: d.deploy,
        behavior: d.behavior.clone(),
        behavior_version: d.behavior_version.clone(),
        state_schema: d.state_schema,
        hash: d.hash.clone(),
        deployed_ms: d.deployed_ms,
        live_entities: node.live_entities(&d.entity_type) as u64,
    }
}

async fn handle(node: &Node, name: &str, req: Request) -> Response {
    let result = match req {
        Request::Hello { version } => hello(version, name),
        Request::Deploy {
            entity_type,
            wasm,
            check,
        } => node
            .deploy_checked(&entity_type, wasm, check)
            .await
            .map(|r| deployed(node, r))
            .map_err(deploy_error),
        Request::Rollback { entity_type, to } => node
            .rollback(&entity_type, to)
            .await
            .map(|r| deployed(node, r))
            .map_err(deploy_error),
        Request::Versions { entity_type } => {
            let v = node.versions(&entity_type);
            if v.deploys.is_empty() {
                Err(ApiError::UnknownEntityType(entity_type))
            } else {
                Ok(Response::Versions {
                    versions: v.deploys.iter().map(|d| type_info(node, d)).collect(),
                    active: v.active,
                    history: v.records.iter().map(deploy_record).collect(),
                })
            }
        }
        Request::Ask {
            entity_type,
            entity_id,
            command,
            expected_seq,
            timeout_ms,
        } => {
            ask(
                node,
                &entity_type,
                &entity_id,
                command,
                expected_seq,
                timeout_ms,
            )
            .await
        }
        Request::Deliver {
            entity_type,
            entity_id,
            command,
            from_type,
            from_id,
            send,
        } => {
            let from = crate::placement::SendId {
                from: cairn_store::EntityKey::new(from_type, from_id),
                seq: send,
            };
            node.deliver_send(&entity_type, &entity_id, command, from, DELIVER_TIMEOUT)
                .await
                .map(|r| Response::Reply {
                    reply: r.reply.map(Payload::Bytes),
                    seq: r.seq,
                })
                .map_err(ask_error)
        }
        Request::Tell {
            entity_type,
            entity_id,
            command,
        } => match encode(node, &entity_type, command) {
            Ok(bytes) => node
                .tell(&entity_type, &entity_id, bytes)
                .await
                .map(|()| Response::Queued)
                .map_err(ask_error),
            Err(e) => Err(e),
        },
        Request::Events {
            entity_type,
            entity_id,
            from,
            to,
            limit,
        } => {
            let limit = limit.min(MAX_EVENTS_PER_REQUEST) as usize;
            if node.descriptor(&entity_type).is_none() {
                return Response::Error(ApiError::UnknownEntityType(entity_type));
            }
            match node.events(&entity_type, &entity_id, from, to, limit).await {
                Ok(events) => Ok(Response::Events(
                    events
                        .into_iter()
                        .map(|e| event_view(node, &entity_type, &entity_id, e))
                        .collect(),
                )),
                Err(e) => Err(read_error(e)),
            }
        }
        Request::State {
            entity_type,
            entity_id,
            at,
        } => state(node, &entity_type, &entity_id, at).await,
        Request::Types => Ok(Response::Types(
            node.deployments()
                .iter()
                .map(|d| type_info(node, d))
                .collect(),
        )),
        Request::EncodeCommand { entity_type, json } => node
            .command_from_json(&entity_type, &json)
            .map(Response::Encoded)
            .map_err(read_error),
        Request::DeployProgress { entity_type } => Ok(match node.deploy_progress(&entity_type) {
            Some(p) => Response::DeployProgress {
                phase: Some(p.phase),
                done: p.done,
                total: p.total,
                elapsed_ms: p.elapsed.as_millis() as u64,
            },
            None => Response::DeployProgress {
                phase: None,
                done: 0,
                total: 0,
                elapsed_ms: 0,
            },
        }),
        Request::FollowLifecycle | Request::FollowEvents { .. } => Err(ApiError::BadRequest(
            "follow requests are handled by the stream loop".into(),
        )),
        // A request of a later protocol version this node does not know.
        _ => Err(ApiError::BadRequest("unknown request".into())),
    };
    result.unwrap_or_else(Response::Error)
}

fn encode(node: &Node, entity_type: &str, command: Payload) -> Result<Vec<u8>, ApiError> {
    match command {
        Payload::Bytes(b) => {
            if node.descriptor(entity_type).is_none() {
                return Err(ApiError::UnknownEntityType(entity_type.to_owned()));
            }
            Ok(b)
        }
        Payload::Json(j) => node.command_from_json(entity_type, &j).map_err(read_error),
        _ => Err(ApiError::BadRequest("unknown payload kind".into())),
    }
}

/// How long a delivered message may wait for its receiver.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(10);

async fn ask(
    node: &Node,
    entity_type: &str,
    entity_id: &str,
    command: Payload,
    expected_seq: Option<u64>,
    timeout_ms: Option<u64>,
) -> Result<Response, ApiError> {
    let json = matches!(command, Payload::Json(_));
    let bytes = encode(node, entity_type, command)?;
    let mut options = AskOptions {
        expected_seq,
        ..AskOptions::default()
    };
    if let Some(ms) = timeout_ms {
        options.timeout = Duration::from_millis(ms.clamp(1, 10 * 60 * 1000));
    }
    let reply = node
        .ask(entity_type, entity_id, bytes, options)
        .await
        .map_err(ask_error)?;
    let payload = match reply.reply {
        None => None,
        Some(b) if json => Some(Payload::Json(
            node.reply_to_json(entity_type, &b).map_err(read_error)?,
        )),
        Some(b) => Some(Payload::Bytes(b)),
    };
    Ok(Response::Reply {
        reply: payload,
        seq: reply.seq,
    })
}

async fn state(
    node: &Node,
    entity_type: &str,
    entity_id: &str,
    at: StateAt,
) -> Result<Response, ApiError> {
    let past = match at {
        StateAt::Now => {
            let (json, seq) = node
                .state_json(entity_type, entity_id)
                .await
                .map_err(read_error)?;
            return Ok(Response::State {
                json,
                seq,
                replayed: 0,
            });
        }
        StateAt::Seq(n) => PastState::Seq(n),
        StateAt::Time(t) => PastState::Time(t),
        _ => return Err(ApiError::BadRequest("unknown kind of state read".into())),
    };
    let h = node
        .state_at(entity_type, entity_id, past)
        .await
        .map_err(read_error)?;
    let json = node
        .state_to_json(entity_type, &h.state)
        .map_err(read_error)?;
    Ok(Response::State {
        json,
        seq: h.seq,
        replayed: h.replayed,
    })
}

/// The protocol's view of an event (its JSON when the behavior can give it).
pub fn event_view(
    node: &Node,
    entity_type: &str,
    entity_id: &str,
    e: cairn_store::EventRecord,
) -> EventView {
    EventView {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        seq: e.seq,
        timestamp_ms: e.timestamp_ms,
        behavior_version: e.version,
        json: node.event_to_json(entity_type, &e.payload).ok(),
        bytes: e.payload,
    }
}

/// The protocol's form of a lifecycle event.
pub fn lifecycle_response(e: LifecycleEvent) -> Response {
    let (kind, entity_type, entity_id, detail) = match e {
        LifecycleEvent::Started {
            entity_type,
            entity_id,
            snapshot_seq,
            replayed,
            seq,
        } => (
            "started",
            entity_type,
            Some(entity_id),
            format!(
                "seq={seq} replayed={replayed} snapshot={}",
                snapshot_seq.map_or("none".to_owned(), |s| s.to_string())
            ),
        ),
        LifecycleEvent::Passivated {
            entity_type,
            entity_id,
        } => ("passivated", entity_type, Some(entity_id), String::new()),
        LifecycleEvent::Stopped {
            entity_type,
            entity_id,
            reason,
        } => ("stopped", entity_type, Some(entity_id), reason),
        LifecycleEvent::Restarted {
            entity_type,
            entity_id,
            reason,
        } => ("restarted", entity_type, Some(entity_id), reason),
        LifecycleEvent::DeadLetter {
            entity_type,
            entity_id,
            reason,
        } => ("dead-letter", entity_type, Some(entity_id), reason),
        LifecycleEvent::Unhandled {
            entity_type,
            entity_id,
            reason,
        } => ("unhandled", entity_type, Some(entity_id), reason),
        LifecycleEvent::Deployed {
            entity_type,
            behavior_version,
        } => (
            "deployed",
            entity_type,
            None,
            format!("version={behavior_version}"),
        ),
        LifecycleEvent::Member { change, node, addr } => (
            change.kind(),
            String::new(),
            None,
            format!("node={node} addr={addr}"),
        ),
    };
    Response::Lifecycle {
        kind: kind.to_owned(),
        entity_type,
        entity_id,
        detail,
    }
}

fn deployed(node: &Node, r: DeployResult) -> Response {
    Response::Deployed {
        info: r.deployment.as_ref().map(|d| type_info(node, d)),
        changed: r.changed,
        report: validation_report(&r.report),
    }
}

/// The protocol's form of a validation report.
fn validation_report(r: &deploy::ValidationReport) -> api::ValidationReport {
    api::ValidationReport {
        sampled: r.sampled,
        events: r.events,
        from_snapshot: r.from_snapshot,
        millis: r.millis,
        failures: r
            .failures
            .iter()
            .map(|f| api::ReplayFailure {
                entity_id: f.entity_id.clone(),
                seq: f.seq,
                error: f.error.clone(),
            })
            .collect(),
        failed: r.failed,
        differences: r
            .differences
            .iter()
            .map(|d| api::StateDifference {
                entity_id: d.entity_id.clone(),
                seq: d.seq,
                active: d.active.clone(),
                candidate: d.candidate.clone(),
            })
            .collect(),
        differing: r.differing,
        exemplars: r.exemplars,
        exemplars_not_kept: r.exemplars_not_kept,
    }
}

/// The protocol's form of a deploy-history entry.
fn deploy_record(r: &registry::DeployRecord) -> api::DeployRecord {
    api::DeployRecord {
        entity_type: r.entity_type.clone(),
        action: match r.action {
            registry::DeployAction::Deploy => api::DeployAction::Deploy,
            registry::DeployAction::Rollback => api::DeployAction::Rollback,
        },
        deploy: r.deploy,
        hash: r.hash.clone(),
        behavior_version: r.behavior_version.clone(),
        at_ms: r.at_ms,
        outcome: match r.outcome {
            registry::DeployOutcome::Activated => api::DeployOutcome::Activated,
            registry::DeployOutcome::Refused => api::DeployOutcome::Refused,
        },
        report: validation_report(&r.report),
    }
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::Refused(report) => {
            ApiError::ValidationFailed(Box::new(validation_report(&report)))
        }
        DeployError::NoSuchVersion(m) => ApiError::BadRequest(format!("no such version: {m}")),
        DeployError::Register(RegisterError::InvalidName(n)) => ApiError::BadRequest(format!(
            "invalid entity type name `{n}`: use letters, digits, '-' and '_' (at most 128)"
        )),
        e => ApiError::DeployRefused(e.to_string()),
    }
}

/// The protocol's error for a failed ask or tell.
fn ask_error(e: AskError) -> ApiError {
    match e {
        AskError::UnknownEntityType(t) => ApiError::UnknownEntityType(t),
        AskError::InvalidEntityId(m) => ApiError::BadRequest(format!("invalid entity id: {m}")),
        AskError::Timeout(d) => ApiError::Timeout {
            ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        },
        AskError::Conflict { expected, actual } => ApiError::Conflict { expected, actual },
        AskError::Rejected(r) => ApiError::Rejected(r),
        AskError::MalformedCommand(m) => ApiError::MalformedCommand(m),
        AskError::MailboxFull => ApiError::MailboxFull,
        AskError::EntityStopped(reason) => ApiError::Stopped { reason },
        AskError::Guest(fault) => guest_fault(fault),
        // The write may be on a replica (or in the file, unsynced): it may
        // still become part of the history.
        AskError::Journal(JournalError::Indeterminate(m)) => ApiError::Indeterminate(m),
        // Every other journal error stored nothing (a refusal before any
        // replica was sent the write, or a local write that failed).
        AskError::Journal(e) => ApiError::Storage(e.to_string()),
        AskError::ShuttingDown => ApiError::ShuttingDown,
        AskError::Stopping => ApiError::Unavailable(AskError::Stopping.to_string()),
        AskError::NotHere(why) => ApiError::Unavailable(why),
    }
}

/// The answer to a `Hello`: welcome in this node's protocol version, or a
/// `BadRequest` (whose position every version keeps) naming both versions.
fn hello(version: u32, node: &str) -> Result<Response, ApiError> {
    if version == PROTOCOL_VERSION {
        Ok(Response::Welcome {
            version: PROTOCOL_VERSION,
            node: node.to_owned(),
        })
    } else {
        Err(ApiError::BadRequest(format!(
            "protocol version {version} is not supported; this node speaks {PROTOCOL_VERSION} \
             (use a client of the node's release)"
        )))
    }
}

/// The protocol's error for a failed read or conversion.
fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::UnknownEntityType(t) => ApiError::UnknownEntityType(t),
        ReadError::Journal(e) => ApiError::Storage(e.to_string()),
        // The behavior could not render its own bytes: a contract breach.
        ReadError::Codec(message) => ApiError::GuestFault {
            kind: GuestFaultKind::Contract,
            message,
        },
        ReadError::Guest(fault) => guest_fault(fault),
        ReadError::Ask(e) => ask_error(e),
    }
}

/// The protocol's error for a guest fault.
fn guest_fault(fault: GuestFault) -> ApiError {
    let kind = match &fault {
        GuestFault::Deadline(_) => GuestFaultKind::Deadline,
        GuestFault::MemoryLimit(_) => GuestFaultKind::MemoryLimit,
        GuestFault::Trap(_) => GuestFaultKind::Trap,
        GuestFault::Instantiate(_) => GuestFaultKind::Instantiate,
        GuestFault::BadState(_) => GuestFaultKind::BadState,
        GuestFault::Contract(_) => GuestFaultKind::Contract,
    };
    ApiError::GuestFault {
        kind,
        message: fault.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::Retry;

    #[test]
    fn node_errors_become_typed_api_errors() {
        assert_eq!(ask_error(AskError::MailboxFull), ApiError::MailboxFull);
        assert_eq!(ask_error(AskError::ShuttingDown), ApiError::ShuttingDown);
        // Refused at the door while stopping: nothing ran, safe to resend.
        let refused = ask_error(AskError::Stopping);
        assert!(matches!(refused, ApiError::Unavailable(_)), "{refused:?}");
        assert!(!refused.may_have_applied());
        assert_eq!(
            ask_error(AskError::Timeout(Duration::from_millis(1500))),
            ApiError::Timeout { ms: 1500 }
        );
        assert_eq!(
            ask_error(AskError::EntityStopped("too many restarts".into())),
            ApiError::Stopped {
                reason: "too many restarts".into()
            }
        );
        assert_eq!(
            ask_error(AskError::Guest(GuestFault::Trap("unreachable".into()))),
            ApiError::GuestFault {
                kind: GuestFaultKind::Trap,
                message: "guest trapped: unreachable".into()
            }
        );
        assert!(matches!(
            ask_error(AskError::Guest(GuestFault::BadState("bad bytes".into()))),
            ApiError::GuestFault {
                kind: GuestFaultKind::BadState,
                ..
            }
        ));
        assert_eq!(
            ask_error(AskError::Journal(JournalError::Io("disk full".into()))),
            ApiError::Storage("I/O error: disk full".into())
        );
        assert_eq!(
            ask_error(AskError::NotHere("shard 3 moved".into())),
            ApiError::Unavailable("shard 3 moved".into())
        );
        assert!(matches!(
            read_error(ReadError::Guest(GuestFault::Deadline(Duration::from_secs(
                1
            )))),
            ApiError::GuestFault {
                kind: GuestFaultKind::Deadline,
                ..
            }
        ));
        assert!(matches!(
            read_error(ReadError::Codec("bad bytes".into())),
            ApiError::GuestFault {
                kind: GuestFaultKind::Contract,
                ..
            }
        ));
    }

    #[test]
    fn a_write_that_may_be_on_a_replica_is_an_unknown_outcome_and_a_refusal_is_not() {
        // Sent to the replicas (or written, unsynced): outcome unknown.
        let unknown = ask_error(AskError::Journal(JournalError::Indeterminate(
            "e-1: 0 of 1 replica acknowledgements: replica 3 unreachable".into(),
        )));
        assert_eq!(
            unknown,
            ApiError::Indeterminate(
                "e-1: 0 of 1 replica acknowledgements: replica 3 unreachable".into()
            )
        );
        assert!(unknown.may_have_applied());
        assert_eq!(unknown.retry(), Retry::WithExpectedSeq);
        // Refused before anything was sent, or a local failure: nothing
        // stored, safe to send again.
        let key = cairn_store::EntityKey::new("t", "e-1");
        for e in [
            JournalError::Replication("min_acks is 2 but shard 3 has 1 live replicas".into()),
            JournalError::Fenced("e-1: this node's lease lapsed".into()),
            JournalError::Conflict { key, seq: 4 },
            JournalError::Io("No space left on device".into()),
        ] {
            let api = ask_error(AskError::Journal(e.clone()));
            assert_eq!(api, ApiError::Storage(e.to_string()));
            assert!(!api.may_have_applied(), "{e}");
            assert_eq!(api.retry(), Retry::Later, "{e}");
        }
        // A timeout may still run: the same advice as an unknown outcome.
        assert_eq!(
            ask_error(AskError::Timeout(Duration::from_secs(1))).retry(),
            Retry::WithExpectedSeq
        );
    }

    #[test]
    fn an_older_client_is_told_which_version_the_node_speaks() {
        assert_eq!(
            hello(PROTOCOL_VERSION, "n1"),
            Ok(Response::Welcome {
                version: PROTOCOL_VERSION,
                node: "n1".into()
            })
        );
        let Err(ApiError::BadRequest(m)) = hello(3, "n1") else {
            panic!("a version-3 hello was not refused");
        };
        assert!(
            m.contains("protocol version 3 is not supported")
                && m.contains(&format!("speaks {PROTOCOL_VERSION}")),
            "{m}"
        );
    }
}
