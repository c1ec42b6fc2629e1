//! The `cairn` binary's offline commands. (Having an integration test here
//! also makes `cargo test --workspace` build the binary that the black-box
//! tests in `tests/` drive.)

use std::process::Command;

fn cairn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command() {
    let (ok, out, _) = cairn(&["--help"]);
    assert!(ok);
    for cmd in [
        "node", "deploy", "ask", "tell", "events", "state", "types", "tail", "certs", "bench",
    ] {
        assert!(out.contains(cmd), "--help does not mention {cmd}:\n{out}");
    }
}

#[test]
fn certs_init_creates_files_and_refuses_to_overwrite() {
    let dir = std::env::temp_dir().join(format!("cairn-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (ok, _, err) = cairn(&["certs", "init", "--dir", d, "--name", "node-a"]);
    assert!(ok, "{err}");
    for f in [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "client.pem",
        "client.key",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let (ok, _, err) = cairn(&["certs", "init", "--dir", d]);
    assert!(!ok);
    assert!(err.contains("already holds certificates"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_commands_without_a_node_fail_clearly() {
    let dir = std::env::temp_dir().join(format!("cairn-cli-none-{}", std::process::id()));
    let (ok, _, err) = cairn(&["types", "--certs", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no certificates"), "{err}");
}

#[test]
fn bench_probes_the_disk_only_when_asked() {
    let (ok, out, _) = cairn(&["bench", "--help"]);
    assert!(ok);
    assert!(
        out.contains("--probe-disk") && out.contains("Benchmark only"),
        "{out}"
    );
    // --fsync-dir only means something with --probe-disk.
    let (ok, _, err) = cairn(&["bench", "--fsync-dir", "."]);
    assert!(!ok);
    assert!(err.contains("--probe-disk"), "{err}");
}
