//! The WebAssembly side of the host: engine, component loading and checking,
//! instance pools and guest limits.
//!
//! Owns the one wasmtime [`Engine`] of a node (with its epoch ticker), the
//! [`Linker`] with a locked-down WASI (no preopened directories, no environment,
//! no network: the socket interfaces deny every use and are linked only for
//! components that ask, see [`DENY_BY_DEFAULT`]; no stdin; clocks that show the
//! command's timestamp and seeded randomness, so guests are deterministic),
//! and [`WasmBehavior`]: a compiled
//! component plus a pool of ready instances that any entity can borrow for one
//! call. Behaviors are pure functions over bytes, so an instance holds no
//! entity's state and can serve every entity of its type; that keeps the
//! number of live instances near the number of cores instead of the number of
//! entities. An instance that traps is dropped, never reused. This module
//! never touches the journal and never panics on what a guest does.
//!
//! Submodules: `pool` decides where a call runs (inline under a short
//! budget, or on the low-priority guest pool: see [`Lane`]); `stdio`
//! replaces WASI's blocking stream and poll functions, so that guest output
//! is captured (and logged here, bounded and rate-limited) and a sleep or a
//! read of stdin fails the call instead of blocking or panicking; `sockets`
//! makes every socket creation fail with `access-denied`; `imports`
//! reads a component's imports and exports before it is compiled and says
//! which imports the host grants; `cache` keeps compiled code on disk, so a
//! restarted node does not compile its components again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod cache;
mod imports;
mod pool;
mod sockets;
mod stdio;

pub use cache::CodeSource;
pub use imports::{DENY_BY_DEFAULT_SECTION, granted, granted_to};
pub use pool::{Lane, SLOW_FOR};
pub(crate) use pool::{call, call_blocking};
use stdio::{CallIo, GuestIo};

use rand::SeedableRng;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::add_to_linker_sync;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::behavior::{
    Behavior, CommandContext, CommandError, Decision, Descriptor, Effect, FoldError, GuestFault,
};

mod bindings {
    wasmtime::component::bindgen!({
        world: "entity",
        path: "../wit",
        // Parameters borrow from the host (the entity id is not copied).
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });
}

use bindings::cairn::entity::types as wtypes;
use bindings::exports::cairn::entity::behavior as wit;

/// How often the epoch ticker advances; guest deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A call's deadline counts the CPU time its thread spends in the call (a
/// starved machine must not fail a guest that did little work), but a call
/// ends after this many times its deadline in wall time whatever its CPU
/// time says, so a looping guest on a starved machine holds its pool
/// thread a bounded time.
const WALL_CAP_FACTOR: u32 = 4;

/// An instance's start (an interpreter's initialisation: a fixed cost, paid
/// when a deploy is validated and when the pool grows) may use this many
/// call deadlines of CPU time, within ten in wall time.
const START_DEADLINES: u32 = 4;

/// Interfaces a behavior may import (without their `@version`). A std
/// Rust guest for `wasm32-wasip2` imports these WASI interfaces even when it
/// uses none; the host satisfies them with a locked-down context. WASI is
/// granted at any `0.2.x` version, the entity types at `0.1.x` (see
/// [`granted`]). Anything else is refused at deploy, before the compile.
pub const ALLOWED_IMPORTS: &[&str] = &[
    // Types-only interface of the entity world (no functions).
    "cairn:entity/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// Interfaces linked to deny-all stubs, only for a component that lists
/// them in its [`DENY_BY_DEFAULT_SECTION`] custom section (see
/// [`granted_to`]): componentize-py's CPython imports WASI sockets, which
/// a behavior must not use. The host links wasmtime-wasi's sockets with a
/// context that allows no TCP, no UDP, no name lookup and no address, so
/// every socket call fails with `access-denied` (a Python `OSError`) and
/// nothing reaches the network. Granted at any `0.2.x` version.
pub const DENY_BY_DEFAULT: &[&str] = &[
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The types-only interface behaviors import (it defines no functions).
const TYPES_IMPORT: &str = "cairn:entity/types@0.1.0";

/// The interface every behavior must export.
pub const BEHAVIOR_EXPORT: &str = "cairn:entity/behavior@0.1.0";

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are not a valid WebAssembly component (or could not be compiled).
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component imports interfaces Cairn does not grant to behaviors
    /// (every such import, in order). Found before the compile.
    #[error(
        "component imports {}, which Cairn does not grant to behaviors (it grants WASI 0.2.x cli, clocks, filesystem types, io and random, locked down, and cairn:entity/types@0.1.x; and wasi:sockets as deny-all stubs only to a component whose `cairn:deny-by-default` custom section lists them, as guest-sdk/python/build.py writes)",
        .0.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )]
    ForbiddenImports(Vec<String>),
    /// The component does not export the entity world.
    #[error(
        "component does not export `{BEHAVIOR_EXPORT}` (is it built with the Cairn guest SDK for this WIT version?): {0}"
    )]
    WrongWorld(String),
    /// `describe` or `initial-state` failed.
    #[error("component failed during describe: {0}")]
    Describe(GuestFault),
    /// The engine could not be set up.
    #[error("wasm engine error: {0}")]
    Engine(String),
}

