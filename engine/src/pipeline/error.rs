//! The pipeline's error types, one per family of operations.

use std::fmt;

use super::handles::Output;

/// Why the whole pipeline stopped working; every item still in it fails with this.
///
/// ```
/// use ringpipe_engine::{EngineFailure, ItemError, Ticket};
/// fn outcome(t: Ticket) -> String {
///     match t.wait() {
///         Ok(out) => format!("{} bytes", out.len()),
///         Err(ItemError::Engine(EngineFailure::Corrupt(why))) => format!("pipeline broken: {why}"),
///         Err(e) => e.to_string(),
///     }
/// }
/// # let _ = outcome;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineFailure {
    /// A worker process exited while the pipeline was running.
    WorkerDied {
        /// Stage index.
        stage: usize,
        /// Stage name.
        name: String,
        /// The worker's process id.
        pid: u32,
        /// How it ended (exit code or signal), as the OS reports it.
        status: String,
    },
    /// Shared memory held something impossible (a buggy worker, or corruption).
    Corrupt(String),
    /// A thread stage stopped unexpectedly.
    ThreadStage {
        /// Stage index.
        stage: usize,
        /// Why.
        reason: String,
    },
    /// The pipeline was dropped or shut down before the item finished.
    Aborted,
}

impl fmt::Display for EngineFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WorkerDied { stage, name, pid, status } => {
                write!(f, "the worker process {pid} of stage {stage} (`{name}`) died ({status})")
            }
            Self::Corrupt(why) => write!(f, "shared memory is corrupt: {why}"),
            Self::ThreadStage { stage, reason } => write!(f, "thread stage {stage} stopped: {reason}"),
            Self::Aborted => write!(f, "the pipeline was shut down before the item finished"),
        }
    }
}

impl std::error::Error for EngineFailure {}

/// Why an item could not be submitted.
///
/// ```
/// use ringpipe_engine::{Pipeline, StageSpec, SubmitError};
/// let p = Pipeline::builder().stage(StageSpec::thread_named("any")).frame_capacity(4).build();
/// # let p = match p { Ok(p) => p, Err(_) => return Ok(()) };
/// assert_eq!(p.submit(b"hello").unwrap_err(), SubmitError::TooLarge { requested: 5, capacity: 4 });
/// p.close();
/// assert_eq!(p.submit(b"hi").unwrap_err(), SubmitError::ShutDown);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    /// The frame is larger than the pipeline's frame capacity.
    TooLarge {
        /// Bytes asked for.
        requested: usize,
        /// The capacity (`Builder::frame_capacity`).
        capacity: usize,
    },
    /// `shutdown()` has been called.
    ShutDown,
    /// The pipeline broke; see the failure.
    Broken(EngineFailure),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { requested, capacity } => write!(
                f,
                "a {requested}-byte frame exceeds the frame capacity of {capacity} bytes; \
                 raise it with Builder::frame_capacity"
            ),
            Self::ShutDown => write!(f, "the pipeline is shut down; build a new one to submit more"),
            Self::Broken(e) => write!(f, "the pipeline is broken: {e}"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why `try_submit` did not take the item; the item is given back.
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec, TrySubmitError};
/// let id = StageSpec::with_stage("id", stage_fn(|_| Ok(())));
/// let p = Pipeline::builder().stage(id).max_in_flight(1).build()?;
/// let held = p.submit(b"a")?.wait()?; // its frame stays in flight until dropped
/// match p.try_submit(b"b".to_vec()) {
///     Err(TrySubmitError::Full(item)) => assert_eq!(item, b"b"), // given back
///     other => panic!("{other:?}"),
/// }
/// drop(held);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, PartialEq, Eq)]
pub enum TrySubmitError<T> {
    /// `max_in_flight` items are in flight: try again later.
    Full(T),
    /// Submitting failed for another reason.
    Failed(SubmitError, T),
}

impl<T> TrySubmitError<T> {
    /// The item that was not submitted.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(t) | Self::Failed(_, t) => t,
        }
    }
}

impl<T> fmt::Display for TrySubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => write!(f, "the pipeline has max_in_flight items in flight"),
            Self::Failed(e, _) => e.fmt(f),
        }
    }
}

