//! Timeouts of `ask`: a coarse timer built for many short waits.
//!
//! Nearly every `ask` finishes in a few milliseconds, long before its timeout
//! (5 s by default), yet tokio's timer would put each one in its wheel and
//! take it out again, a visible cost per command (docs/BENCHMARKS.md).
//! Here a pending `ask` takes a slot in one of a few mutex-guarded slabs
//! (picked per thread, so the lock is rarely contended) and frees it when it
//! finishes; a thread scans the slabs every [`TICK`] and wakes the waits whose
//! deadline has passed. A timeout therefore fires up to one tick late.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often deadlines are checked: a timeout fires at most this late.
pub(crate) const TICK: Duration = Duration::from_millis(5);

const SLABS: usize = 8;

/// The deadlines of the waits in progress.
pub(crate) struct Deadlines {
    slabs: [Mutex<Slab>; SLABS],
}

#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

struct Slot {
    deadline: Instant,
    waker: Option<Waker>,
    used: bool,
    fired: bool,
}

/// The wait did not finish before its deadline.
#[derive(Debug)]
pub(crate) struct Elapsed;

impl Deadlines {
    /// Creates the slabs and starts the thread that fires deadlines; it
    /// stops within a tick of the last `Arc` being dropped.
    pub(crate) fn start() -> std::io::Result<Arc<Deadlines>> {
        let d = Arc::new(Deadlines {
            slabs: std::array::from_fn(|_| Mutex::default()),
        });
        let weak = Arc::downgrade(&d);
        std::thread::Builder::new()
            .name("cairn-deadlines".into())
            .spawn(move || reap(&weak))?;
        Ok(d)
    }

    fn slab(&self, i: usize) -> MutexGuard<'_, Slab> {
        self.slabs[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` until it finishes or `limit` has passed (plus up to a tick).
    /// The caller pins `fut` where it lives: taken by value, an `async fn`
    /// keeps it twice (the argument and its pinned copy), which for an `ask`
    /// made a 3.3 KB future out of a 1.6 KB one, copied on every move.
    pub(crate) async fn timeout<F: Future>(
        &self,
        limit: Duration,
        mut fut: Pin<&mut F>,
    ) -> Result<F::Output, Elapsed> {
        let mut reg = Registration {
            deadlines: self,
            at: None,
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            match reg.at {
                None if limit.is_zero() => return Poll::Ready(Err(Elapsed)),
                None => reg.at = Some(self.register(Instant::now() + limit, cx.waker())),
                Some(at) => {
                    if self.fired(at, cx.waker()) {
                        return Poll::Ready(Err(Elapsed));
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    fn register(&self, deadline: Instant, waker: &Waker) -> (usize, u32) {
        let i = my_slab();
        let mut s = self.slab(i);
        let slot = Slot {
            deadline,
            waker: Some(waker.clone()),
            used: true,
            fired: false,
        };
        s.live += 1;
        let idx = match s.free.pop() {
            Some(idx) => {
                s.slots[idx as usize] = slot;
                idx
            }
            None => {
                s.slots.push(slot);
                (s.slots.len() - 1) as u32
            }
        };
        (i, idx)
    }

    /// Whether the slot's deadline fired; if not, it will wake `waker`.
    fn fired(&self, (i, idx): (usize, u32), waker: &Waker) -> bool {
        let mut s = self.slab(i);
        let slot = &mut s.slots[idx as usize];
        if slot.fired {
            return true;
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        false
    }

    fn release(&self, (i, idx): (usize, u32)) {
        let mut s = self.slab(i);
        let slot = &mut s.slots[idx as usize];
        slot.used = false;
        slot.waker = None;
        s.free.push(idx);
        s.live -= 1;
    }
}

/// Frees the slot of a wait that ends (finished, timed out or dropped).
struct Registration<'a> {
    deadlines: &'a Deadlines,
    at: Option<(usize, u32)>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(at) = self.at.take() {
            self.deadlines.release(at);
        }
    }
}

/// The slab a thread registers in: threads spread over the slabs.
fn my_slab() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLAB: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLABS;
    }
    SLAB.with(|s| *s)
}

/// Every tick: marks the waits whose deadline passed and wakes them.
fn reap(deadlines: &Weak<Deadlines>) {
    let mut wake = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let Some(d) = deadlines.upgrade() else {
            return;
        };
        let now = Instant::now();
        for i in 0..SLABS {
            let mut s = d.slab(i);
            if s.live == 0 {
                continue;
            }
            for slot in s.slots.iter_mut() {
                if slot.used && !slot.fired && slot.deadline <= now {
                    slot.fired = true;
                    wake.extend(slot.waker.take());
                }
            }
        }
        drop(d);
        for w in wake.drain(..) {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[tokio::test]
    async fn a_wait_finishes_or_times_out_and_frees_its_slot() {
        let d = Deadlines::start().unwrap();
        assert_eq!(
            d.timeout(Duration::from_secs(5), pin!(async { 7 }))
                .await
                .unwrap(),
            7
        );
        let t = Instant::now();
        let r = d
            .timeout(
                Duration::from_millis(30),
                pin!(std::future::pending::<()>()),
            )
            .await;
        assert!(r.is_err(), "a wait that never ends times out");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(30),
            "not before its deadline: {took:?}"
        );
        let r = d
            .timeout(
                Duration::from_secs(5),
                pin!(tokio::time::sleep(Duration::from_millis(20))),
            )
            .await;
        assert!(r.is_ok(), "a wait that ends in time is not cut");
        assert!(
            d.timeout(Duration::ZERO, pin!(std::future::pending::<()>()))
                .await
                .is_err()
        );
        let live: usize = (0..SLABS).map(|i| d.slab(i).live).sum();
        assert_eq!(live, 0, "every slot was freed");
    }
}