/// Limits applied to every instance of a behavior.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLimits {
    /// Deadline of one call.
    pub call_timeout: Duration,
    /// Linear memory cap in bytes.
    pub memory_limit: usize,
    /// Idle instances kept per behavior.
    pub pool_size: usize,
    /// How long a call may run inline (on the caller's thread, e.g. a tokio
    /// worker) before it is interrupted and run again on the guest pool.
    pub inline_budget: Duration,
    /// Guest pool threads one behavior may hold at once (0: half the
    /// pool's threads, at least one).
    pub pool_per_type: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            call_timeout: Duration::from_secs(1),
            memory_limit: 64 << 20,
            pool_size: 8,
            inline_budget: Duration::from_millis(10),
            pool_per_type: 0,
        }
    }
}

/// Sets up the process's rayon pool, which wasmtime compiles components on
/// and validation replays run on, with threads at a lower scheduling
/// priority (nice 10) than the threads serving commands: a deploy on a busy
/// node then takes its CPU time from idle time first. Only the first call
/// (before any compile) has an effect.
fn background_pool() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("cairn-compile-{i}"))
            .start_handler(|_| lower_thread_priority())
            .panic_handler(|_| tracing::error!("a background task panicked"))
            .build_global();
    });
}

/// Lowers the calling thread's scheduling priority (nice 10; Linux keeps a
/// nice value per thread). Failure is harmless: the thread keeps its priority.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and changes only the calling
    // thread (who = 0); it cannot violate memory safety.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Sets the scheduling priority of every thread of the background pool:
/// nice 0 with `normal`, else nice 10. A node restoring its components at
/// start serves nothing yet, so its compiles need not yield; on a busy
/// machine a nice-10 compile took 13 times as long (docs/BENCHMARKS.md).
/// Raising a priority back needs `CAP_SYS_NICE` (root); without it the
/// threads stay at nice 10, which is harmless.
pub(crate) fn set_background_priority(normal: bool) {
    background_pool();
    let nice = if normal { 0 } else { 10 };
    rayon::broadcast(|_| {
        #[cfg(target_os = "linux")]
        // SAFETY: as in `lower_thread_priority`: plain integers, the calling
        // thread only.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
        let _ = nice;
    });
}

/// Runs `f` on the low-priority background pool and waits for its result.
pub(crate) async fn background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    background_pool();
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        // A panic must not reach rayon (it would abort the process): it
        // becomes `None` for the caller.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
        let _ = tx.send(r);
    });
    rx.await.ok().flatten()
}

/// One wasmtime engine per node, with its epoch ticker and linker.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<GuestState>,
    stop: Arc<AtomicBool>,
    /// Epoch ticks since the engine started (a coarse clock for lanes and
    /// the output rate limit).
    ticks: Arc<AtomicU64>,
    /// Where calls that exceed their inline budget run.
    pool: pool::GuestPool,
    /// Compiled code on disk, if the engine has a directory for it.
    cache: Option<cache::CodeCache>,
}

impl WasmEngine {
    /// Creates the engine and starts the epoch ticker thread. Every load
    /// compiles (no compiled-code cache).
    pub fn new() -> Result<Arc<WasmEngine>, LoadError> {
        WasmEngine::build(None)
    }

