//! A deploy's progress on a real `cairn node` process: while the Python
//! bank account (a 19 MB component carrying CPython, seconds of Cranelift
//! on a fresh node with an empty compiled-code cache) is being deployed,
//! the same client asks the node for the deploy's phase
//! (`Request::DeployProgress`) on another stream of its connection. At
//! least one phase must be seen while the deploy is pending, the compile
//! among them, and none once the deploy has returned. `cairn deploy --json`
//! still prints what it printed before.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_tests::{NodeProc, python_example_wasm};

const TYPE: &str = "bank-account";

fn log_of(node: &NodeProc) -> String {
    std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_deploy_reports_its_phases_and_none_after_it_returns() -> Result<()> {
    let wasm = std::fs::read(python_example_wasm(TYPE)?)?;
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    let client = node.client().await?;
    assert_eq!(
        client.deploy_progress(TYPE).await?,
        None,
        "before any deploy"
    );

    let started = Instant::now();
    let deploy = client.deploy_with(TYPE, wasm, false);
    tokio::pin!(deploy);
    let mut seen: Vec<(String, Duration)> = Vec::new();
    let deployed = loop {
        tokio::select! {
            r = &mut deploy => break r,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let progress = tokio::select! {
            r = &mut deploy => break r,
            p = client.deploy_progress(TYPE) => p?,
        };
        if let Some(p) = progress {
            if seen.last().map(|(s, _)| s) != Some(&p.phase) {
                eprintln!(
                    "{:>6.1} s: {} {}/{}",
                    started.elapsed().as_secs_f64(),
                    p.phase,
                    p.done,
                    p.total
                );
            }
            seen.push((p.phase, p.elapsed));
        }
    };
    let deployed = deployed.with_context(|| log_of(&node))?;
    assert!(deployed.changed);
    eprintln!(
        "deploy took {:?}; {} answers with a phase",
        started.elapsed(),
        seen.len()
    );
    assert!(
        !seen.is_empty(),
        "no phase seen during a {:?} deploy",
        started.elapsed()
    );
    assert!(seen.iter().all(|(p, _)| !p.is_empty()), "{seen:?}");
    // The compile is the long part on a fresh node: it must have been seen,
    // and its clock runs while the phase stays.
    let compiling: Vec<Duration> = seen
        .iter()
        .filter(|(p, _)| p.starts_with("compiling ") && p.ends_with(" KiB component"))
        .map(|(_, e)| *e)
        .collect();
    assert!(!compiling.is_empty(), "{seen:?}");
    assert!(compiling.windows(2).all(|w| w[0] <= w[1]), "{compiling:?}");
    // Nothing once the deploy has returned.
    assert_eq!(
        client.deploy_progress(TYPE).await?,
        None,
        "after the deploy"
    );
    assert_eq!(client.deploy_progress("other-type").await?, None);

    // The CLI's deploy (which polls the phase while it waits) prints what
    // it always printed: here the same bytes again, which change nothing.
    let path = python_example_wasm(TYPE)?;
    let (ok, out, err) = node.cli(&["deploy", TYPE, path.to_str().context("path")?, "--json"])?;
    assert!(ok, "{out}{err}\n{}", log_of(&node));
    let line: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| out.clone())?;
    assert_eq!(line["changed"], false, "{out}");
    assert_eq!(
        client.deploy_progress(TYPE).await?,
        None,
        "after the CLI's deploy"
    );
    client.close().await;
    Ok(())
}
