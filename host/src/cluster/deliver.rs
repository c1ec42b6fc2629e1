//! Delivery of the commands a node produces itself (a `send` effect)
//! through the same routing as a client's command: run here if this node
//! serves the target's shard, else one hop to its owner, held while the
//! shard moves.
//!
//! A delivery is retried while the answer says nothing was run or stored
//! (by the error contract: `unavailable`, `busy`, `mailbox full`, not the
//! owner, a refused write), for up to [`DELIVERY_PATIENCE`]; any other
//! failure (the target rejected it, is stopped, its type is unknown, or
//! the outcome is unknown) is a dead letter with the reason.

use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::shard_of;
use cairn_proto::{ApiError, Payload, Request, Response, Retry};
use tokio::sync::oneshot;

use super::Inner;
use crate::placement::{Delivery, Origin};

/// How long a delivery is retried while it cannot reach its target.
pub(crate) const DELIVERY_PATIENCE: Duration = Duration::from_secs(30);

/// What came of one attempt.
enum Attempt {
    /// The command ran on the target's owner (or was refused by the
    /// behavior there): it is done with.
    Done(Option<String>),
    /// Nothing ran or was stored: try again.
    Again(String),
    /// It cannot be delivered, or its outcome is unknown.
    Failed(String),
}

/// Runs `delivery` on the owner of its target, retrying while that is safe.
pub(crate) async fn deliver(
    inner: &Arc<Inner>,
    delivery: Delivery,
    undelivered: Box<dyn FnOnce(String) + Send>,
) {
    let Delivery {
        target,
        command,
        origin,
    } = delivery;
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let outcome = loop {
        let request = Request::Ask {
            entity_type: target.entity_type.clone(),
            entity_id: target.entity_id.clone(),
            command: Payload::Bytes(command.clone()),
            expected_seq: None,
            timeout_ms: None,
        };
        let shard = shard_of(&target.entity_type, &target.entity_id, inner.shard_count());
        let (tx, rx) = oneshot::channel();
        let route = inner.router().route(shard, (request, tx));
        let answer = inner.follow(shard.0, route, rx).await;
        match judge(answer) {
            Attempt::Again(why) if started.elapsed() < DELIVERY_PATIENCE => {
                tracing::debug!(%target, %why, "delivery retried");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Attempt::Again(why) => {
                break Attempt::Failed(format!(
                    "not delivered within {DELIVERY_PATIENCE:?}: {why}"
                ));
            }
            other => break other,
        }
    };
    let dead = match outcome {
        Attempt::Done(rejected) => rejected,
        Attempt::Failed(why) | Attempt::Again(why) => Some(why),
    };
    if let Some(why) = dead {
        let Origin::Send { from } = &origin;
        undelivered(format!("send from {from}: {why}"));
    }
}

/// Sorts an answer: done, safe to retry, or failed for good.
fn judge(answer: Response) -> Attempt {
    match answer {
        Response::Error(e) => match e {
            ApiError::Rejected(r) => Attempt::Done(Some(format!("rejected by the target: {r}"))),
            ApiError::MalformedCommand(r) => {
                Attempt::Done(Some(format!("the target could not decode it: {r}")))
            }
            ApiError::Stopped { reason } => Attempt::Failed(format!("target stopped: {reason}")),
            ApiError::UnknownEntityType(t) => Attempt::Failed(format!("unknown entity type `{t}`")),
            // The error contract: resent only while nothing was applied.
            e if e.may_have_applied() => Attempt::Failed(format!("outcome unknown: {e}")),
            e if matches!(e.retry(), Retry::Later | Retry::OnOwner(_)) => {
                Attempt::Again(e.to_string())
            }
            other => Attempt::Failed(other.to_string()),
        },
        Response::Reply { .. } => Attempt::Done(None),
        other => Attempt::Failed(format!("unexpected answer: {other:?}")),
    }
}