    /// [`WasmEngine::new`] with a compiled-code cache in `dir` (a node's
    /// `<data_dir>/compiled`): a component compiled once by this engine is
    /// loaded from there afterwards, also by the next process (see the
    /// `cache` module for the files and why loading them is sound).
    pub fn with_code_cache(dir: &std::path::Path) -> Result<Arc<WasmEngine>, LoadError> {
        WasmEngine::build(Some(dir.to_owned()))
    }

    fn build(cache_dir: Option<std::path::PathBuf>) -> Result<Arc<WasmEngine>, LoadError> {
        background_pool();
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        add_to_linker_sync(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        stdio::shadow_blocking_io(&mut linker, |s: &mut GuestState| GuestIo {
            table: &mut s.table,
            io: &mut s.io,
        })
        .map_err(|e| LoadError::Engine(e.to_string()))?;
        sockets::deny_socket_creation(&mut linker, |s: &mut GuestState| sockets::DenySockets {
            table: &mut s.table,
        })
        .map_err(|e| LoadError::Engine(e.to_string()))?;
        linker
            .instance(TYPES_IMPORT)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker_ticks = ticks.clone();
        std::thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                    ticker_ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2);
        let pool = pool::GuestPool::start(threads).map_err(|e| LoadError::Engine(e.to_string()))?;
        let cache = cache_dir.map(|dir| cache::CodeCache::open(dir, &engine));
        Ok(Arc::new(WasmEngine {
            engine,
            linker,
            stop,
            ticks,
            pool,
            cache,
        }))
    }

    /// Removes the cached compiled code of components `keep` rejects;
    /// returns how many entries were removed (0 without a cache).
    pub fn prune_code_cache(&self, keep: &dyn Fn(&str) -> bool) -> usize {
        self.cache.as_ref().map_or(0, |c| c.prune(keep))
    }

    /// Compiles a component, or loads its compiled code from the cache.
    fn compile(&self, bytes: &[u8]) -> Result<(Component, CodeSource), LoadError> {
        let hash = self
            .cache
            .as_ref()
            .map(|_| crate::registry::sha256_hex(bytes));
        if let (Some(cache), Some(hash)) = (&self.cache, &hash)
            && let Some(c) = cache.load(&self.engine, hash)
        {
            return Ok((c, CodeSource::Cache));
        }
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        if let (Some(cache), Some(hash)) = (&self.cache, &hash) {
            tracing::info!(
                component = %hash,
                bytes = bytes.len(),
                ms = started.elapsed().as_millis() as u64,
                "component compiled"
            );
            cache.store(hash, &component);
        }
        Ok((component, CodeSource::Compiled))
    }

    /// Compiles and checks a component, then asks it to describe itself.
    pub fn load(
        self: &Arc<Self>,
        bytes: &[u8],
        limits: GuestLimits,
    ) -> Result<WasmBehavior, LoadError> {
        if !wasmparser_is_component(bytes) {
            return Err(LoadError::Compile(
                "the file is not a WebAssembly component (wrong magic or version; core modules are not accepted)".into(),
            ));
        }
        // Imports and exports are checked before the compile (which takes
        // seconds for a component carrying an interpreter).
        let surface = imports::surface(bytes)
            .map_err(|e| LoadError::Compile(format!("cannot read the component: {e}")))?;
        let refused = imports::refused(&surface);
        if !refused.is_empty() {
            return Err(LoadError::ForbiddenImports(refused));
        }
        if !surface.exports.iter().any(|n| n == BEHAVIOR_EXPORT) {
            return Err(LoadError::WrongWorld(format!(
                "it exports {:?}",
                surface.exports
            )));
        }
        let (component, code_source) = self.compile(bytes)?;
        // The compiled component's own view, in case the top-level read
        // above and wasmtime ever disagree.
        let ty = component.component_type();
        let refused: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n)
            .filter(|n| !granted_to(n, &surface.deny_by_default))
            .map(str::to_owned)
            .collect();
        if !refused.is_empty() {
            return Err(LoadError::ForbiddenImports(refused));
        }
        if !ty.exports(&self.engine).any(|(n, _)| n == BEHAVIOR_EXPORT) {
            let found: Vec<String> = ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_owned())
                .collect();
            return Err(LoadError::WrongWorld(format!("it exports {found:?}")));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre =
            bindings::EntityPre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let per_type = match limits.pool_per_type {
            0 => (self.pool.threads() / 2).max(1),
            n => n,
        };
        let mut behavior = WasmBehavior {
            engine: self.clone(),
            pre,
            pool: Mutex::new(Vec::new()),
            lane: self
                .pool
                .lane(self.ticks.clone(), limits.inline_budget, per_type),
            output_log: OutputLog::default(),
            limits,
            code_source,
            peak_memory: Arc::new(AtomicU64::new(0)),
            descriptor: Descriptor {
                name: String::new(),
                version: String::new(),
                state_schema: 0,
            },
        };
        let d = behavior
            .with_instance(0, "", |b, store| b.call_describe(store))
            .map_err(LoadError::Describe)?;
        behavior.descriptor = Descriptor {
            name: d.name,
            version: d.version,
            state_schema: d.state_schema,
        };
        Ok(behavior)
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Checks the component preamble: `\0asm` then version 0x0d and layer 1.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Per-store data: the locked-down WASI context, the memory limiter and
/// the I/O record of the current call.
struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    io: CallIo,
    budget: CallBudget,
}

