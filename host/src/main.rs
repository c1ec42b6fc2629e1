//! The `cairn` command: runs a node (`cairn node`) and talks to one (`deploy`,
//! `ask`, `tell`, `events`, `state`, `types`, `tail`, `bench`), manages
//! certificates (`certs init`) and checks files (`check-config`, `describe`).
//! `cairn --help` lists everything; the commands live in [`cli`].

use std::process::ExitCode;

mod cli;

/// jemalloc rather than glibc's allocator: the runtime allocates on one
/// worker thread and frees on another all the time (tasks move between
/// workers), which glibc serves through its arena locks. In-process durable
/// throughput of a wasm behavior rose 18–58% in alternating runs, at ~330
/// more bytes per idle entity (docs/BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
