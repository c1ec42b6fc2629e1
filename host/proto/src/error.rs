//! Why a request failed, as a client sees it ([`ApiError`]), and what the
//! client should do about it ([`Retry`]). Every failure a client can act on
//! differently has its own variant; the message strings are for people.

use serde::{Deserialize, Serialize};

use crate::ValidationReport;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The node is at its limit of connections or requests in flight.
    #[error("node busy: {0}")]
    Busy(String),
    /// No component is deployed for the type.
    #[error("unknown entity type `{0}`")]
    UnknownEntityType(String),
    /// The request could not be decoded or is not valid (also the answer to
    /// a `Hello` with an unsupported protocol version).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The behavior could not decode the command.
    #[error("malformed command: {0}")]
    MalformedCommand(String),
    /// The behavior rejected the command; nothing was stored.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The expected sequence number did not match; nothing was run.
    #[error("conflict: expected sequence number {expected}, entity is at {actual}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// Where the entity is.
        actual: u64,
    },
    /// No reply in time; the command may still run.
    #[error("timeout: no reply within {ms} ms (the command may still run)")]
    Timeout {
        /// The timeout that passed, in milliseconds.
        ms: u64,
    },
    /// The entity's mailbox was full and the command was dropped.
    #[error("mailbox full: command dropped")]
    MailboxFull,
    /// The entity was stopped by supervision (too many restarts).
    #[error("entity stopped: {reason}")]
    Stopped {
        /// Why supervision stopped it.
        reason: String,
    },
    /// The behavior failed while running the command; nothing was stored
    /// and the entity restarts from its journal.
    #[error("guest failure ({kind}): {message}")]
    GuestFault {
        /// What kind of failure.
        kind: GuestFaultKind,
        /// Details.
        message: String,
    },
    /// The journal failed; for a command, nothing was stored.
    #[error("storage: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The component was refused before validation (it does not compile,
    /// does not fit the contract, or cannot be stored).
    #[error("deploy refused: {0}")]
    DeployRefused(String),
    /// Replaying history through the new component failed; nothing changed.
    #[error("deploy refused: {}", .0.summary())]
    ValidationFailed(Box<ValidationReport>),
    /// Reserved for the cluster: another node owns the entity.
    #[error("not the owner: the entity is owned by {owner}")]
    NotOwner {
        /// The owning node's address.
        owner: String,
    },
    /// Reserved for the cluster: the entity cannot be served right now
    /// (e.g. its shard is moving).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What kind of guest failure a [`ApiError::GuestFault`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GuestFaultKind {
    /// The call ran past its deadline.
    Deadline,
    /// The guest tried to grow its memory past the cap.
    MemoryLimit,
    /// Any other trap (a panic in a Rust guest).
    Trap,
    /// The guest could not be instantiated.
    Instantiate,
    /// The guest could not decode its own state.
    BadState,
    /// The guest broke the behavior contract (e.g. could not render its own
    /// bytes as JSON).
    Contract,
}

impl std::fmt::Display for GuestFaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuestFaultKind::Deadline => "deadline",
            GuestFaultKind::MemoryLimit => "memory limit",
            GuestFaultKind::Trap => "trap",
            GuestFaultKind::Instantiate => "instantiate",
            GuestFaultKind::BadState => "bad state",
            GuestFaultKind::Contract => "contract",
        })
    }
}

/// What a client should do after an error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Send the same request again later (after a backoff). After a
    /// [`ApiError::Timeout`] the command may have run: send it with an
    /// expected sequence number to avoid running it twice.
    Later,
    /// Send the request to this node instead.
    OnOwner(String),
    /// Sending the same request again will fail the same way.
    Never,
}

impl ApiError {
    /// What a client should do about this error.
    pub fn retry(&self) -> Retry {
        match self {
            ApiError::Busy(_)
            | ApiError::MailboxFull
            | ApiError::Timeout { .. }
            | ApiError::Unavailable(_)
            | ApiError::ShuttingDown => Retry::Later,
            ApiError::NotOwner { owner } => Retry::OnOwner(owner.clone()),
            ApiError::UnknownEntityType(_)
            | ApiError::BadRequest(_)
            | ApiError::MalformedCommand(_)
            | ApiError::Rejected(_)
            | ApiError::Conflict { .. }
            | ApiError::Stopped { .. }
            | ApiError::GuestFault { .. }
            | ApiError::Storage(_)
            | ApiError::DeployRefused(_)
            | ApiError::ValidationFailed(_) => Retry::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_says_later_for_load_and_never_for_the_request_itself() {
        assert_eq!(ApiError::Busy("x".into()).retry(), Retry::Later);
        assert_eq!(ApiError::MailboxFull.retry(), Retry::Later);
        assert_eq!(ApiError::Timeout { ms: 5 }.retry(), Retry::Later);
        assert_eq!(ApiError::ShuttingDown.retry(), Retry::Later);
        assert_eq!(ApiError::Unavailable("moving".into()).retry(), Retry::Later);
        assert_eq!(
            ApiError::NotOwner {
                owner: "10.0.0.2:7400".into()
            }
            .retry(),
            Retry::OnOwner("10.0.0.2:7400".into())
        );
        assert_eq!(ApiError::Rejected("no".into()).retry(), Retry::Never);
        assert_eq!(
            ApiError::GuestFault {
                kind: GuestFaultKind::Trap,
                message: "unreachable".into()
            }
            .retry(),
            Retry::Never
        );
    }

    #[test]
    fn messages_name_the_failure() {
        let e = ApiError::GuestFault {
            kind: GuestFaultKind::Deadline,
            message: "1s".into(),
        };
        assert_eq!(e.to_string(), "guest failure (deadline): 1s");
        assert!(ApiError::Timeout { ms: 250 }.to_string().contains("250 ms"));
    }
}