/// The deadline of the call in progress, read when the epoch deadline
/// passes (see [`CallBudget::on_deadline`]).
#[derive(Clone, Copy)]
struct CallBudget {
    /// The call runs inline under the inline budget: its deadline is wall
    /// time, and passing it moves the call to the guest pool.
    inline: bool,
    /// The thread's CPU time when the call started.
    cpu_start: Duration,
    /// CPU time the call may use.
    cpu_limit: Duration,
    /// When the call ends whatever CPU time it used.
    wall_end: Instant,
}

impl CallBudget {
    fn inline() -> Self {
        CallBudget {
            inline: true,
            cpu_start: Duration::ZERO,
            cpu_limit: Duration::ZERO,
            wall_end: Instant::now(),
        }
    }

    fn full(limit: Duration) -> Self {
        Self::within(limit, limit.saturating_mul(WALL_CAP_FACTOR))
    }

    /// `cpu` of CPU time, ending after `wall` whatever it used.
    fn within(cpu: Duration, wall: Duration) -> Self {
        CallBudget {
            inline: false,
            cpu_start: pool::thread_time(),
            cpu_limit: cpu,
            wall_end: Instant::now() + wall,
        }
    }

    /// The epoch deadline passed: interrupt the call if it used its CPU
    /// time or its wall-time cap, else run on for the CPU time it has left
    /// (its thread was preempted, not busy in the guest).
    fn on_deadline(&self) -> UpdateDeadline {
        if self.inline || Instant::now() >= self.wall_end {
            return UpdateDeadline::Interrupt;
        }
        let used = pool::thread_time().saturating_sub(self.cpu_start);
        match self.cpu_limit.checked_sub(used) {
            Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// `d` in epoch ticks, rounded up, at least one.
fn ticks(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    (d.as_micros().div_ceil(tick) as u64).max(1)
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it refused, so the trap that
/// follows can be reported as "memory limit" rather than a bare trap.
struct Limiter {
    memory_limit: usize,
    refused: bool,
    /// The largest linear memory any instance of the behavior was granted
    /// (shared by its instances; written only when a memory grows).
    peak: Arc<AtomicU64>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.refused = true;
            return Ok(false);
        }
        self.peak.fetch_max(desired as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The guest's wall clock: the timestamp of the command being decided.
struct CommandClock(Arc<AtomicU64>);

impl HostWallClock for CommandClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl HostMonotonicClock for CommandClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed).saturating_mul(1_000_000)
    }
}

/// A ready instance with its store.
struct Slot {
    store: Store<GuestState>,
    entity: bindings::Entity,
    clock: Arc<AtomicU64>,
}

/// A compiled behavior component with a pool of instances.
pub struct WasmBehavior {
    engine: Arc<WasmEngine>,
    pre: bindings::EntityPre<GuestState>,
    pool: Mutex<Vec<Slot>>,
    lane: Lane,
    output_log: OutputLog,
    limits: GuestLimits,
    code_source: CodeSource,
    peak_memory: Arc<AtomicU64>,
    descriptor: Descriptor,
}

/// Events a fold may apply per `call_timeout` of deadline: a fold of `n`
/// events gets `ceil(n / FOLD_EVENTS_PER_TIMEOUT)` times `call_timeout`.
/// Recovery and validation fold up to 4,096 events per call; a Python guest
/// applies one in 10–70 µs (up to 290 ms per call on a loaded machine, and
/// several times that on the nice-10 guest pool beside CPU burners), where a
/// Rust guest takes 13 ns. One `call_timeout` per 1,024 events keeps the
/// deadline a per-event bound (1 ms per event with the default 1 s) and
/// still stops a looping fold (a 4,096-event chunk after 4 s by default).
pub const FOLD_EVENTS_PER_TIMEOUT: usize = 1024;

/// The deadline multiplier of a fold of `packed` (length-prefixed events).
fn fold_deadline_scale(packed: &[u8]) -> u32 {
    let mut events = 0usize;
    let mut at = 0usize;
    while let Some(len) = packed.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        events += 1;
        at = at.saturating_add(4).saturating_add(len);
    }
    u32::try_from(events.div_ceil(FOLD_EVENTS_PER_TIMEOUT))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Guest output log lines one behavior may write per window.
const OUTPUT_LINES_PER_WINDOW: u64 = 20;
/// The rate-limit window, in epoch ticks (1 s).
const OUTPUT_WINDOW_TICKS: u64 = 200;

/// The rate limit of one behavior's output log lines: at most
/// [`OUTPUT_LINES_PER_WINDOW`] per window; the calls whose output was not
/// logged are counted and reported with the next line.
#[derive(Default)]
struct OutputLog {
    window: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

impl WasmBehavior {
    /// Whether this behavior's code was compiled or loaded from the cache.
    pub fn code_source(&self) -> CodeSource {
        self.code_source
    }

    /// The limits its instances run under.
    pub fn limits(&self) -> GuestLimits {
        self.limits
    }

    /// The largest linear memory, in bytes, that any of its instances has
    /// had so far (a single memory; what `memory_limit` is compared with).
    /// For sizing `memory_limit`: the Python bank account's instances
    /// reach 12.9 MiB (docs/BENCHMARKS.md).
    pub fn peak_memory(&self) -> u64 {
        self.peak_memory.load(Ordering::Relaxed)
    }

    fn new_slot(&self) -> Result<Slot, GuestFault> {
        let clock = Arc::new(AtomicU64::new(0));
        let wasi = WasiCtxBuilder::new()
            .wall_clock(CommandClock(clock.clone()))
            .monotonic_clock(CommandClock(clock.clone()))
            .secure_random(rand::rngs::StdRng::seed_from_u64(0x0c41_2e00))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(0x0c41_2e01))
            .insecure_random_seed(0x0c41_2e02)
            // Sockets (linked only for components that ask, see
            // DENY_BY_DEFAULT): every use is denied. The address check's
            // default already refuses every address; it is set anyway, so
            // that no default can change that.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(std::future::ready(false)))
            .build();
        let mut store = Store::new(
            &self.engine.engine,
            GuestState {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter {
                    memory_limit: self.limits.memory_limit,
                    refused: false,
                    peak: self.peak_memory.clone(),
                },
                io: CallIo::default(),
                budget: CallBudget::within(
                    self.limits.call_timeout.saturating_mul(START_DEADLINES),
                    self.limits.call_timeout.saturating_mul(10),
                ),
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| Ok(ctx.data().budget.on_deadline()));
        store.set_epoch_deadline(self.deadline_ticks(START_DEADLINES));
        let entity = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| GuestFault::Instantiate(format!("{e:#}")))?;
        Ok(Slot {
            store,
            entity,
            clock,
        })
    }

    /// `scale` times `call_timeout`.
    fn deadline(&self, scale: u32) -> Duration {
        self.limits.call_timeout.saturating_mul(scale.max(1))
    }

    /// `scale` times `call_timeout`, in epoch ticks (one more: the tick in
    /// progress counts for less than a tick).
    fn deadline_ticks(&self, scale: u32) -> u64 {
        ticks(self.deadline(scale)) + 1
    }

    /// Runs `f` on a pooled instance; a trap drops the instance. The call's
    /// deadline is the inline budget when it runs inline (see [`Lane`]),
    /// else `call_timeout`. `entity_id` ("" if none) labels its output.
    fn with_instance<T>(
        &self,
        timestamp_ms: u64,
        entity_id: &str,
        f: impl FnOnce(&wit::Guest, &mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestFault> {
        self.with_instance_for(1, timestamp_ms, entity_id, f)
    }

    /// [`WasmBehavior::with_instance`] with a deadline of `scale` times
    /// `call_timeout` off the inline path (a fold of many events).
    fn with_instance_for<T>(
        &self,
        scale: u32,
        timestamp_ms: u64,
        entity_id: &str,
        f: impl FnOnce(&wit::Guest, &mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestFault> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut slot = match pooled {
            Some(s) => s,
            None => self.new_slot()?,
        };
        let inline = pool::inline_ticks();
        slot.clock.store(timestamp_ms, Ordering::Relaxed);
        slot.store
            .set_epoch_deadline(inline.unwrap_or_else(|| self.deadline_ticks(scale)));
        slot.store.data_mut().budget = match inline {
            Some(_) => CallBudget::inline(),
            None => CallBudget::full(self.deadline(scale)),
        };
        slot.store.data_mut().io.reset();
        // Blocking WASI calls are replaced (`stdio`) and never panic; this
        // is the last line of defence against a panic in wasmtime-wasi.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(slot.entity.cairn_entity_behavior(), &mut slot.store)
        }));
        let interrupted = inline.is_some()
            && matches!(&result, Ok(Err(e)) if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)));
        if interrupted {
            // Run again elsewhere with the full deadline: its output then.
            pool::note_interrupted();
        } else {
            self.log_output(entity_id, &mut slot.store.data_mut().io);
        }
        let result = match result {
            Ok(r) => r,
            Err(_) if slot.store.data().limiter.refused => {
                return Err(GuestFault::MemoryLimit(self.limits.memory_limit));
            }
            Err(_) => {
                return Err(GuestFault::Trap(
                    "the guest call panicked inside the host's WASI implementation".into(),
                ));
            }
        };
        match result {
            Ok(v) => {
                if let Ok(mut p) = self.pool.lock()
                    && p.len() < self.limits.pool_size
                {
                    p.push(slot);
                }
                Ok(v)
            }
            Err(e) => Err(self.classify(&slot, e, scale)),
        }
    }

