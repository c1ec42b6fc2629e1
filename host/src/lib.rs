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
//! - [`api`]: the client protocol (requests, responses, framing).
//! - [`server`]: serves a node over QUIC; [`awake`]: the thread that keeps a
//!   CPU awake after requests; [`client`]: the Rust client.
//! - [`tls`]: certificates and the TLS configurations (mutual TLS, always on).
//! - Storage (journal, snapshots, timers) is the `cairn-store` crate.
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

pub mod api;
pub mod awake;
pub mod behavior;
pub mod client;
pub mod config;
mod deadline;
mod entity;
pub mod hotswap;
pub mod node;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod tls;
