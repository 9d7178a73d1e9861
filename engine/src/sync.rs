//! One switch between `std` atomics and loom's model-checked ones.
//!
//! Every module that takes part in a cross-thread or cross-process protocol
//! (the ring, the wait word) imports its atomics from here, so `RUSTFLAGS="--cfg loom"`
//! model-checks exactly the code that runs in production (tokio's `src/loom` pattern).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Pads and aligns a value to a cache line so two hot words never share one.
///
/// 128 bytes: adjacent-line prefetch on x86 pulls lines in pairs (crossbeam's choice).
#[derive(Default, Debug)]
#[repr(C, align(128))]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Hint for a spin loop; a loom yield point under the model checker.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
