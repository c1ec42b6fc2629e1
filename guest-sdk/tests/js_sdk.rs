//! Runs the JavaScript SDK's own tests and the JavaScript bank account's
//! with the machine's `node --test` (no package to install: the SDK and its
//! test kit use only Node's standard library), so that `cargo test
//! --workspace` covers the JavaScript SDK: its codec's byte identity with
//! this crate's fixtures, its bridge, its WIT glue and its test kit. Without
//! `node` these tests fail with a message saying so; they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Runs `node --test DIR/` from the workspace root; fails with node's own
/// output, and when no test ran.
fn node_test(dir: &str) {
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let out = Command::new(&node)
        .args(["--test", "--test-reporter=tap"])
        .arg(format!("{dir}/"))
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (Node 20 or later is needed for the JavaScript SDK's tests): {e}",
                node.to_string_lossy()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test {dir}/ failed:\n{stdout}{stderr}"
    );
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        passed > 0,
        "node --test {dir}/ ran no test:\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("# fail 0") && stdout.contains("# skipped 0"),
        "{stdout}"
    );
}

#[test]
fn the_js_sdk_passes_its_tests() {
    node_test("guest-sdk/js/test");
}

#[test]
fn the_js_bank_account_passes_its_tests() {
    node_test("examples/js/bank-account");
}

#[test]
fn the_js_bank_account_v2_passes_its_tests() {
    node_test("examples/js/bank-account-v2");
}

#[test]
fn the_js_counter_passes_its_tests() {
    node_test("examples/js/counter");
}

#[test]
fn the_js_bank_account_v3_passes_its_tests() {
    node_test("examples/js/bank-account-v3");
}
