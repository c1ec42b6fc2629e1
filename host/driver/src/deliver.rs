//! Delivery of the messages a node's entities send each other (their
//! outbox, see `cairn_host::outbox`) through the same routing as a client's
//! command: run here if this node serves the target's shard, else one hop
//! to its owner, held while the shard moves.
//!
//! One call is one attempt; the node's delivery task retries. Any answer
//! that is not final is worth another attempt, an unknown outcome
//! included, because the receiver applies each message at most once.

use std::sync::Arc;

use cairn_cluster::shard_of;
use cairn_proto::{ApiError, Request, Response, Retry};
use tokio::sync::oneshot;

use crate::Inner;
use cairn_host::placement::{Delivery, DeliveryOutcome, Origin};

/// Makes one attempt to run `delivery` on the owner of its target.
pub(crate) async fn deliver_once(inner: &Arc<Inner>, delivery: Delivery) -> DeliveryOutcome {
    let Delivery {
        target,
        command,
        origin,
    } = delivery;
    let Origin::Send(id) = origin;
    let request = Request::Deliver {
        entity_type: target.entity_type.clone(),
        entity_id: target.entity_id.clone(),
        command,
        from_type: id.from.entity_type,
        from_id: id.from.entity_id,
        send: id.seq,
    };
    let shard = shard_of(&target.entity_type, &target.entity_id, inner.shard_count());
    let (tx, rx) = oneshot::channel();
    let route = inner.router().route(shard, (request, tx));
    judge(inner.follow(shard.0, route, rx).await)
}

/// Sorts an answer: applied, refused for good, or worth another attempt.
fn judge(answer: Response) -> DeliveryOutcome {
    match answer {
        Response::Reply { .. } => DeliveryOutcome::Delivered,
        Response::Error(e) => match e {
            ApiError::Rejected(r) => {
                DeliveryOutcome::Refused(format!("rejected by the target: {r}"))
            }
            ApiError::MalformedCommand(r) => {
                DeliveryOutcome::Refused(format!("the target could not decode it: {r}"))
            }
            ApiError::Stopped { reason } => {
                DeliveryOutcome::Refused(format!("target stopped: {reason}"))
            }
            ApiError::UnknownEntityType(t) => {
                DeliveryOutcome::Refused(format!("unknown entity type `{t}`"))
            }
            ApiError::GuestFault { .. } => {
                DeliveryOutcome::Refused(format!("the target failed: {e}"))
            }
            // Resent whatever happened: the receiver recognises a message
            // it applied already.
            e if e.may_have_applied() || matches!(e.retry(), Retry::Later | Retry::OnOwner(_)) => {
                DeliveryOutcome::Retry(e.to_string())
            }
            other => DeliveryOutcome::Refused(other.to_string()),
        },
        other => DeliveryOutcome::Retry(format!("unexpected answer: {other:?}")),
    }
}
