//! Cairn host: runs event-sourced entity behaviors compiled to WebAssembly
//! components, with a durable journal, snapshots, recovery and supervision.
//! It is the single-node engine, without network I/O: serving it over QUIC
//! is `cairn-server`, its part in a cluster is `cairn-driver`.
//!
//! # Layout
//!
//! Dependencies run one way: `node → deploy → entity → replay → store`,
//! with `types`, `behavior` and `clock` as leaves everything may use.
//!
//! - [`node`]: the façade: [`Node::open`], `ask`, `tell`, reads (now and in
//!   the past), lifecycle events, shutdown. Owns the entity types, timers
//!   and passivation, and implements the entity's outbox.
//! - [`deploy`]: deploys and rollbacks (compile, validate by replaying real
//!   history, record, activate) and the [`Versions`] view.
//! - `entity` (private): the per-entity actor (mailbox, recovery, command
//!   loop, snapshots, supervision) over a narrow environment: journal,
//!   snapshots, lifecycle sink, clock, outbox. It never sees the node.
//! - `outbox` (private): messages between entities, exactly once: the
//!   sender's outbox and the receiver's record of what it applied, kept
//!   in the entity's timers.
//! - [`placement`]: the admission point a cluster member is opened with.
//! - `replay` (private): the one replay of an entity's history, used by
//!   recovery, time travel and validation.
//! - [`types`]: leaf types: [`Reply`], [`AskError`], [`LifecycleEvent`].
//! - [`clock`]: the injected clock ([`SystemClock`](clock::SystemClock),
//!   [`ManualClock`](clock::ManualClock)).
//! - [`runtime`]: the wasmtime engine, component checks, instance pools,
//!   limits; [`behavior`]: the byte-level behavior trait it implements.
//! - [`registry`]: deployed components by content, the deploy history.
//! - [`config`]: the `cairn.toml` file.
//! - [`service`]: the node's answers to the client protocol's requests
//!   (used by the QUIC server and by a cluster member's driver).
//! - `deadline` (private): the coarse timer behind `ask` timeouts.
//!
//! Other crates of the workspace: storage (journal, snapshots, timers) is
//! `cairn-store`; re-exported for its path here, [`api`] is `cairn-proto`
//! (the client protocol: messages, errors, framing on bytes). The node's
//! part in a cluster (the peer protocol, gossip and phi heartbeats, the
//! decision log, routing to shard owners, handoff, replication) is
//! `cairn-driver`; serving a node over QUIC is `cairn-server`; the Rust
//! client and the certificates are `cairn-client`. The `cairn` command is
//! `cairn-cli`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cairn_host::{AskOptions, Config, Node};
//! let node = Node::open(Config::default()).await?;
//! node.deploy("bank-account", std::fs::read("bank_account.wasm")?).await?;
//! let r = node
//!     .ask_json("bank-account", "acct-1", r#"{"Deposit":{"amount":100}}"#, AskOptions::default())
//!     .await?;
//! assert_eq!(r.reply.as_deref(), Some("\"ok\""));
//! # Ok(()) }
//! ```

pub mod behavior;
pub mod clock;
pub mod config;
mod deadline;
pub mod deploy;
mod entity;
pub mod node;
pub mod outbox;
pub mod placement;
pub mod registry;
mod replay;
pub mod runtime;
pub mod service;
pub mod types;

pub use cairn_proto as api;

pub use config::Config;
pub use deploy::{DeployError, DeployResult, Versions};
pub use node::{AskOptions, Node, NodeError, PastState, ReadError};
pub use types::{AskError, LifecycleEvent, MemberChange, Reply};
