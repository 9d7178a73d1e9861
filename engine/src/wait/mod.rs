//! Spin a bounded time, then park on a futex word in shared memory.
//!
//! The protocol and the proof that no wake-up is lost are in `wait/README.md`.
//! The word is process-shared: the futex calls use no `FUTEX_PRIVATE_FLAG`, so a
//! waiter in one process is woken by a notifier in another over the same memfd page.

use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicU32, Ordering};

/// How long a waiter spins before it parks. A futex round trip costs ~27 µs here;
/// a spinning hand-off ~50 ns, so spinning for about one wake's cost is the balance.
pub const SPIN_BUDGET: Duration = Duration::from_micros(40);

/// Spin rounds between two looks at the clock.
const ROUNDS_PER_CHECK: u32 = 64;

/// For this long the waiter spins on the core without a syscall; after it, it yields
/// the core between checks, so that more runnable workers than cores still progress.
const YIELD_AFTER: Duration = Duration::from_micros(5);

/// A process-shared event count: waiters park on `seq`, notifiers bump it only when
/// `sleepers` says somebody is parked.
///
/// Lives in shared memory (`#[repr(C)]`, no pointers); all-zero bytes are a valid,
/// idle word.
#[repr(C)]
#[derive(Debug, Default)]
pub struct WaitWord {
    /// Futex word: bumped by each notify that found a sleeper.
    seq: AtomicU32,
    /// Waiters between W2 and W6 of the protocol.
    sleepers: AtomicU32,
    #[cfg(loom)]
    model: futex_model::Model,
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The condition became true.
    Ready,
    /// The timeout passed first; the caller should check its peers and maybe wait again.
    TimedOut,
}

impl WaitWord {
    /// A fresh word (only loom tests build one on the heap; shared memory starts zeroed).
    #[cfg(any(test, loom))]
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every parked waiter, if any. Call after publishing the change
    /// that waiters test in their `ready()` (N2-N3 in the README).
    #[inline]
    pub fn notify(&self) {
        // SeqCst fence N2: pairs with the waiter's fence W3 so that either the waiter's
        // ready() sees our publish or we see its `sleepers` increment.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.wake_all();
        }
    }

    #[cold]
    fn wake_all(&self) {
        // Release: a waiter that reads the new seq (kernel EAGAIN path) then re-runs ready().
        self.seq.fetch_add(1, Ordering::Release);
        futex_wake_all(self);
    }

    /// Waits until `ready()` returns true or `timeout` passes: spins for
    /// [`SPIN_BUDGET`], then parks on the futex (W1-W6 in the README).
    ///
    /// `ready` must only read state that notifiers change *before* calling
    /// [`notify`](Self::notify).
    pub fn wait(&self, mut ready: impl FnMut() -> bool, timeout: Option<Duration>) -> Wake {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        if spin(&mut ready, start) {
            return Wake::Ready;
        }
        loop {
            // W1: Acquire pairs with the Release bump in wake_all.
            let seen = self.seq.load(Ordering::Acquire);
            // W2 + W3: announce, then a SeqCst fence paired with the notifier's N2.
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if ready() {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                return Wake::Ready;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        self.sleepers.fetch_sub(1, Ordering::Relaxed);
                        return Wake::TimedOut;
                    }
                },
                None => None,
            };
            futex_wait(self, seen, left);
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            if ready() {
                return Wake::Ready;
            }
        }
    }
}

/// The bounded spin phase: `spin_loop` for [`YIELD_AFTER`], then `yield_now` between
/// checks, for at most [`SPIN_BUDGET`] in all. The clock is read once per
/// [`ROUNDS_PER_CHECK`] rounds.
fn spin(ready: &mut impl FnMut() -> bool, start: Instant) -> bool {
    if cfg!(loom) {
        return ready();
    }
    let mut round = 0u32;
    loop {
        if ready() {
            return true;
        }
        round = round.wrapping_add(1);
        if round % ROUNDS_PER_CHECK == 0 {
            let spent = start.elapsed();
            if spent >= SPIN_BUDGET {
                return false;
            }
            if spent >= YIELD_AFTER {
                std::thread::yield_now();
                continue;
            }
        }
        crate::sync::spin_hint();
    }
}

#[cfg(not(any(loom, miri)))]
fn futex_wait(word: &WaitWord, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let ts = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos().into(),
    });
    // Empty flags: a *shared* futex, keyed by the physical page, so it works across
    // processes mapping the same memfd. EAGAIN (seq moved), ETIMEDOUT and EINTR all
    // mean "re-check"; the caller loops.
    let _ = futex::wait(&word.seq, futex::Flags::empty(), expected, ts.as_ref());
}

#[cfg(not(any(loom, miri)))]
fn futex_wake_all(word: &WaitWord) {
    use rustix::thread::futex;
    // Cannot fail on a valid, aligned address; a failure would only cost a timeout.
    let _ = futex::wake(&word.seq, futex::Flags::empty(), u32::MAX);
}

/// The same futex calls, made through `libc::syscall` with the argument types of
/// futex(2) that Miri checks c-variadic arguments against (`uint32_t *uaddr, int op,
/// uint32_t val, const struct timespec *timeout`). Under Miri rustix takes its libc backend,
/// whose futex passes `*const AtomicU32`, which newer Miri rejects as a c-variadic
/// type mismatch; these keep Miri interpreting the real wait protocol.
#[cfg(all(miri, not(loom)))]
fn futex_wait(word: &WaitWord, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the word is a live, aligned u32 for the whole call (borrowed from
    // `word`); `ts_ptr` is null or points at `ts`, which outlives the call. The
    // result is ignored for the same reason as in the non-Miri version.
    unsafe {
        libc::syscall(libc::SYS_futex, word.seq.as_ptr(), libc::FUTEX_WAIT, expected, ts_ptr);
    }
}

#[cfg(all(miri, not(loom)))]
fn futex_wake_all(word: &WaitWord) {
    // SAFETY: the word is a live, aligned u32 for the whole call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.seq.as_ptr(), libc::FUTEX_WAKE, i32::MAX as u32);
    }
}

#[cfg(loom)]
fn futex_wait(word: &WaitWord, expected: u32, _timeout: Option<Duration>) {
    word.model.wait(&word.seq, expected);
}

#[cfg(loom)]
fn futex_wake_all(word: &WaitWord) {
    word.model.wake_all();
}

/// The kernel futex, modelled for loom: the word is compared under the bucket lock,
/// and a wake takes the same lock, exactly the atomicity the kernel gives.
#[cfg(loom)]
mod futex_model {
    use loom::sync::{Condvar, Mutex};

    use crate::sync::{AtomicU32, Ordering};

    #[derive(Debug, Default)]
    pub(super) struct Model {
        bucket: Mutex<()>,
        queue: Condvar,
    }

    impl Model {
        pub(super) fn wait(&self, word: &AtomicU32, expected: u32) {
            let guard = self.bucket.lock().unwrap();
            if word.load(Ordering::SeqCst) == expected {
                drop(self.queue.wait(guard).unwrap());
            }
        }

        pub(super) fn wake_all(&self) {
            drop(self.bucket.lock().unwrap());
            self.queue.notify_all();
        }
    }
}

#[cfg(test)]
mod tests;

/// `timeout` from now; a timeout too long for the clock (`Duration::MAX`) is as good as
/// forever, so it becomes about 136 years instead of an overflow panic.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(1 << 32))
}
