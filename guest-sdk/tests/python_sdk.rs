//! Runs the Python SDK's own tests and the Python bank account's with the
//! machine's `python3` (stdlib `unittest`, no package to install), so that
//! `cargo test --workspace` covers the Python SDK: its codec's byte identity
//! with this crate's fixtures, its bridge and its test kit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Runs `python3 -m unittest discover` in `dir` with `args`; fails with
/// Python's own output.
fn unittest(dir: &Path, args: &[&str]) {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (Python 3.11 or later is needed): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 -m unittest in {} failed:\n{}{stderr}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    // unittest reports "Ran N tests" on stderr: at least one ran.
    assert!(
        stderr.contains("Ran ") && !stderr.contains("Ran 0 tests"),
        "{stderr}"
    );
}

#[test]
fn the_python_sdk_passes_its_tests() {
    unittest(&root().join("guest-sdk").join("python"), &["-s", "tests"]);
}

#[test]
fn the_python_bank_account_passes_its_tests() {
    unittest(
        &root().join("examples").join("python").join("bank-account"),
        &[],
    );
}
