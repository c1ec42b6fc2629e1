//! Where guest calls run: inline on the caller's thread under a short
//! budget, or on the guest pool with the full deadline.
//!
//! A guest call on a tokio worker holds that worker until it returns; with
//! one worker (a 2-core node), a guest looping until its deadline would stall
//! every other entity. Behaviors are pure functions over bytes (no I/O,
//! clocks and randomness fixed by the host), so a call can be interrupted
//! and run again from the same inputs with the same result. Hence:
//!
//! 1. A call runs inline under the *inline budget* (10 ms, through the epoch
//!    deadline): the fast path costs a thread-local write and two atomic
//!    loads, no thread hop.
//! 2. A call that exceeds the budget is interrupted (its instance dropped,
//!    its captured output discarded) and run again on the [`GuestPool`]:
//!    plain std threads at nice 10, as many as the cores (at least 2), with
//!    the full `call_timeout`. The caller awaits the result.
//! 3. Its [`Lane`] (one per behavior) is marked *slow* for [`SLOW_FOR`]: the
//!    behavior's next calls go straight to the pool, so a looping type pays
//!    the lost inline budget once a second, not on every call. Pool calls
//!    are judged by the CPU time they use: one that uses the budget renews
//!    the flag; a short re-run of an interrupted call clears it (the thread
//!    was preempted on a busy machine, the guest was not slow).
//! 4. A lane holds at most `pool_per_type` pool threads at once (a FIFO
//!    semaphore, acquired before the job is queued), so one type cannot
//!    occupy every pool thread, and the pool's queue is bounded by the
//!    number of lanes times that cap. What throttles a type whose guests
//!    keep hitting the deadline is supervision (each deadline is a restart).
//!
//! The JSON codecs are called from synchronous node methods; their slow
//! calls run in `tokio::task::block_in_place` instead (see [`call_blocking`]).
//!
//! Nothing here knows about entities; it never panics on what a guest does.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::behavior::{Behavior, GuestFault};

use super::{EPOCH_TICK, lower_thread_priority};

/// How long a lane stays slow after a call exceeded the inline budget.
pub const SLOW_FOR: Duration = Duration::from_secs(1);

/// A job for the pool.
type Job = Box<dyn FnOnce() + Send>;

/// A guest call to run on the pool (built only when a call leaves the fast
/// path, so the fast path copies nothing).
pub(crate) type PoolCall<T> = Box<dyn FnOnce(&dyn Behavior) -> Result<T, GuestFault> + Send>;

thread_local! {
    /// Set while a call runs inline: its deadline in epoch ticks.
    static INLINE_TICKS: Cell<Option<u64>> = const { Cell::new(None) };
    /// Set when an inline call ran out of its budget.
    static INTERRUPTED: Cell<bool> = const { Cell::new(false) };
}

/// The deadline (in epoch ticks) of calls made inline on this thread, if
/// the current call runs inline.
pub(super) fn inline_ticks() -> Option<u64> {
    INLINE_TICKS.get()
}

/// Notes that the inline call on this thread ran out of its budget.
pub(super) fn note_interrupted() {
    INTERRUPTED.set(true);
}

/// Runs `f` inline with calls limited to `ticks`; `None` if it was
/// interrupted by that budget.
fn run_inline<T>(ticks: u64, f: impl FnOnce() -> T) -> Option<T> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INLINE_TICKS.set(None);
        }
    }
    INTERRUPTED.set(false);
    INLINE_TICKS.set(Some(ticks));
    let reset = Reset;
    let r = f();
    drop(reset);
    if INTERRUPTED.replace(false) {
        None
    } else {
        Some(r)
    }
}

/// The node's guest threads: plain std threads at a lower priority, fed by
/// a channel. They end when the engine and every behavior are gone.
pub(crate) struct GuestPool {
    tx: mpsc::Sender<Job>,
    threads: usize,
}

impl GuestPool {
    /// Starts `threads` guest threads.
    pub(crate) fn start(threads: usize) -> std::io::Result<GuestPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("cairn-guest-{i}"))
                .spawn(move || {
                    lower_thread_priority();
                    loop {
                        // One thread waits in `recv`, the others on the lock.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(GuestPool { tx, threads })
    }

    /// The number of guest threads.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// A lane for one behavior.
    pub(crate) fn lane(
        &self,
        ticks: Arc<AtomicU64>,
        inline_budget: Duration,
        per_type: usize,
    ) -> Lane {
        let tick = EPOCH_TICK.as_micros().max(1);
        Lane {
            tx: self.tx.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(per_type.max(1))),
            ticks,
            slow_until: AtomicU64::new(0),
            inline_ticks: (inline_budget.as_micros().div_ceil(tick) as u64).max(1) + 1,
            inline_budget,
            slow_ticks: (SLOW_FOR.as_micros().div_ceil(tick)) as u64,
        }
    }
}

