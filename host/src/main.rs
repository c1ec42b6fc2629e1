//! The `cairn` command: runs a node (`cairn node`) and talks to one (`deploy`,
//! `ask`, `tell`, `events`, `state`, `types`, `tail`, `bench`), manages
//! certificates (`certs init`) and checks files (`check-config`, `describe`).
//! `cairn --help` lists everything; the commands live in [`cli`].

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    match cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
