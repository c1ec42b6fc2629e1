//! The compiled-code cache on a real `cairn node` process: the Python bank
//! account (a 19 MB component carrying CPython, seconds of Cranelift) is
//! compiled once at deploy; after a SIGTERM the restarted node loads its
//! machine code from `<data_dir>/compiled/` instead of compiling, and serves
//! the recorded history. A damaged cache file is ignored (logged), the
//! component compiled again and the entry rewritten; the next restart uses
//! the cache again.
//!
//! The test checks that the cache was used through the node's log lines,
//! not through timing; it prints the time from the restart to the first
//! reply with and without the cache (docs/BENCHMARKS.md records them).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::Client;
use cairn_tests::{NodeProc, python_example_wasm};

const TYPE: &str = "bank-account";

/// Loaded from the cache.
const HIT: &str = "component loaded from the compiled-code cache";
/// Compiled (a miss).
const COMPILED: &str = "component compiled";
/// Written to the cache after a compile.
const WRITTEN: &str = "compiled code written to the cache";
/// A cache entry that failed its checks.
const IGNORED: &str = "ignoring a compiled-code cache entry";

/// How long a (re)started node may take to answer when it compiles the
/// Python component: minutes on a busy 2-core machine.
const COMPILE_WAIT: Duration = Duration::from_secs(600);

fn log_of(node: &NodeProc) -> String {
    std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default()
}

/// The `.cwasm` and `.meta` files of the cache directory.
fn cache_files(data: &Path) -> Result<(Vec<std::path::PathBuf>, Vec<std::path::PathBuf>)> {
    let mut code = Vec::new();
    let mut meta = Vec::new();
    for e in std::fs::read_dir(data.join("compiled"))? {
        let p = e?.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("cwasm") => code.push(p),
            Some("meta") => meta.push(p),
            _ => {}
        }
    }
    Ok((code, meta))
}