impl<T: fmt::Debug> std::error::Error for TrySubmitError<T> {}

/// Why an item gave no good result: the one failure channel of
/// [`Ticket::wait`](crate::Ticket::wait), its `Future`, [`Map`](crate::Map),
/// [`Completions`](crate::Completions) and the [`Pool`](crate::Pool)'s maps.
///
/// A stage's failure carries the item's [`Output`]: its bytes stay readable as the
/// failing stage left them, and [`into_output`](Self::into_output) gives them back.
///
/// ```
/// use ringpipe_engine::{stage_fn, ItemError, Pipeline, StageSpec};
/// let p = Pipeline::builder()
///     .stage(StageSpec::with_stage("picky", stage_fn(|f| match f.bytes() {
///         b"bad" => Err("no thanks".into()),
///         _ => Ok(()),
///     })))
///     .build()?;
/// match p.submit(b"bad")?.wait() {
///     Err(ItemError::Stage { failure, output }) => {
///         assert_eq!((failure.stage, failure.message.as_str()), (0, "no thanks"));
///         assert_eq!(&output[..], b"bad");
///     }
///     other => panic!("expected a stage failure, got {other:?}"),
/// }
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ItemError {
    /// A stage failed the item: it returned an error or panicked, ran past its
    /// timeout, or its worker process died holding it. Later stages skipped it.
    Stage {
        /// Which stage, and why (boxed: a result stays the size of an `Output`).
        failure: Box<StageFailure>,
        /// The item, as the failing stage left it. Dropping it recycles the frame.
        output: Output,
    },
    /// The item killed its worker twice: a map that runs an item again when its
    /// worker dies ([`PoolBuilder::retry_once`](crate::PoolBuilder::retry_once)) ran it
    /// once more, and that run killed the replacement too. It is not run a third time,
    /// so a poison input cannot keep a stage restarting.
    Poison {
        /// The second death (its `violation` names the sandbox limit, if any).
        failure: Box<StageFailure>,
        /// The item, as the dead worker left it. Dropping it recycles the frame.
        output: Output,
    },
    /// The engine failed the item (the pipeline broke, or shutdown aborted it).
    Engine(EngineFailure),
    /// `wait_timeout` ran out; the item is still in flight.
    TimedOut,
    /// A map's input is larger than a frame: it alone fails, the rest go on.
    TooLarge {
        /// Its position among the map's inputs.
        index: u64,
        /// Its bytes.
        requested: usize,
        /// The frame capacity (`Builder::frame_capacity`).
        capacity: usize,
    },
    /// The item could not be submitted (returned by [`Map`](crate::Map)).
    Submit(SubmitError),
    /// The result was already taken through this handle.
    AlreadyTaken,
    /// Every frame is held by results still alive, so nothing more can be submitted:
    /// drop results before asking for more (returned by [`Map`](crate::Map), as its
    /// last item: the rest of the inputs is not submitted).
    Saturated,
}

impl ItemError {
    /// The item's output if a stage failed it (`Ok`), else the error back (`Err`):
    /// `result.or_else(ItemError::into_output)` reads failed items' bytes like any.
    pub fn into_output(self) -> Result<Output, Self> {
        match self {
            Self::Stage { output, .. } | Self::Poison { output, .. } => Ok(output),
            other => Err(other),
        }
    }

    /// The stage failure, if that is what this is.
    pub fn stage_failure(&self) -> Option<&StageFailure> {
        match self {
            Self::Stage { failure, .. } | Self::Poison { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stage { failure, .. } => failure.fmt(f),
            Self::Poison { failure, .. } => {
                write!(f, "poison item, quarantined after killing two workers; the second: {failure}")
            }
            Self::Engine(e) => e.fmt(f),
            Self::TimedOut => write!(f, "timed out waiting for the item"),
            Self::TooLarge { index, requested, capacity } => write!(
                f,
                "input {index} has {requested} bytes, more than a frame holds ({capacity}); raise frame_capacity"
            ),
            Self::Submit(e) => e.fmt(f),
            Self::AlreadyTaken => write!(f, "the item's result was already taken"),
            Self::Saturated => write!(
                f,
                "all max_in_flight frames are held by unreleased results; drop some before asking for more"
            ),
        }
    }
}

impl std::error::Error for ItemError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Stage { failure, .. } => Some(&**failure),
            Self::Engine(e) => Some(e),
            Self::Submit(e) => Some(e),
            _ => None,
        }
    }
}

