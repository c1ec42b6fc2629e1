//! The `cairn` command: runs a node (`cairn node`) and talks to one (`deploy`,
//! `ask`, `tell`, `events`, `state`, `types`, `tail`, `bench`), manages
//! certificates (`certs init`), checks files (`check-config`, `describe`) and
//! checks or cuts a stopped node's event log (`journal check`, `journal cut`).
//! `cairn --help` lists everything. Everything it does goes through the
//! libraries: the node and server of `cairn-host`, the client of
//! `cairn-client`.
//!
//! Layout: [`args`] (clap), [`node`] (the node runner), [`deploy`] (deploy,
//! versions, rollback, types), [`entity`] (ask, tell, events, state, tail),
//! [`certs`], [`inspect`] (check-config, describe), [`journal`] (journal
//! check and cut), [`bench`](mod@bench) and its optional disk probes
//! ([`probe`]), [`output`] (formatting shared by the commands).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

mod args;
mod bench;
mod certs;
mod cluster;
mod deploy;
mod entity;
mod inspect;
mod journal;
mod node;
mod output;
mod probe;

use args::{Cli, Command, JournalCommand};

/// jemalloc rather than glibc's allocator: the runtime allocates on one
/// worker thread and frees on another all the time (tasks move between
/// workers), which glibc serves through its arena locks (docs/BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: it panics when stderr cannot be written
            // (a node's log file on a full disk).
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, like `{:#}`, but leaving out a
/// cause whose text the line already holds (library errors such as
/// "cannot open storage: {0}" repeat their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs a command: a node on a runtime of its own, the offline commands
/// without one, a client command on one thread.
fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::CheckConfig { file } => inspect::check_config(&file),
        Command::Describe { file } => inspect::describe(&file),
        Command::Certs { command } => certs::run(command),
        Command::Journal { command } => match command {
            JournalCommand::Check { data_dir } => journal::check(&data_dir),
            JournalCommand::Cut { data_dir, at } => journal::cut(&data_dir, at),
        },
        Command::Node(args) => {
            // The node's runtime has `node.workers` threads (one per core but
            // one by default, see `NodeConfig::worker_threads`).
            let config = node::config(&args)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.node.worker_threads())
                .enable_all()
                .build()?
                .block_on(node::run(config, args.log_format))
        }
        // A client command runs on one thread, which is cheaper and lets the
        // QUIC driver put many requests in one packet.
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(client_command(command)),
    }
}

/// The commands that talk to a running node.
async fn client_command(command: Command) -> Result<()> {
    match command {
        Command::Deploy {
            entity_type,
            file,
            check,
            wait,
            conn,
        } => deploy::deploy(&entity_type, &file, check, wait, &conn).await,
        Command::Rollback {
            entity_type,
            to,
            wait,
            conn,
        } => deploy::rollback(&entity_type, to, wait, &conn).await,
        Command::Versions { entity_type, conn } => deploy::versions(&entity_type, &conn).await,
        Command::Types { conn } => deploy::types(&conn).await,
        Command::Cluster { command } => cluster::run(command).await,
        Command::Ask {
            entity_type,
            entity_id,
            command,
            expect_seq,
            timeout,
            conn,
        } => {
            entity::ask(
                &entity_type,
                &entity_id,
                command,
                expect_seq,
                timeout,
                &conn,
            )
            .await
        }
        Command::Tell {
            entity_type,
            entity_id,
            command,
            conn,
        } => entity::tell(&entity_type, &entity_id, command, &conn).await,
        Command::Events {
            entity_type,
            entity_id,
            from,
            to,
            limit,
            conn,
        } => entity::events(&entity_type, &entity_id, from, to, limit, &conn).await,
        Command::State {
            entity_type,
            entity_id,
            at_seq,
            at,
            conn,
        } => entity::state(&entity_type, &entity_id, at_seq, at, &conn).await,
        Command::Tail {
            entity_type,
            from,
            count,
            conn,
        } => entity::tail(entity_type, from, count, &conn).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Node(args) => node::run(node::config(&args)?, args.log_format).await,
        Command::CheckConfig { .. }
        | Command::Describe { .. }
        | Command::Certs { .. }
        | Command::Journal { .. } => {
            anyhow::bail!("not a client command")
        }
    }
}
