//! Support for Cairn's black-box tests, walk-through and benchmark: builds the
//! example behaviors in `examples/` to real WebAssembly components.
//!
//! The components are built once per workspace with the same toolchain, into
//! a target directory of their own (`target/wasm`), so building them never
//! waits on the lock of the main target directory. If the `wasm32-wasip2`
//! target is missing (a fresh machine), it is added with `rustup`.

pub mod cluster;
pub mod guest;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

pub mod native;

/// The example crates built to components.
pub const EXAMPLES: &[&str] = &[
    "bank-account",
    "bank-account-v2",
    "bank-account-v3",
    "bank-account-broken",
    "shopping-cart",
    "counter",
    "faulty",
];

/// The wasm target behaviors are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The workspace root (the directory holding `Cargo.toml` and `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn ensure_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace_root())
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            let status = Command::new("rustup")
                .args(["target", "add", WASM_TARGET])
                .current_dir(workspace_root())
                .status()
                .context("running rustup target add")?;
            if !status.success() {
                bail!("`rustup target add {WASM_TARGET}` failed");
            }
            Ok(())
        }
        // No rustup: assume the toolchain has the target; cargo will say if not.
        Err(_) => Ok(()),
    }
}

fn build_all() -> Result<PathBuf> {
    ensure_target()?;
    let root = workspace_root();
    let target_dir = root.join("target").join("wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", "wasm", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for e in EXAMPLES {
        cmd.args(["-p", e]);
    }
    // Do not inherit flags meant for the host build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("running cargo to build the example components")?;
    if !status.success() {
        bail!("building the example components failed (see the cargo output above)");
    }
    Ok(target_dir.join(WASM_TARGET).join("wasm"))
}

/// Builds (once per process) every example and returns the path of the named
/// example's component, e.g. `example_wasm("bank-account")`.
pub fn example_wasm(name: &str) -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| build_all().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    if !path.exists() {
        bail!("{} was not produced by the build", path.display());
    }
    Ok(path)
}

/// Reads the named example's component bytes.
pub fn example_bytes(name: &str) -> Result<Vec<u8>> {
    let path = example_wasm(name)?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The Python example behaviors (`examples/python/NAME/NAME_WITH_UNDERSCORES.py`).
pub const PYTHON_EXAMPLES: &[&str] = &[
    "bank-account",
    "bank-account-v2",
    "standing-order",
    "standing-order-v2",
];

/// Builds the named Python example (`examples/python/NAME`) to a component
/// with `guest-sdk/python/build.py` and returns its path,
/// `target/wasm/python/NAME.wasm`. On first use the script installs the
/// pinned componentize-py from PyPI into `target/python-tools` (checked
/// against the hashes of `guest-sdk/python/requirements-build.txt`); it
/// rebuilds a component only when its sources changed.
pub fn python_example_wasm(name: &str) -> Result<PathBuf> {
    if !PYTHON_EXAMPLES.contains(&name) {
        bail!("{name} is not a Python example ({PYTHON_EXAMPLES:?})");
    }
    let module = workspace_root()
        .join("examples")
        .join("python")
        .join(name)
        .join(format!("{}.py", name.replace('-', "_")));
    python_module_wasm(&module, name, &[])
}

/// Builds any Python behavior module (a `.py` file defining one
/// `cairn_guest.Entity`, e.g. a test's hostile guest under
/// `tests/fixtures/python`) with `guest-sdk/python/build.py` to
/// `target/wasm/python/OUT_NAME.wasm` and returns that path; `args` go to
/// build.py (e.g. `--wasi=import`). Builds run one at a time per process
/// and only when the sources changed.
pub fn python_module_wasm(module: &Path, out_name: &str, args: &[&str]) -> Result<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let root = workspace_root();
    let out = root
        .join("target")
        .join("wasm")
        .join("python")
        .join(format!("{out_name}.wasm"));
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let status = Command::new(python)
        .arg(root.join("guest-sdk").join("python").join("build.py"))
        .arg(module)
        .arg("-o")
        .arg(&out)
        .args(args)
        .current_dir(&root)
        .status()
        .context("running python3 guest-sdk/python/build.py (Python 3.10 or later is needed)")?;
    if !status.success() {
        bail!(
            "building the Python behavior {} failed (see the output above)",
            module.display()
        );
    }
    Ok(out)
}

/// The JavaScript example behaviors (`examples/js/NAME/NAME_WITH_UNDERSCORES.js`).
pub const JS_EXAMPLES: &[&str] = &[
    "bank-account",
    "bank-account-v2",
    "bank-account-v3",
    "counter",
];