/// One behavior's way onto the guest pool: its slow flag and its share of
/// the pool's threads.
pub struct Lane {
    tx: mpsc::Sender<Job>,
    permits: Arc<tokio::sync::Semaphore>,
    /// The engine's epoch count (a coarse clock: one tick per 5 ms).
    ticks: Arc<AtomicU64>,
    /// Epoch tick until which the behavior's calls go straight to the pool.
    slow_until: AtomicU64,
    inline_ticks: u64,
    inline_budget: Duration,
    slow_ticks: u64,
}

impl Lane {
    /// Whether calls currently skip the inline attempt.
    pub fn is_slow(&self) -> bool {
        self.ticks.load(Ordering::Relaxed) < self.slow_until.load(Ordering::Relaxed)
    }

    fn mark_slow(&self) {
        let until = self.ticks.load(Ordering::Relaxed) + self.slow_ticks;
        self.slow_until.fetch_max(until, Ordering::Relaxed);
    }

    fn clear_slow(&self) {
        self.slow_until.store(0, Ordering::Relaxed);
    }

    /// Runs `f` inline under the budget, unless the lane is slow.
    fn try_inline<T>(&self, f: impl FnOnce() -> T) -> Inline<T> {
        if self.is_slow() {
            return Inline::Skipped;
        }
        match run_inline(self.inline_ticks, f) {
            Some(r) => Inline::Done(r),
            None => {
                self.mark_slow();
                Inline::Interrupted
            }
        }
    }

    /// Judges a call that ran with the full deadline by the CPU time it
    /// used, not its wall time (a thread of a busy machine can be
    /// preempted past the budget in the middle of a 5 µs call): one that
    /// used the budget keeps the lane slow; a short re-run of an
    /// interrupted call shows the interruption was the machine's doing and
    /// clears the flag it set.
    fn judge(&self, cpu: Duration, after_interrupt: bool) {
        if cpu >= self.inline_budget {
            self.mark_slow();
        } else if after_interrupt {
            self.clear_slow();
        }
    }
}

/// The outcome of an inline attempt.
enum Inline<T> {
    /// The call ran within the budget.
    Done(T),
    /// The call overran the budget and was interrupted (the lane is now slow).
    Interrupted,
    /// The lane is slow: no attempt was made.
    Skipped,
}

/// CPU time used by the calling thread so far (wall time elsewhere than Linux).
pub(crate) fn thread_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own; it has no
        // other effect.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// Runs a guest call where a long one cannot stall the async runtime:
/// `inline` on the caller's thread under the inline budget, else the call
/// built by `pooled` on the guest pool, awaited. Behaviors without a
/// [`Lane`] (native ones) run `inline` with no budget.
pub(crate) async fn call<T: Send + 'static>(
    behavior: &Arc<dyn Behavior>,
    inline: impl FnOnce(&dyn Behavior) -> Result<T, GuestFault> + Send,
    pooled: impl FnOnce() -> PoolCall<T> + Send,
) -> Result<T, GuestFault> {
    let Some(lane) = behavior.lane() else {
        return inline(&**behavior);
    };
    let after_interrupt = match lane.try_inline(|| inline(&**behavior)) {
        Inline::Done(r) => return r,
        Inline::Interrupted => true,
        Inline::Skipped => false,
    };
    let job = pooled();
    let permit = lane
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| GuestFault::Trap("the guest pool is closed".into()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let b = behavior.clone();
    let sent = lane.tx.send(Box::new(move || {
        let _permit = permit;
        let start = thread_time();
        // `with_instance` catches what a guest can cause; this keeps a host
        // bug from taking a pool thread with it.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&*b)))
            .unwrap_or_else(|_| Err(GuestFault::Trap("the guest call failed in the host".into())));
        if let Some(lane) = b.lane() {
            lane.judge(thread_time().saturating_sub(start), after_interrupt);
        }
        let _ = tx.send(r);
    }));
    if sent.is_err() {
        return Err(GuestFault::Trap("the guest pool is closed".into()));
    }
    rx.await
        .unwrap_or_else(|_| Err(GuestFault::Trap("the guest pool dropped the call".into())))
}

/// [`call`] for synchronous callers (the JSON codecs): a call that leaves
/// the fast path runs on this thread in `block_in_place` (so a tokio worker
/// hands its other tasks to another thread first), or directly when not on
/// a multi-threaded runtime.
pub(crate) fn call_blocking<T>(
    behavior: &dyn Behavior,
    f: impl Fn(&dyn Behavior) -> Result<T, GuestFault>,
) -> Result<T, GuestFault> {
    let Some(lane) = behavior.lane() else {
        return f(behavior);
    };
    let after_interrupt = match lane.try_inline(|| f(behavior)) {
        Inline::Done(r) => return r,
        Inline::Interrupted => true,
        Inline::Skipped => false,
    };
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let start = thread_time();
    let r = if multi {
        tokio::task::block_in_place(|| f(behavior))
    } else {
        f(behavior)
    };
    lane.judge(thread_time().saturating_sub(start), after_interrupt);
    r
}