    /// Logs what the guest wrote to stdout/stderr during a call (at most
    /// `stdio::OUTPUT_CAP` bytes from its start and `stdio::TAIL_CAP` from
    /// its end), within the behavior's rate limit.
    fn log_output(&self, entity_id: &str, io: &mut CallIo) {
        if io.is_empty() {
            return;
        }
        let log = &self.output_log;
        let window = self.engine.ticks.load(Ordering::Relaxed) / OUTPUT_WINDOW_TICKS;
        if log.window.swap(window, Ordering::Relaxed) != window {
            log.lines.store(0, Ordering::Relaxed);
        }
        if log.lines.fetch_add(1, Ordering::Relaxed) >= OUTPUT_LINES_PER_WINDOW {
            log.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = log.suppressed.swap(0, Ordering::Relaxed);
        let text = io.text();
        tracing::info!(
            target: "cairn::guest",
            entity_type = %self.descriptor.name,
            entity_id,
            truncated_bytes = io.dropped,
            calls_not_logged = suppressed,
            output = %text,
            "guest output"
        );
    }

    fn classify(&self, slot: &Slot, e: wasmtime::Error, scale: u32) -> GuestFault {
        if slot.store.data().limiter.refused {
            return GuestFault::MemoryLimit(self.limits.memory_limit);
        }
        if let Some(what) = slot.store.data().io.blocked {
            return GuestFault::Trap(stdio::blocking_message(what));
        }
        let exit = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|x| x.0);
        let what = match (e.downcast_ref::<wasmtime::Trap>(), exit) {
            (Some(wasmtime::Trap::Interrupt), _) => {
                return GuestFault::Deadline(self.deadline(scale));
            }
            (Some(wasmtime::Trap::UnreachableCodeReached), _) => {
                "unreachable code reached (a panic or abort in the guest)".to_owned()
            }
            // `wasi:cli/exit` (the Python SDK exits after printing an
            // uncaught exception's traceback).
            (None, Some(code)) => format!("the guest exited with status {code} during the call"),
            _ => format!("{e:#}"),
        };
        // What the guest wrote last says why, when it says anything: a
        // Python exception's last traceback line, a JavaScript exception
        // (componentize-js with stdio), a Rust panic's message and location
        // (the Rust SDK's panic hook writes them to stderr as one line).
        // The whole output is in the node's log (`log_output`).
        match slot.store.data().io.last_line() {
            Some(line) => GuestFault::Trap(format!("{what}; the guest's last output: {line}")),
            None => GuestFault::Trap(what),
        }
    }
}

