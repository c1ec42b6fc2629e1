//! `cairn check-config` and `cairn describe`: offline checks of a
//! configuration file and of a behavior component.

use std::path::Path;

use anyhow::{Context, Result};
use cairn_host::behavior::Behavior;
use cairn_host::config::Config;
use cairn_host::runtime::{GuestLimits, WasmEngine};

/// Validates a `cairn.toml` and prints the resolved settings.
pub fn check_config(file: &Path) -> Result<()> {
    let config = Config::load(file)?;
    println!("{}: valid", file.display());
    println!("data_dir = {}", config.node.data_dir.display());
    println!("listen = {}", config.node.listen);
    println!("journal = {:?}", config.node.journal);
    println!("workers = {}", config.node.worker_threads());
    println!("keep_awake_us = {}", config.node.keep_awake.as_micros());
    println!("defaults = {:#?}", config.defaults);
    Ok(())
}

/// Compiles and checks a component and prints what it declares.
pub fn describe(file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let engine = WasmEngine::new()?;
    let behavior = engine.load(&bytes, GuestLimits::default())?;
    let d = Behavior::descriptor(&behavior);
    println!(
        "name: {}\nversion: {}\nstate schema: {}",
        d.name, d.version, d.state_schema
    );
    Ok(())
}
