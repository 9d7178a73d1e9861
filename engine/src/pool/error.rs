//! What a pool reports.

use std::fmt;

/// Why a task has no result, or the pool cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The task function returned an error (or panicked) on this task.
    TaskFailed {
        /// The task's index.
        index: u64,
        /// The error's text.
        message: String,
    },
    /// The worker running this task died; it was restarted, the task was not retried.
    WorkerDied {
        /// The task's index.
        index: u64,
        /// Which worker.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// How it ended (`signal: 9 (SIGKILL)`).
        status: String,
    },
    /// A task is larger than a frame.
    TooLarge {
        /// The task's index.
        index: u64,
        /// Its bytes.
        requested: usize,
        /// The frame capacity (`PoolBuilder::frame_capacity`).
        capacity: usize,
    },
    /// Every frame is held by results still alive: drop some before asking for more.
    Saturated,
    /// A dead worker could not be replaced.
    Restart {
        /// Which worker.
        worker: usize,
        /// Why.
        message: String,
    },
    /// Shared memory held something impossible.
    Corrupt(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TaskFailed { index, message } => write!(f, "task {index} failed: {message}"),
            Self::WorkerDied { index, worker, pid, status } => {
                write!(f, "task {index}: worker {worker} (pid {pid}) died running it ({status})")
            }
            Self::TooLarge { index, requested, capacity } => write!(
                f,
                "task {index} has {requested} bytes, more than the frame capacity of {capacity}; \
                 raise it with PoolBuilder::frame_capacity"
            ),
            Self::Saturated => {
                write!(f, "every frame is held by results still alive; drop some before asking for more")
            }
            Self::Restart { worker, message } => {
                write!(f, "worker {worker} died and could not be restarted: {message}")
            }
            Self::Corrupt(why) => write!(f, "pool shared memory is corrupt: {why}"),
        }
    }
}

impl std::error::Error for PoolError {}

/// How one worker process ended; see [`Pool::shutdown`](crate::Pool::shutdown).
#[derive(Debug)]
pub struct WorkerReport {
    /// Worker number.
    pub worker: usize,
    /// Its (last) process id.
    pub pid: u32,
    /// Its exit status, if collected.
    pub status: Option<std::process::ExitStatus>,
    /// True if it had to be killed.
    pub killed: bool,
}
