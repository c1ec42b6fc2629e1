//! Cairn host: runs event-sourced entity behaviors compiled to WebAssembly
//! components, with a durable journal, snapshots, recovery and supervision.
//!
//! Layout:
//! - [`node`]: the in-process API (`register`, `ask`, `tell`, reads, lifecycle).
//! - `entity` (private): the per-entity actor: mailbox, recovery, command loop,
//!   snapshots, supervision.
//! - `deadline` (private): the coarse timer behind `ask` timeouts.
//! - [`runtime`]: the wasmtime engine, component checks, instance pools, limits.
//! - [`behavior`]: the byte-level behavior trait shared by wasm and native behaviors.
//! - [`config`]: the `cairn.toml` file.
//! - [`registry`]: deployed components by content, and the deploy history.
//! - [`hotswap`]: validation of a new version by replaying real history.
//! - [`server`]: serves a node over QUIC and translates node errors into the
//!   protocol's; `awake` (private): the optional thread that keeps a CPU
//!   awake after requests.
//! - Storage (journal, snapshots, timers) is the `cairn-store` crate.
//! - Re-exported for existing paths: [`api`] is the `cairn-proto` crate (the
//!   client protocol: messages, errors, framing on bytes); [`client`] is the
//!   `cairn-client` crate (the Rust client, frame I/O on quinn streams) and
//!   [`tls`] its certificate and TLS module. The `cairn` command is the
//!   `cairn-cli` crate.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cairn_host::{config::Config, node::{AskOptions, Node}};
//! let node = Node::open(Config::default())?;
//! node.register_file("bank-account", "bank_account.wasm".as_ref()).await?;
//! let r = node
//!     .ask_json("bank-account", "acct-1", r#"{"Deposit":{"amount":100}}"#, AskOptions::default())
//!     .await?;
//! assert_eq!(r.reply.as_deref(), Some("\"ok\""));
//! # Ok(()) }
//! ```

mod awake;
pub mod behavior;
pub mod config;
mod deadline;
mod entity;
pub mod hotswap;
pub mod node;
pub mod registry;
pub mod runtime;
pub mod server;

pub use cairn_client as client;
pub use cairn_client::tls;
pub use cairn_proto as api;