/// Connects as soon as the node listens (it restores its components
/// first). Each attempt gives up quickly: QUIC gets no refusal from a port
/// where nothing listens, and a handshake that started before the node
/// listened would complete only at the client's retransmission, about 1 s
/// later, which would be measured as the node's start. Attempts grow from
/// 100 ms (up to 2 s), so a slow handshake on a busy machine still ends.
async fn connect(node: &mut NodeProc, wait: Duration) -> Result<Client> {
    let deadline = Instant::now() + wait;
    let mut attempt = Duration::from_millis(100);
    loop {
        let files = cairn_client::tls::ClientFiles::in_dir(&node.certs());
        if files.ca.exists() {
            match Client::connect_within(node.addr, &files, "localhost", attempt).await {
                Ok(c) => return Ok(c),
                Err(_) => attempt = (attempt * 3 / 2).min(Duration::from_secs(2)),
            }
        }
        if let Some(status) = node.exited() {
            bail!("the node exited with {status}\n{}", log_of(node));
        }
        if Instant::now() > deadline {
            bail!("the node did not listen within {wait:?}\n{}", log_of(node));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM, start again; returns the time from the start of the new
/// process to the first reply (`GetBalance` of `id`, which must be
/// `balance`), and what the new process logged until then.
async fn restart_until_first_reply(
    node: &mut NodeProc,
    id: &str,
    balance: &str,
    wait: Duration,
) -> Result<(Duration, String)> {
    let status = node.terminate()?;
    assert!(status.success(), "the node exited with {status} on SIGTERM");
    let before = log_of(node).len();
    let started = Instant::now();
    node.restart()?;
    let client = connect(node, wait).await?;
    let (reply, _) = client.ask_json(TYPE, id, r#""GetBalance""#).await?;
    let took = started.elapsed();
    assert_eq!(reply.as_deref(), Some(balance));
    client.close().await;
    let log = log_of(node);
    Ok((took, log.get(before..).unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_python_from_its_compiled_code_cache() -> Result<()> {
    let wasm = python_example_wasm(TYPE)?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let mut node = NodeProc::start(&data, &[])?;
    node.client().await?;

    // The deploy compiles the component and writes its code to the cache.
    let started = Instant::now();
    let (ok, out, err) = node.cli(&["deploy", TYPE, wasm.to_str().context("path")?])?;
    assert!(ok, "{out}{err}\n{}", log_of(&node));
    eprintln!(
        "deploy (first compile, checks, cache write): {:?}",
        started.elapsed()
    );
    let log = log_of(&node);
    assert!(log.contains(COMPILED) && log.contains(WRITTEN), "{log}");
    let (code, meta) = cache_files(&data)?;
    assert_eq!((code.len(), meta.len()), (1, 1), "{code:?} {meta:?}");
    let hash = cairn_host::registry::sha256_hex(&std::fs::read(&wasm)?);
    let name = code[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(name.starts_with(&format!("{hash}-")), "{name}");

    // History: 5 deposits of 10.
    let client = node.client().await?;
    for _ in 0..5 {
        let (reply, _) = client
            .ask_json(TYPE, "acct-1", r#"{"Deposit":{"amount":10}}"#)
            .await?;
        assert_eq!(reply.as_deref(), Some("\"ok\""));
    }
    client.close().await;

    // The code of a component no deploy refers to (as a `deploy --check`
    // or a refused deploy leaves behind), under this engine's key.
    let key = name
        .strip_prefix(&format!("{hash}-"))
        .and_then(|k| k.strip_suffix(".cwasm"))
        .context("engine key")?;
    let orphan = "ab".repeat(32);
    let orphan_code = data.join("compiled").join(format!("{orphan}-{key}.cwasm"));
    let orphan_meta = data.join("compiled").join(format!("{orphan}-{key}.meta"));
    std::fs::copy(&code[0], &orphan_code)?;
    std::fs::copy(&meta[0], &orphan_meta)?;

    // Restart: the code comes from the cache, nothing is compiled; the
    // orphan's files are removed, the deployed one's stay.
    let (cached, log) = restart_until_first_reply(&mut node, "acct-1", "50", COMPILE_WAIT).await?;
    eprintln!("restart until the first reply, compiled code cached: {cached:?}");
    assert!(log.contains(HIT), "the cache was not used:\n{log}");
    assert!(!log.contains(COMPILED), "the node compiled again:\n{log}");
    assert!(
        !orphan_code.exists() && !orphan_meta.exists(),
        "the orphan entry was not pruned:\n{log}"
    );
    assert!(log.contains("removed the compiled code of a component no longer deployed"));
    assert_eq!(cache_files(&data)?.0, code, "the deployed entry stays");

    // A damaged cache file: ignored with a log line, compiled again, rewritten.
    let mut bytes = std::fs::read(&code[0])?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&code[0], &bytes)?;
    let (compiled, log) =
        restart_until_first_reply(&mut node, "acct-1", "50", COMPILE_WAIT).await?;
    eprintln!("restart until the first reply, compiling (cache entry damaged): {compiled:?}");
    assert!(log.contains(IGNORED) && log.contains("checksum"), "{log}");
    assert!(log.contains(COMPILED) && log.contains(WRITTEN), "{log}");
    assert!(!log.contains(HIT), "{log}");

    // The rewritten entry is used by the next restart.
    let (again, log) = restart_until_first_reply(&mut node, "acct-1", "50", COMPILE_WAIT).await?;
    eprintln!("restart until the first reply, cache rewritten: {again:?}");
    assert!(log.contains(HIT) && !log.contains(COMPILED), "{log}");

    // An unreadable cache directory slows the node down, never stops it.
    std::fs::remove_dir_all(data.join("compiled"))?;
    std::fs::write(data.join("compiled"), b"not a directory")?;
    let (_, log) = restart_until_first_reply(&mut node, "acct-1", "50", COMPILE_WAIT).await?;
    assert!(log.contains(COMPILED), "{log}");
    assert!(
        log.contains("could not write the compiled-code cache"),
        "{log}"
    );
    Ok(())
}
