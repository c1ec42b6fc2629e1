//! Why a request failed, as a client sees it ([`ApiError`]), and what the
//! client should do about it ([`Retry`]). Every failure a client can act on
//! differently has its own variant; the message strings are for people.
//!
//! The contract for a command (`Ask`, `Tell`) has three outcomes:
//! - **success**: the command ran and its events are durable (on
//!   `min_acks` replicas in a cluster);
//! - **not applied**: every error but the three below. The command did not
//!   run, or ran and stored nothing; nothing of it can appear later. Those
//!   a client may simply send again are [`Retry::Later`] (`Busy`,
//!   `MailboxFull`, `Storage`, `Unavailable`) and [`Retry::OnOwner`]
//!   (`NotOwner`); the others fail the same way again ([`Retry::Never`]);
//! - **outcome unknown**: [`ApiError::Indeterminate`], [`ApiError::Timeout`]
//!   and [`ApiError::ShuttingDown`] ([`Retry::WithExpectedSeq`]). The
//!   command may have been applied, or may still be (a write that reached a
//!   replica can be imported by a later resync or failover). Send it again
//!   only with an expected sequence number, so that a second application is
//!   refused with a `Conflict`; [`ApiError::may_have_applied`] tells these
//!   apart.

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
    /// No reply in time; the command may still run (the outcome is
    /// unknown, see [`Retry::WithExpectedSeq`]).
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
    /// The journal failed or refused the write (e.g. too few live replicas
    /// for `min_acks`); for a command, nothing was stored, on this node or
    /// any replica, and nothing of it can appear later: safe to send again.
    #[error("storage: {0}")]
    Storage(String),
    /// The node is shutting down. A command it had already started to
    /// write when it stopped may have been stored, so the outcome is
    /// unknown ([`Retry::WithExpectedSeq`]).
    #[error("node is shutting down")]
    ShuttingDown,
    /// The component was refused before validation (it does not compile,
    /// does not fit the contract, or cannot be stored).
    #[error("deploy refused: {0}")]
    DeployRefused(String),
    /// Replaying history through the new component failed; nothing changed.
    #[error("deploy refused: {}", .0.summary())]
    ValidationFailed(Box<ValidationReport>),
    /// In a cluster: another node owns the entity; the command did not run
    /// here.
    #[error("not the owner: the entity is owned by {owner}")]
    NotOwner {
        /// The owning node's address.
        owner: String,
    },
    /// In a cluster: the entity cannot be served right now (its shard is
    /// moving, its owner is down or unreachable, this node lost its
    /// lease). The command did not run and nothing was stored: safe to
    /// send again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The outcome of the command is unknown: it may or may not have been
    /// applied, now or later. Its write failed after it was sent to a
    /// replica (which may keep it, and a resync or failover then imports
    /// it), or the node forwarding it lost the owner's answer. Send it
    /// again only with an expected sequence number
    /// ([`Retry::WithExpectedSeq`]). Added in protocol version 4.
    #[error("outcome unknown (the command may or may not have been applied): {0}")]
    Indeterminate(String),
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
    /// Nothing was applied: send the same request again later (after a
    /// backoff).
    Later,
    /// Send the request to this node instead.
    OnOwner(String),
    /// Sending the same request again will fail the same way.
    Never,
    /// The outcome is unknown: the command may have been applied, or may
    /// still be. Send it again only with an expected sequence number (the
    /// one the first try carried, or the entity's sequence number as read
    /// now, after checking whether the command's effect is there): a
    /// `Conflict` then says the entity moved on, where a plain resend could
    /// apply it twice. A request that changes nothing (a read) may simply
    /// be sent again.
    WithExpectedSeq,
}