impl Behavior for WasmBehavior {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn lane(&self) -> Option<&Lane> {
        Some(&self.lane)
    }

    fn initial_state(&self) -> Result<Vec<u8>, GuestFault> {
        self.with_instance(0, "", |b, s| b.call_initial_state(s))
    }

    fn decide(
        &self,
        ctx: &CommandContext<'_>,
        state: &[u8],
        command: &[u8],
    ) -> Result<Result<Decision, CommandError>, GuestFault> {
        let wctx = wit::Context {
            entity_id: ctx.entity_id,
            next_seq: ctx.next_seq,
            timestamp_ms: ctx.timestamp_ms,
        };
        let out = self.with_instance(ctx.timestamp_ms, ctx.entity_id, |b, s| {
            b.call_decide(s, wctx, state, command)
        })?;
        Ok(match out {
            Ok(d) => Ok(Decision {
                events: d.events,
                reply: d.reply,
                effects: d
                    .effects
                    .into_iter()
                    .map(|e| match e {
                        wtypes::Effect::Send(s) => Effect::Send {
                            entity_type: s.entity_type,
                            entity_id: s.entity_id,
                            command: s.command,
                        },
                        wtypes::Effect::Schedule(s) => Effect::Schedule {
                            delay_ms: s.delay_ms,
                            command: s.command,
                        },
                    })
                    .collect(),
                state: d.state,
            }),
            Err(wit::CommandError::Rejected(r)) => Err(CommandError::Rejected(r)),
            Err(wit::CommandError::Malformed(r)) => Err(CommandError::Malformed(r)),
            Err(wit::CommandError::BadState(r)) => Err(CommandError::BadState(r)),
        })
    }

