//! Running stages: the loop every stage runs ([`runner`]), the parent's side of a
//! worker process ([`spawn`]) and the child's ([`child`]).
//!
//! A worker process is the same executable, started with `spawn` + `exec` (never a
//! bare `fork` in a threaded process), with the segment's memfd and two pipes at
//! fixed descriptor numbers and [`WORKER_ENV`] in its environment. The hook
//! [`worker_hook`] at the top of `main` (or in the test entry made by
//! [`worker_test_entry!`](crate::worker_test_entry)) turns it into the worker.

pub(crate) mod child;
pub(crate) mod meter;
pub(crate) mod runner;
pub(crate) mod spawn;

pub use child::worker_hook;

/// Names the stage a worker process serves; its presence makes a process a worker.
pub const WORKER_ENV: &str = "RINGPIPE_WORKER";

/// The name of the test function made by [`worker_test_entry!`](crate::worker_test_entry);
/// under libtest, workers are started as `<test binary> ringpipe_worker_entry --exact`.
pub const TEST_ENTRY: &str = "ringpipe_worker_entry";

/// Descriptor numbers in a worker process.
pub(crate) const SEGMENT_FD: i32 = 3;
/// Read end of a pipe only the parent writes: EOF means the parent is gone.
pub(crate) const LIFELINE_FD: i32 = 4;
/// Write end of the status pipe: `R` when ready, `E<message>` on a setup error; EOF
/// (the process exited) tells the parent the worker is gone.
pub(crate) const STATUS_FD: i32 = 5;

/// Exit codes of a worker process.
pub(crate) mod exit {
    /// Served until an orderly shutdown.
    pub const OK: i32 = 0;
    /// Could not set up (bad segment, unknown stage, bad parameters).
    pub const SETUP: i32 = 70;
    /// Stopped because the pipeline broke or memory was corrupted.
    pub const BROKEN: i32 = 71;
    /// The parent died.
    pub const ORPHANED: i32 = 72;
}

/// Makes the test function that worker processes enter under `cargo test`.
///
/// Put it once at the root of each integration-test crate that builds pipelines
/// with process stages. In a normal test run it is an empty test that passes.
///
/// ```
/// ringpipe_engine::worker_test_entry!();
/// ```
#[macro_export]
macro_rules! worker_test_entry {
    () => {
        #[test]
        fn ringpipe_worker_entry() {
            $crate::worker_hook();
        }
    };
}

#[cfg(test)]
mod tests;