/// The error an item carries when a stage failed it.
///
/// ```
/// use ringpipe_engine::{stage_fn, ItemError, Pipeline, StageSpec};
/// let p = Pipeline::builder()
///     .stage(StageSpec::with_stage("picky", stage_fn(|_| Err("not today".into()))))
///     .build()?;
/// let Err(ItemError::Stage { failure, output }) = p.submit(b"x")?.wait() else { panic!() };
/// assert_eq!((failure.stage, failure.name.as_str(), failure.message.as_str()), (0, "picky", "not today"));
/// assert_eq!(failure.worker_died, None);
/// assert_eq!(&output[..], b"x"); // the item's bytes stay readable
/// # drop(output);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageFailure {
    /// Index of the stage that failed.
    pub stage: usize,
    /// Its name.
    pub name: String,
    /// Its error's message (or the panic message), at most `ERROR_CAPACITY` bytes.
    pub message: String,
    /// `Some(pid)` if the failure is that the worker process running the stage died
    /// while it held the item (the message names the signal); the worker was
    /// restarted and the pipeline went on.
    pub worker_died: Option<u32>,
    /// `Some(timeout)` if the item ran past the stage's
    /// [`timeout`](crate::StageSpec::timeout): its worker process (`worker_died`) was
    /// killed and restarted.
    pub timed_out: Option<std::time::Duration>,
    /// `Some` if the worker (`worker_died`) was killed by its
    /// [`sandbox`](crate::StageSpec::sandbox): the limit it hit.
    pub violation: Option<crate::Violation>,
}

impl fmt::Display for StageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage {} (`{}`) failed: {}", self.stage, self.name, self.message)
    }
}

impl std::error::Error for StageFailure {}

/// Why a pipeline could not be built.
///
/// ```
/// use ringpipe_engine::{BuildError, Pipeline, StageSpec};
/// let unknown = StageSpec::process_named("nobody.registered.this");
/// let err = Pipeline::builder().stage(unknown).build().unwrap_err();
/// assert!(matches!(err, BuildError::UnknownStage { stage: 0, .. }), "{err}");
/// assert!(matches!(Pipeline::builder().build(), Err(BuildError::NoStages)));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// A pipeline needs at least one stage.
    NoStages,
    /// A size or count is out of range.
    Config(crate::memory::LayoutError),
    /// The shared segment could not be created.
    Segment(crate::memory::SegmentError),
    /// No stage of that name is registered with `register_stage!`.
    UnknownStage {
        /// Stage index.
        stage: usize,
        /// The name asked for.
        name: String,
    },
    /// The stage's constructor rejected its parameters (or the worker could not set up).
    StageInit {
        /// Stage index.
        stage: usize,
        /// Stage name.
        name: String,
        /// The reason given.
        message: String,
    },
    /// A worker process ran the program instead of becoming a worker.
    HookMissing {
        /// Stage index.
        stage: usize,
        /// How the process ended.
        status: String,
    },
    /// A worker did not report ready in time.
    StartTimeout {
        /// Stage index.
        stage: usize,
    },
    /// Starting a worker process or thread failed.
    Spawn(std::io::Error),
    /// `build()` was called inside a worker process (its hook did not run first).
    InsideWorker,
    /// A pair's [`stream_capacity`](crate::PairSpec::stream_capacity) is 0 or above
    /// [`MAX_STREAM_CAPACITY`](crate::MAX_STREAM_CAPACITY).
    BadStreamCapacity {
        /// Index of the pair's producer.
        stage: usize,
        /// The capacity asked for.
        capacity: usize,
    },
    /// A registered name was placed as something it is not: a plain stage's name in a
    /// pair, say, or a consumer's as a producer.
    WrongKind {
        /// Stage index.
        stage: usize,
        /// The name.
        name: String,
        /// What the name is registered as.
        registered: crate::StageKind,
        /// What it was placed as.
        placed: crate::StageKind,
    },
    /// A stage's [`replicas`](crate::StageSpec::replicas) cannot be honoured.
    BadReplicas {
        /// Index of the stage.
        stage: usize,
        /// Why.
        reason: String,
    },
    /// A stage's [`timeout`](crate::StageSpec::timeout) cannot be honoured.
    BadTimeout {
        /// Index of the stage.
        stage: usize,
        /// Why.
        reason: String,
    },
    /// A thread stage asked for a [`sandbox`](crate::StageSpec::sandbox): only a worker
    /// process can be confined; a thread shares everything with the parent.
    SandboxOnThread {
        /// Index of the stage.
        stage: usize,
        /// Its name.
        name: String,
    },
    /// A stage's sandbox was built with [`require_full`](crate::Sandbox::require_full)
    /// and this kernel cannot enforce all of it.
    SandboxIncomplete {
        /// Index of the stage.
        stage: usize,
        /// Its name.
        name: String,
        /// What is missing (see [`SandboxReport::missing`](crate::SandboxReport::missing)).
        missing: String,
    },
}