    fn fold(&self, state: &[u8], packed: &[u8]) -> Result<Result<Vec<u8>, FoldError>, GuestFault> {
        let scale = fold_deadline_scale(packed);
        let out = self.with_instance_for(scale, 0, "", |b, s| b.call_fold(s, state, packed))?;
        Ok(out.map_err(|e| FoldError {
            index: e.index,
            message: e.message,
        }))
    }

    fn command_from_json(&self, json: &str) -> Result<Result<Vec<u8>, String>, GuestFault> {
        self.with_instance(0, "", |b, s| b.call_command_from_json(s, json))
    }

    fn event_to_json(&self, event: &[u8]) -> Result<Result<String, String>, GuestFault> {
        self.with_instance(0, "", |b, s| b.call_event_to_json(s, event))
    }

    fn state_to_json(&self, state: &[u8]) -> Result<Result<String, String>, GuestFault> {
        self.with_instance(0, "", |b, s| b.call_state_to_json(s, state))
    }

    fn reply_to_json(&self, reply: &[u8]) -> Result<Result<String, String>, GuestFault> {
        self.with_instance(0, "", |b, s| b.call_reply_to_json(s, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        ComponentImportSection, ComponentTypeRef, ComponentTypeSection, ComponentValType,
        InstanceType, PrimitiveValType,
    };

    #[test]
    fn a_deadline_counts_cpu_time_within_a_wall_cap() {
        let limit = Duration::from_millis(40);
        let budget = CallBudget::full(limit);
        // Asleep (as if preempted) past the deadline: the call runs on.
        std::thread::sleep(limit + Duration::from_millis(20));
        assert!(matches!(budget.on_deadline(), UpdateDeadline::Continue(t) if t >= 1));
        // Busy past its CPU time: interrupted.
        while pool::thread_time().saturating_sub(budget.cpu_start) <= limit {
            std::hint::spin_loop();
        }
        assert!(matches!(budget.on_deadline(), UpdateDeadline::Interrupt));
        // Past the wall-time cap: interrupted whatever its CPU time.
        let capped = CallBudget {
            wall_end: Instant::now(),
            ..CallBudget::full(Duration::from_secs(60))
        };
        assert!(matches!(capped.on_deadline(), UpdateDeadline::Interrupt));
        // Inline, the deadline is the budget's, in wall time.
        assert!(matches!(
            CallBudget::inline().on_deadline(),
            UpdateDeadline::Interrupt
        ));
    }

    /// A component importing each name as an instance with one function,
    /// `get-random-u64: func() -> u64` (the shape of `wasi:random/random`).
    fn component_importing(names: &[&str]) -> Vec<u8> {
        let mut inst = InstanceType::new();
        inst.ty()
            .function()
            .params(std::iter::empty::<(&str, ComponentValType)>())
            .result(Some(ComponentValType::Primitive(PrimitiveValType::U64)));
        inst.export("get-random-u64", ComponentTypeRef::Func(0));
        let mut types = ComponentTypeSection::new();
        types.instance(&inst);
        let mut imports = ComponentImportSection::new();
        for name in names {
            imports.import(*name, ComponentTypeRef::Instance(0));
        }
        let mut c = wasm_encoder::Component::new();
        c.section(&types);
        c.section(&imports);
        c.finish()
    }

    #[test]
    fn every_import_not_granted_is_named_before_the_compile() {
        let engine = WasmEngine::new().expect("engine");
        let bytes = component_importing(&[
            "wasi:random/random@0.2.3",
            "wasi:sockets/tcp@0.2.9",
            "wasi:cli/stdout@0.3.0",
            "wasi:http/outgoing-handler@0.2.0",
        ]);
        let Err(e) = engine.load(&bytes, GuestLimits::default()) else {
            panic!("loaded");
        };
        assert!(
            matches!(&e, LoadError::ForbiddenImports(n) if n == &[
                "wasi:sockets/tcp@0.2.9",
                "wasi:cli/stdout@0.3.0",
                "wasi:http/outgoing-handler@0.2.0",
            ]),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("`wasi:sockets/tcp@0.2.9`, `wasi:cli/stdout@0.3.0`"),
            "{msg}"
        );
        assert!(!msg.contains("random@0.2.3"), "{msg}");
        // A component with granted imports only passes the import check
        // (this one then lacks the behavior export).
        let bytes = component_importing(&["wasi:random/random@0.2.3"]);
        let Err(e) = engine.load(&bytes, GuestLimits::default()) else {
            panic!("loaded");
        };
        assert!(matches!(e, LoadError::WrongWorld(_)), "{e:?}");
    }

    #[test]
    fn a_fold_gets_one_call_timeout_per_1024_events() {
        let pack = |n: usize| {
            let mut p = Vec::new();
            for _ in 0..n {
                p.extend_from_slice(&3u32.to_le_bytes());
                p.extend_from_slice(b"abc");
            }
            p
        };
        assert_eq!(fold_deadline_scale(&pack(0)), 1);
        assert_eq!(fold_deadline_scale(&pack(1)), 1);
        assert_eq!(fold_deadline_scale(&pack(1024)), 1);
        assert_eq!(fold_deadline_scale(&pack(1025)), 2);
        assert_eq!(fold_deadline_scale(&pack(4096)), 4);
        // Garbage lengths end the count, never panic.
        assert_eq!(fold_deadline_scale(&[0xff; 11]), 1);
    }

    #[test]
    fn wasi_0_2_of_another_patch_than_the_hosts_links() {
        let engine = WasmEngine::new().expect("engine");
        for version in ["0.2.0", "0.2.3", "0.2.9", "0.2.12", "0.2.99"] {
            let name = format!("wasi:random/random@{version}");
            assert!(granted(&name));
            let bytes = component_importing(&[&name]);
            let component = Component::new(&engine.engine, &bytes).expect("compiles");
            engine
                .linker
                .instantiate_pre(&component)
                .unwrap_or_else(|e| panic!("{name} does not link: {e:#}"));
        }
    }
}