/// Builds the named JavaScript example (`examples/js/NAME`) to a component
/// with `guest-sdk/js/build.mjs` and returns its path,
/// `target/wasm/js/NAME.wasm`. On first use the script installs the pinned
/// componentize-js (with `npm ci` from `guest-sdk/js/tools/package-lock.json`,
/// integrity-checked) into `target/js-tools`; it rebuilds a component only
/// when its sources changed. Needs `node` and `npm` (Node 20): without them
/// this fails with a message saying so, it never skips.
pub fn js_example_wasm(name: &str) -> Result<PathBuf> {
    if !JS_EXAMPLES.contains(&name) {
        bail!("{name} is not a JavaScript example ({JS_EXAMPLES:?})");
    }
    let module = workspace_root()
        .join("examples")
        .join("js")
        .join(name)
        .join(format!("{}.js", name.replace('-', "_")));
    js_module_wasm(&module, name, &[])
}

/// Builds any JavaScript behavior module (a `.js` file whose default
/// export is a `defineEntity`, e.g. a test's hostile guest under
/// `tests/fixtures/js`) with `guest-sdk/js/build.mjs` to
/// `target/wasm/js/OUT_NAME.wasm` and returns that path; `args` go to
/// build.mjs (e.g. `--no-console`). See [`build_js`]: one build at a time,
/// and only when the sources (the module's directory, the SDK, the WIT)
/// changed.
pub fn js_module_wasm(module: &Path, out_name: &str, args: &[&str]) -> Result<PathBuf> {
    let out = workspace_root()
        .join("target")
        .join("wasm")
        .join("js")
        .join(format!("{out_name}.wasm"));
    build_js(module, &out, args)?;
    Ok(out)
}

/// Builds the JavaScript behavior `module` into `out` with
/// `guest-sdk/js/build.mjs` and its extra `args` (e.g. `--no-console`), one
/// build at a time per process (the first one installs the pinned tools).
pub fn build_js(module: &Path, out: &Path, args: &[&str]) -> Result<()> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let root = workspace_root();
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let status = Command::new(node)
        .arg(root.join("guest-sdk").join("js").join("build.mjs"))
        .arg(module)
        .arg("-o")
        .arg(out)
        .args(args)
        .current_dir(&root)
        .status()
        .context("running node guest-sdk/js/build.mjs (Node 20 with npm is needed)")?;
    if !status.success() {
        bail!(
            "building the JavaScript behavior {} failed (see the output above)",
            module.display()
        );
    }
    Ok(())
}

/// Starts a node on `dir` with the given `cairn.toml` text and deploys the
/// named examples, each under its own name, or under another name with
/// `"type=example"` (e.g. `"faulty-bp=faulty"`).
pub async fn start_node(dir: &Path, toml: &str, types: &[&str]) -> Result<cairn_host::node::Node> {
    let mut config = cairn_host::config::Config::parse(toml)?;
    config.node.data_dir = dir.to_path_buf();
    let node = cairn_host::node::Node::open(config).await?;
    deploy_examples(&node, types).await?;
    Ok(node)
}

/// [`start_node`] on the log journal with a given clock (e.g. a
/// `ManualClock`, to move time by hand).
pub async fn start_node_with_clock(
    dir: &Path,
    toml: &str,
    types: &[&str],
    clock: std::sync::Arc<dyn cairn_host::clock::Clock>,
) -> Result<cairn_host::node::Node> {
    let mut config = cairn_host::config::Config::parse(toml)?;
    config.node.data_dir = dir.to_path_buf();
    let store = cairn_store::LogStore::open(dir, config.node.journal_max_batch)?;
    let node = cairn_host::node::Node::with_clock(config, store.clone(), store, clock).await?;
    deploy_examples(&node, types).await?;
    Ok(node)
}

async fn deploy_examples(node: &cairn_host::node::Node, types: &[&str]) -> Result<()> {
    for spec in types {
        let (ty, example) = spec.split_once('=').unwrap_or((spec, spec));
        node.deploy(ty, example_bytes(example)?).await?;
    }
    Ok(())
}

/// Waits for the first lifecycle event matching `pred`, up to `timeout`.
pub async fn wait_for(
    rx: &mut tokio::sync::broadcast::Receiver<cairn_host::node::LifecycleEvent>,
    timeout: std::time::Duration,
    mut pred: impl FnMut(&cairn_host::node::LifecycleEvent) -> bool,
) -> Result<cairn_host::node::LifecycleEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .context("timed out waiting for a lifecycle event")??;
        if pred(&ev) {
            return Ok(ev);
        }
    }
}

