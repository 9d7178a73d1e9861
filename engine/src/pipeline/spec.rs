//! Describing a stage: which code, where it runs, its parameters, its callback.

use std::sync::Arc;
use std::time::Duration;

use crate::sandbox::Sandbox;
use crate::stage::{Params, Registered, Stage, StageCode, StageKind};

/// Where a stage runs.
pub(crate) enum Placement {
    /// A worker process running the registered stage.
    Process,
    /// A thread of the parent running the registered stage.
    Thread,
    /// A thread of the parent running this instance.
    ThreadWith(StageCode),
}

/// Called in the parent for each stage of each item, in stage order, when the item
/// leaves the pipeline and before its ticket resolves (`atbu.mp_pipeline`'s `stage_complete`).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use ringpipe_engine::{stage_fn, Pipeline, StageOutcome, StageSpec};
/// let ran = Arc::new(AtomicUsize::new(0));
/// let r = ran.clone();
/// let count = StageSpec::with_stage("id", stage_fn(|_| Ok(()))).on_complete(move |e| {
///     if e.outcome == StageOutcome::Ran {
///         r.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// let p = Pipeline::builder().stage(count).build()?;
/// drop(p.submit(b"x")?.wait()?);
/// assert_eq!(ran.load(Ordering::Relaxed), 1); // before the ticket resolved
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type OnComplete = Arc<dyn Fn(&StageEvent<'_>) + Send + Sync>;

/// One stage of a pipeline, before it is built.
///
/// Switching a registered stage between a worker process and a thread of the parent
/// is one word: [`process`](StageSpec::process) or [`thread`](StageSpec::thread).
///
/// ```
/// use ringpipe_engine::{stage_fn, StageSpec};
/// let a = StageSpec::process_named("compress").params(vec![3]);
/// let b = StageSpec::thread_named("compress").params(vec![3]);
/// let c = StageSpec::with_stage("count", stage_fn(|_f| Ok(())));
/// assert!(a.is_process() && !b.is_process() && !c.is_process());
/// ```
#[must_use = "a stage spec does nothing until it is given to `Builder::stage`"]
pub struct StageSpec {
    pub(crate) name: String,
    pub(crate) params: Vec<u8>,
    pub(crate) placement: Placement,
    pub(crate) on_complete: Option<OnComplete>,
    /// What the code is: a plain stage, or which half of a pair.
    pub(crate) kind: StageKind,
    /// Ring bytes of the stream to the next stage, if this is a producer half.
    pub(crate) stream: Option<usize>,
    /// Runners of this stage (worker processes or threads), at least 1.
    pub(crate) replicas: usize,
    /// Replicated: items leave in submission order.
    pub(crate) ordered: bool,
    /// Kill and restart a worker that runs one item for longer than this.
    pub(crate) timeout: Option<Duration>,
    /// Confine its worker processes.
    pub(crate) sandbox: Option<Sandbox>,
}

/// The longest [`StageSpec::timeout`]: one day.
pub const MAX_STAGE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Bytes of a pair's byte ring unless
/// [`PairSpec::stream_capacity`](crate::PairSpec::stream_capacity) says otherwise:
/// 1 MiB, large enough that 64 KiB writes rarely wait, small enough to stay in cache.
pub const DEFAULT_STREAM_CAPACITY: usize = 1 << 20;

impl StageSpec {
    pub(crate) fn new(name: &str, kind: StageKind, placement: Placement) -> Self {
        Self {
            name: name.to_owned(),
            params: Vec::new(),
            placement,
            on_complete: None,
            kind,
            stream: None,
            replicas: 1,
            ordered: true,
            timeout: None,
            sandbox: None,
        }
    }

    /// Stage `S` built from `params`, in its own worker process.
    ///
    /// ```
    /// # use ringpipe_engine::{BoxError, Frame, Registered, Stage, StageSpec};
    /// # struct Zstd;
    /// # impl Stage for Zstd { fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> { Ok(()) } }
    /// # impl Registered for Zstd {
    /// #     const NAME: &'static str = "doc.zstd";
    /// #     type Params = i32;
    /// #     fn from_params(_: i32) -> Result<Self, BoxError> { Ok(Zstd) }
    /// # }
    /// let compress = StageSpec::process::<Zstd>(3).replicas(2);
    /// ```
    pub fn process<S: Registered + Stage>(params: S::Params) -> Self {
        Self::process_named(S::NAME).params(params.encode())
    }

    /// Stage `S` built from `params`, on a thread of the parent.
    pub fn thread<S: Registered + Stage>(params: S::Params) -> Self {
        Self::thread_named(S::NAME).params(params.encode())
    }

    /// The stage registered as `name`, in its own worker process; its parameter bytes
    /// come from [`params`](Self::params). The dynamic form of
    /// [`process`](Self::process).
    pub fn process_named(name: &str) -> Self {
        Self::new(name, StageKind::Stage, Placement::Process)
    }

    /// The stage registered as `name`, on a thread of the parent.
    pub fn thread_named(name: &str) -> Self {
        Self::new(name, StageKind::Stage, Placement::Thread)
    }

    /// Any stage value (closures included, see [`stage_fn`](crate::stage_fn)) on a
    /// thread of the parent; `name` is used in errors and events. It may use rayon
    /// inside, on a pool of its own.
    pub fn with_stage(name: &str, stage: impl Stage + 'static) -> Self {
        Self::new(name, StageKind::Stage, Placement::ThreadWith(StageCode::Stage(Box::new(stage))))
    }

    /// Registered stages run one after another on each item in one worker process
    /// (a [`Chain`](crate::Chain)): `links` are their names and parameter bytes
    /// ([`Chain::link`](crate::Chain::link) makes one from a typed stage). Replicate
    /// the chain to keep each item on one core from its first link to its last, with
    /// no hop between them; where stages outnumber cores this saves a wake (and a
    /// preemption) per link.
    ///
    /// ```
    /// use ringpipe_engine::StageSpec;
    /// let hash_then_zip = StageSpec::chain([("my.hash", &[][..]), ("my.zip", &[3][..])]).replicas(2);
    /// assert_eq!(hash_then_zip.replica_count(), 2);
    /// ```
    pub fn chain<N: AsRef<str>, P: AsRef<[u8]>>(links: impl IntoIterator<Item = (N, P)>) -> Self {
        Self::process_named(crate::stage::CHAIN).params(crate::Chain::params(links))
    }

    /// Parameter bytes given to the registered stage's constructor.
    pub fn params(mut self, params: impl Into<Vec<u8>>) -> Self {
        self.params = params.into();
        self
    }

    /// A callback run in the parent for this stage of every item; see [`OnComplete`].
    pub fn on_complete(mut self, f: impl Fn(&StageEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_complete = Some(Arc::new(f));
        self
    }

    /// Runs the stage on `n` worker processes (or threads) at once, each with its own
    /// rings (1 to [`MAX_REPLICAS`](crate::memory::MAX_REPLICAS)). Each item goes to the
    /// replica with the shortest queue, so a slow item on one does not hold up the
    /// others; items leave the stage in submission order unless
    /// [`unordered`](Self::unordered). More replicas than cores work: idle ones park.
    ///
    /// A stage built from an instance ([`with_stage`](Self::with_stage)) runs once;
    /// asking for more is [`BuildError::BadReplicas`](crate::BuildError::BadReplicas).
    ///
    /// ```
    /// use ringpipe_engine::StageSpec;
    /// let compress = StageSpec::process_named("compress").replicas(4);
    /// assert_eq!(compress.replica_count(), 4);
    /// ```
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// One replica per core this process may run on
    /// ([`std::thread::available_parallelism`]; 1 if unknown).
    ///
    /// ```
    /// use ringpipe_engine::StageSpec;
    /// assert!(StageSpec::process_named("compress").replicas_per_core().replica_count() >= 1);
    /// ```
    pub fn replicas_per_core(self) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.replicas(cores)
    }

    /// Lets items leave this replicated stage as soon as their replica is done, instead
    /// of in submission order. Results still reach [`Pipeline::map`](crate::Pipeline::map)
    /// in input order; [`Pipeline::completions`](crate::Pipeline::completions) and the
    /// stages after this one see them as they finish.
    ///
    /// ```
    /// use ringpipe_engine::StageSpec;
    /// let hash = StageSpec::process_named("hash").replicas(2).unordered();
    /// assert!(!hash.is_ordered());
    /// ```
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// Fails an item that runs in this stage for longer than `timeout` (1 ms to
    /// [`MAX_STAGE_TIMEOUT`]): the worker process running it is killed and restarted,
    /// and the item leaves with a [`StageFailure`](crate::StageFailure) whose
    /// `timed_out` is set. The clock starts when the worker takes the item; it is
    /// checked every quarter of the timeout (at least every 250 ms), without cost to
    /// the workers.
    ///
    /// Only a process stage may have one
    /// ([`BuildError::BadTimeout`](crate::BuildError::BadTimeout)): a thread cannot be
    /// killed. A stage that puts replicas' items back in order can time out. The halves
    /// of a producer/consumer pair have none: a producer streams after its item went
    /// on, so the pair's clock cannot be read.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ringpipe_engine::StageSpec;
    /// let s = StageSpec::process_named("compress").timeout(Duration::from_secs(5));
    /// assert_eq!(s.timeout_limit(), Some(Duration::from_secs(5)));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the stage's worker processes in `sandbox`: it can reach nothing but what it
    /// was given (see [`Sandbox`]). A violation kills only the worker; the item it held
    /// fails with a [`StageFailure`](crate::StageFailure) whose `violation` names the
    /// limit, and a replacement starts.
    ///
    /// Only a process stage can be sandboxed
    /// ([`BuildError::SandboxOnThread`](crate::BuildError::SandboxOnThread)): a thread
    /// shares everything with the parent.
    ///
    /// ```
    /// use ringpipe_engine::{Sandbox, StageSpec};
    /// let unzstd = StageSpec::process_named("unzstd").sandbox(Sandbox::strict().memory_cap(64 << 20));
    /// assert!(unzstd.sandbox_spec().is_some());
    /// ```
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// The stage's [`sandbox`](Self::sandbox), if it has one.
    pub fn sandbox_spec(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The stage's [`timeout`](Self::timeout), if it has one.
    pub fn timeout_limit(&self) -> Option<Duration> {
        self.timeout
    }

    /// How many runners the stage gets.
    pub fn replica_count(&self) -> usize {
        self.replicas
    }

    /// False if the stage was made [`unordered`](Self::unordered).
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// True if the stage runs in a worker process.
    pub fn is_process(&self) -> bool {
        matches!(self.placement, Placement::Process)
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What one stage did with one item.
///
/// See [`OnComplete`] for an example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageOutcome<'a> {
    /// The stage processed the item successfully.
    Ran,
    /// The stage's determiner declined the item.
    Skipped,
    /// The stage failed the item with this message.
    Failed(&'a str),
    /// An earlier stage failed the item, so this one never saw it.
    NotReached,
}

/// Passed to an [`OnComplete`] callback.
///
/// See [`OnComplete`] for an example.
#[derive(Debug)]
pub struct StageEvent<'a> {
    /// Index of the stage in the pipeline.
    pub stage: usize,
    /// Its name.
    pub name: &'a str,
    /// What it did with the item.
    pub outcome: StageOutcome<'a>,
    /// The item's bytes as they left the pipeline.
    pub bytes: &'a [u8],
}