impl BuildError {
    /// Why worker `stage` (running `name`) failed its start-up handshake.
    pub(crate) fn from_handshake(e: crate::worker::spawn::Handshake, stage: usize, name: &str) -> Self {
        use crate::worker::spawn::Handshake;
        match e {
            Handshake::Refused(message) => Self::StageInit { stage, name: name.to_owned(), message },
            Handshake::NoHook(status) => Self::HookMissing {
                stage,
                status: status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
            },
            Handshake::TimedOut => Self::StartTimeout { stage },
            Handshake::Io(e) => Self::Spawn(e),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStages => write!(f, "a pipeline needs at least one stage"),
            Self::BadStreamCapacity { stage, capacity } => write!(
                f,
                "the pair at stage {stage} asks for a {capacity}-byte stream ring; it must have 1 to {} bytes",
                crate::MAX_STREAM_CAPACITY
            ),
            Self::WrongKind { stage, name, registered, placed } => {
                write!(f, "stage {stage}: `{name}` is registered as {registered} but placed as {placed}")
            }
            Self::BadReplicas { stage, reason } => write!(f, "stage {stage} cannot be replicated: {reason}"),
            Self::BadTimeout { stage, reason } => write!(f, "stage {stage} cannot have a timeout: {reason}"),
            Self::SandboxOnThread { stage, name } => write!(
                f,
                "stage {stage} (`{name}`) runs on a thread of the parent, which cannot be sandboxed; \
                 place it in a worker process to sandbox it"
            ),
            Self::SandboxIncomplete { stage, name, missing } => write!(
                f,
                "stage {stage} (`{name}`) requires its full sandbox, and this kernel cannot enforce: {missing}"
            ),
            Self::Config(e) => write!(f, "invalid pipeline configuration: {e}"),
            Self::Segment(e) => e.fmt(f),
            Self::UnknownStage { stage, name } => write!(
                f,
                "stage {stage}: nothing named `{name}` is registered; register it with \
                 ringpipe::register! (or register_stage!) in this executable"
            ),
            Self::StageInit { stage, name, message } => {
                write!(f, "stage {stage} (`{name}`) could not start: {message}")
            }
            Self::HookMissing { stage, status } => write!(
                f,
                "the worker process for stage {stage} did not become a worker ({status}): call \
                 ringpipe::worker_hook() first thing in main, or put ringpipe::worker_test_entry!() \
                 at the root of the test crate, or start benches from a main that calls the hook"
            ),
            Self::StartTimeout { stage } => {
                write!(f, "the worker process for stage {stage} did not report ready in time")
            }
            Self::Spawn(e) => write!(f, "cannot start a worker: {e}"),
            Self::InsideWorker => write!(
                f,
                "build() was called inside a ringpipe worker process: call ringpipe::worker_hook() \
                 first thing in main"
            ),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Segment(e) => Some(e),
            Self::Spawn(e) => Some(e),
            _ => None,
        }
    }
}
