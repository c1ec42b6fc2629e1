//! The `cairn` command. This first version checks configuration files and
//! components; the network node and the full CLI come with the node issue.

use std::path::Path;
use std::process::ExitCode;

use cairn_host::config::Config;
use cairn_host::runtime::{GuestLimits, WasmEngine};

const HELP: &str = "\
cairn — event-sourced entities as WebAssembly components

USAGE:
    cairn check-config FILE      validate a cairn.toml and print the resolved defaults
    cairn describe FILE.wasm     compile and check a behavior component, print what it declares
    cairn help                   this text

The in-process runtime is the cairn-host library (see README.md);
the walk-through runs with `cargo run --release -p cairn-tests --bin cairn-demo`.";

fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("check-config") => {
            let path = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("usage: cairn check-config FILE"))?;
            let config = Config::load(Path::new(path))?;
            println!("{path}: valid");
            println!("data_dir = {}", config.node.data_dir.display());
            println!("defaults = {:#?}", config.defaults);
            Ok(())
        }
        Some("describe") => {
            let path = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("usage: cairn describe FILE.wasm"))?;
            let bytes =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
            let engine = WasmEngine::new()?;
            let behavior = engine.load(&bytes, GuestLimits::default())?;
            let d = cairn_host::behavior::Behavior::descriptor(&behavior);
            println!(
                "name: {}\nversion: {}\nstate schema: {}",
                d.name, d.version, d.state_schema
            );
            Ok(())
        }
        None | Some("help" | "--help" | "-h") => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command `{other}`\n\n{HELP}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