impl ApiError {
    /// What a client should do about this error.
    pub fn retry(&self) -> Retry {
        match self {
            ApiError::Busy(_)
            | ApiError::MailboxFull
            | ApiError::Storage(_)
            | ApiError::Unavailable(_) => Retry::Later,
            ApiError::NotOwner { owner } => Retry::OnOwner(owner.clone()),
            ApiError::Timeout { .. } | ApiError::ShuttingDown | ApiError::Indeterminate(_) => {
                Retry::WithExpectedSeq
            }
            ApiError::UnknownEntityType(_)
            | ApiError::BadRequest(_)
            | ApiError::MalformedCommand(_)
            | ApiError::Rejected(_)
            | ApiError::Conflict { .. }
            | ApiError::Stopped { .. }
            | ApiError::GuestFault { .. }
            | ApiError::DeployRefused(_)
            | ApiError::ValidationFailed(_) => Retry::Never,
        }
    }

    /// Whether a command answered with this error may have been applied
    /// (now or later): the outcome is unknown. `false` means it was not
    /// applied and never will be.
    pub fn may_have_applied(&self) -> bool {
        self.retry() == Retry::WithExpectedSeq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_says_later_for_load_and_never_for_the_request_itself() {
        assert_eq!(ApiError::Busy("x".into()).retry(), Retry::Later);
        assert_eq!(ApiError::MailboxFull.retry(), Retry::Later);
        assert_eq!(ApiError::Unavailable("moving".into()).retry(), Retry::Later);
        assert_eq!(ApiError::Storage("min_acks".into()).retry(), Retry::Later);
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
    fn an_unknown_outcome_is_retried_only_with_an_expected_seq() {
        for e in [
            ApiError::Indeterminate("replica 2 did not answer".into()),
            ApiError::Timeout { ms: 5 },
            ApiError::ShuttingDown,
        ] {
            assert_eq!(e.retry(), Retry::WithExpectedSeq, "{e}");
            assert!(e.may_have_applied(), "{e}");
        }
    }

    #[test]
    fn only_the_unknown_outcomes_may_have_applied() {
        // One value of every variant: a variant added later must be placed
        // on one side of the contract here.
        let all = [
            ApiError::Busy("x".into()),
            ApiError::UnknownEntityType("t".into()),
            ApiError::BadRequest("x".into()),
            ApiError::MalformedCommand("x".into()),
            ApiError::Rejected("x".into()),
            ApiError::Conflict {
                expected: 1,
                actual: 2,
            },
            ApiError::Timeout { ms: 1 },
            ApiError::MailboxFull,
            ApiError::Stopped { reason: "x".into() },
            ApiError::GuestFault {
                kind: GuestFaultKind::Trap,
                message: "x".into(),
            },
            ApiError::Storage("x".into()),
            ApiError::ShuttingDown,
            ApiError::DeployRefused("x".into()),
            ApiError::ValidationFailed(Box::default()),
            ApiError::NotOwner { owner: "a".into() },
            ApiError::Unavailable("x".into()),
            ApiError::Indeterminate("x".into()),
        ];
        let unknown: Vec<String> = all
            .iter()
            .filter(|e| e.may_have_applied())
            .map(|e| format!("{e:?}"))
            .collect();
        assert_eq!(
            unknown,
            ["Timeout { ms: 1 }", "ShuttingDown", "Indeterminate(\"x\")"]
        );
        // "Not stored, safe to retry" is never "outcome unknown".
        for e in &all {
            if matches!(e.retry(), Retry::Later | Retry::OnOwner(_)) {
                assert!(!e.may_have_applied(), "{e}");
            }
        }
    }

    #[test]
    fn messages_name_the_failure() {
        let e = ApiError::GuestFault {
            kind: GuestFaultKind::Deadline,
            message: "1s".into(),
        };
        assert_eq!(e.to_string(), "guest failure (deadline): 1s");
        assert!(ApiError::Timeout { ms: 250 }.to_string().contains("250 ms"));
        assert_eq!(
            ApiError::Indeterminate("replica 2 timed out".into()).to_string(),
            "outcome unknown (the command may or may not have been applied): replica 2 timed out"
        );
    }
}
