//! Keeps a CPU awake after requests, so that wake-ups reach a running CPU
//! instead of a halted one. Off by default: a latency knob for dedicated
//! machines (`node.keep_awake_us`), since it spins a CPU.
//!
//! Owns one thread that spins for a short window after the last sign of
//! activity (a request read or answered), then parks until the next one. In a
//! virtual machine, waking a thread on a halted virtual CPU is slow (the
//! hypervisor must schedule that CPU again), and a sequential client pays it
//! on the way in and on the way out of every command (docs/BENCHMARKS.md).
//!
//! The thread runs under `SCHED_IDLE` on Linux (elsewhere it does not spin):
//! any other runnable thread takes its CPU at once. It never runs while the
//! node is quiet, and it sleeps while the node is busy (more than
//! [`BUSY_TOUCHES_PER_MS`] signs of activity per millisecond): then the
//! node's threads rarely sleep and gain nothing from it, and spinning through
//! such load costs throughput (docs/BENCHMARKS.md). It must never run at
//! normal priority.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Handle to the spinning thread; the thread stops when it is dropped.
pub struct KeepAwake {
    inner: Arc<Inner>,
    thread: Thread,
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

struct Inner {
    /// Time of the last activity, in nanoseconds since `start`; 0 is never.
    last: AtomicU64,
    /// Signs of activity so far.
    touches: AtomicU64,
    /// The thread is parked (or about to park) and needs an unpark.
    parked: AtomicBool,
    /// The handle is gone.
    stop: AtomicBool,
    /// Rounds of spinning so far (for tests).
    spins: AtomicU64,
    start: Instant,
    window: Duration,
}

impl KeepAwake {
    /// Starts the thread; `None` if `window` is zero or the thread cannot be spawned.
    pub fn start(window: Duration) -> Option<KeepAwake> {
        if window.is_zero() {
            return None;
        }
        let inner = Arc::new(Inner {
            last: AtomicU64::new(0),
            touches: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            spins: AtomicU64::new(0),
            start: Instant::now(),
            window,
        });
        let state = inner.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-awake".into())
            .spawn(move || run(&state))
            .ok()?;
        Some(KeepAwake {
            thread: handle.thread().clone(),
            inner,
        })
    }

    /// Notes activity: the thread spins for the next `window`.
    pub fn touch(&self) {
        let KeepAwake { inner, thread } = self;
        inner.touches.fetch_add(1, Ordering::Relaxed);
        inner.last.store(nanos_since(inner.start), Ordering::SeqCst);
        // Only the first touch after the thread parked pays for the wake-up.
        if inner.parked.load(Ordering::SeqCst) && inner.parked.swap(false, Ordering::SeqCst) {
            thread.unpark();
        }
    }
}

/// Above this many touches per millisecond (about 25,000 requests/s) the
/// node counts as busy and the thread sleeps instead of spinning.
pub const BUSY_TOUCHES_PER_MS: u64 = 50;

const MS: u64 = 1_000_000;

/// Nanoseconds since `start`, at least 1.
fn nanos_since(start: Instant) -> u64 {
    (start.elapsed().as_nanos() as u64).max(1)
}

/// Whether the last activity is less than `window` nanoseconds old.
fn recently_touched(inner: &Inner, window: u64) -> bool {
    let last = inner.last.load(Ordering::SeqCst);
    last != 0 && nanos_since(inner.start).saturating_sub(last) < window
}

fn run(inner: &Inner) {
    if !lower_priority() {
        // Spinning at normal priority would take CPU from real work.
        tracing::info!("keep-awake thread: SCHED_IDLE is not available; not spinning");
        return;
    }
    let window = inner.window.as_nanos() as u64;
    // Start of the current millisecond of the rate count, and the touches then.
    let mut mark = (
        nanos_since(inner.start),
        inner.touches.load(Ordering::Relaxed),
    );
    loop {
        if inner.stop.load(Ordering::Relaxed) {
            return;
        }
        let now = nanos_since(inner.start);
        if now - mark.0 >= MS {
            let touches = inner.touches.load(Ordering::Relaxed);
            let per_ms = (touches - mark.1) * MS / (now - mark.0);
            mark = (now, touches);
            if per_ms > BUSY_TOUCHES_PER_MS {
                // Busy: sleep a millisecond and count again. `parked` stays
                // false, so touches do not pay for waking this thread.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        if recently_touched(inner, window) {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            inner.spins.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        inner.parked.store(true, Ordering::SeqCst);
        // A touch between the check above and the store: it saw `parked`
        // false and did not unpark, so look again before parking.
        if recently_touched(inner, window) {
            inner.parked.store(false, Ordering::SeqCst);
            continue;
        }
        std::thread::park();
        mark = (
            nanos_since(inner.start),
            inner.touches.load(Ordering::Relaxed),
        );
    }
}

/// Puts the calling thread under `SCHED_IDLE`, below every normal thread;
/// false where that is not possible (or not Linux).
fn lower_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a system call on the calling thread (pid 0) with a valid,
        // initialised parameter.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 10 s for `f`.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn spins_after_a_touch_then_parks() {
        assert!(KeepAwake::start(Duration::ZERO).is_none());
        let awake = KeepAwake::start(Duration::from_millis(5)).expect("thread starts");
        let inner = awake.inner.clone();
        for _ in 0..3 {
            // Quiet: parked, not spinning.
            assert!(eventually(|| inner.parked.load(Ordering::SeqCst)));
            let before = inner.spins.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                inner.spins.load(Ordering::Relaxed),
                before,
                "spun while quiet"
            );
            // A touch wakes it: it spins. (Touched again while it has not:
            // on a busy machine its spin window may pass before it runs.)
            assert!(eventually(|| {
                awake.touch();
                inner.spins.load(Ordering::Relaxed) > before
            }));
        }
        // Many touches a millisecond: the node is busy and the thread sleeps.
        let t = Instant::now();
        let mut quiet = 0;
        while t.elapsed() < Duration::from_millis(300) {
            let before = inner.spins.load(Ordering::Relaxed);
            for _ in 0..200 {
                awake.touch();
            }
            std::thread::sleep(Duration::from_millis(1));
            if inner.spins.load(Ordering::Relaxed) == before {
                quiet += 1;
            }
        }
        assert!(quiet > 50, "spun through a busy node ({quiet} quiet ms)");
        // The handle gone, the thread ends (it holds the other reference).
        drop(awake);
        assert!(eventually(|| Arc::strong_count(&inner) == 1));
    }
}
