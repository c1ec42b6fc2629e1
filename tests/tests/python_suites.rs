//! The Python guest SDK's test suite and each Python example's
//! (`examples/python/*`) run under `cargo test --workspace`, through
//! `guest-sdk/python/run_tests.py` with the pinned pytest (installed on
//! first use into `target/python-tools`, hash-checked against
//! `guest-sdk/python/requirements-test.txt`). A failing suite fails this
//! test with pytest's output. `CAIRN_PYTHON_TEST_RUNNER=unittest` runs the
//! suites with `python3 -m unittest` instead (a machine without PyPI).

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};
use cairn_tests::workspace_root;

fn run_tests(args: &[&str]) -> Result<Output> {
    let root = workspace_root();
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let runner = std::env::var("CAIRN_PYTHON_TEST_RUNNER").unwrap_or_else(|_| "pytest".into());
    Command::new(python)
        .arg(root.join("guest-sdk").join("python").join("run_tests.py"))
        .args(["--runner", &runner])
        .args(args)
        .current_dir(&root)
        .output()
        .context("running python3 guest-sdk/python/run_tests.py (Python 3.10 or later is needed)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_python_sdk_and_example_suites_pass() -> Result<()> {
    let out = run_tests(&[])?;
    let text = text(&out);
    assert!(out.status.success(), "Python test suites failed:\n{text}");
    // Every suite ran: the SDK's and one per example directory.
    let examples = workspace_root().join("examples").join("python");
    let mut expected = vec!["guest-sdk/python/tests".to_owned()];
    for entry in std::fs::read_dir(&examples)? {
        let path = entry?.path();
        if path.is_dir() {
            let name = path.file_name().context("name")?.to_string_lossy();
            expected.push(format!("examples/python/{name}"));
        }
    }
    assert!(expected.len() >= 4, "{expected:?}");
    for suite in &expected {
        assert!(
            text.contains(&format!("== {suite}:")),
            "suite {suite} did not run:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("{} suites passed", expected.len())),
        "{text}"
    );
    eprintln!("{text}");
    Ok(())
}

fn write(dir: &Path, name: &str, body: &str) -> Result<()> {
    std::fs::write(dir.join(name), body)?;
    Ok(())
}

#[test]
fn a_failing_python_suite_fails_the_run_with_its_output() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let failing = tmp.path().join("failing");
    std::fs::create_dir(&failing)?;
    write(
        &failing,
        "test_fails.py",
        "import unittest\n\nclass T(unittest.TestCase):\n    def test_figure(self):\n        self.assertEqual(120, 121, 'the balance figure')\n",
    )?;
    let out = run_tests(&[failing.to_str().context("path")?])?;
    let text = text(&out);
    assert!(!out.status.success(), "a failing suite passed:\n{text}");
    assert!(
        text.contains("the balance figure") && text.contains("1 of 1 suites failed"),
        "{text}"
    );
    // A directory that is not there fails too.
    let out = run_tests(&[tmp.path().join("missing").to_str().context("path")?])?;
    assert!(!out.status.success(), "{}", self::text(&out));
    Ok(())
}