/// The `cairn` binary built by this workspace (next to the test executable,
/// or `CAIRN_BIN`). `cargo test --workspace` builds it: the `cairn-cli`
/// package has integration tests, so cargo builds its binary first.
pub fn cairn_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("CAIRN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("cairn{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p cairn-cli --bin cairn` (same profile as the tests) or set CAIRN_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Builds the `cairn` binary with the profile of the running executable
/// (for programs started by `cargo run`, which cannot depend on another
/// package's binary) and returns its path. `CAIRN_BIN` skips the build.
pub fn build_cairn_bin() -> Result<PathBuf> {
    if std::env::var_os("CAIRN_BIN").is_some() {
        return cairn_bin();
    }
    let exe = std::env::current_exe().context("locating the executable")?;
    let release = exe
        .ancestors()
        .any(|p| p.file_name().is_some_and(|n| n == "release"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "cairn-cli", "--bin", "cairn"])
        .current_dir(workspace_root());
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build for cairn")?;
    if !status.success() {
        bail!("building the cairn binary failed");
    }
    cairn_bin()
}

/// A `cairn node` process on a data directory, listening on a free
/// loopback port. Killed when dropped.
pub struct NodeProc {
    /// The process.
    pub child: std::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its data directory.
    pub dir: PathBuf,
    extra: Vec<String>,
}

fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// A free UDP address on the loopback address `ip` (127.0.0.x).
pub fn free_addr(ip: [u8; 4]) -> Result<std::net::SocketAddr> {
    let s = std::net::UdpSocket::bind(std::net::SocketAddr::from((ip, 0)))?;
    Ok(s.local_addr()?)
}

impl NodeProc {
    /// Starts `cairn node --data-dir DIR --listen 127.0.0.1:PORT EXTRA...`;
    /// its log goes to `DIR/node.log`.
    pub fn start(dir: &Path, extra: &[&str]) -> Result<NodeProc> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(dir, addr, &extra)?;
        Ok(NodeProc {
            child,
            addr,
            dir: dir.to_owned(),
            extra,
        })
    }

    /// Starts `cairn node` on a chosen address (a cluster member whose
    /// seeds must be known before it starts).
    pub fn start_on(dir: &Path, addr: std::net::SocketAddr, extra: &[&str]) -> Result<NodeProc> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(dir, addr, &extra)?;
        Ok(NodeProc {
            child,
            addr,
            dir: dir.to_owned(),
            extra,
        })
    }

    fn spawn(
        dir: &Path,
        addr: std::net::SocketAddr,
        extra: &[String],
    ) -> Result<std::process::Child> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        Command::new(cairn_bin()?)
            .arg("node")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting cairn node")
    }

    /// Starts the node again on the same directory and address.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, self.addr, &self.extra)?;
        Ok(())
    }

    /// The directory of its development certificates.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// Connects a client, retrying while the node starts (up to 60 s).
    pub async fn client(&self) -> Result<cairn_client::Client> {
        self.client_within(std::time::Duration::from_secs(60)).await
    }

    /// Connects a client, retrying while the node starts (up to `wait`: a
    /// node compiles its deployed components before it listens, which for
    /// a Python component takes from seconds to minutes on a busy machine).
    pub async fn client_within(&self, wait: std::time::Duration) -> Result<cairn_client::Client> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let files = cairn_client::tls::ClientFiles::in_dir(&self.certs());
            let r = if files.ca.exists() {
                cairn_client::Client::connect(self.addr, &files, "localhost")
                    .await
                    .map_err(anyhow::Error::from)
            } else {
                Err(anyhow::anyhow!("no certificates yet"))
            };
            match r {
                Ok(c) => return Ok(c),
                Err(e) if std::time::Instant::now() > deadline => {
                    let log =
                        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
                    bail!("node did not come up: {e:#}\nnode log:\n{log}");
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    /// Runs a `cairn` client command against this node; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(cairn_bin()?)
            .args(args)
            .arg("--node")
            .arg(self.addr.to_string())
            .arg("--certs")
            .arg(self.certs())
            .output()
            .context("running cairn")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Whether the process has exited by itself (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGKILL and waits for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        self.send_term()?;
        Ok(self.child.wait()?)
    }

    /// Sends SIGTERM without waiting (see [`NodeProc::wait`]).
    pub fn send_term(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}
