//! The master-worker process pool (the MPI master-worker pool): a registered task function
//! on `n` worker processes; the parent hands each task to the least loaded worker and
//! takes the results back tagged with the task's index, in order or as they complete.
//!
//! Each worker runs the ordinary stage loop on its own pair of SPSC rings (input
//! `2w`, output `2w + 1`) in one shared segment; every worker's output publish rings
//! one doorbell (ring 1's wake word), so the parent sleeps on a single futex whatever
//! the number of workers. Task bytes are written once, into the frame, and results are
//! read in place.
//!
//! A worker that dies is replaced by a new process on the same rings: the tasks still
//! queued in its input ring are served by the replacement, the one it held fails with
//! [`PoolError::WorkerDied`] naming the task (or is run again, once, if asked with
//! [`PoolBuilder::retry_once`]), and no other task is lost or run twice.

mod error;
mod map;
mod watch;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Zeroable;
use parking_lot::Mutex;

pub use error::{PoolError, WorkerReport};
pub use map::{PoolMap, PoolOutput};

use crate::frame::OwnedSlot;
use crate::memory::{Layout, Segment, SlotHeader, StageRecord};
use crate::pipeline::BuildError;
use crate::ring::{Consumer, Producer};
use crate::stage::find_stage;
use crate::worker::spawn::{self, WorkerProcess};

/// Tasks out at once unless [`PoolBuilder::max_in_flight`] says otherwise: 64 (with
/// the default 64 KiB frames, 4 MiB of frames), or 4 per worker if that is more.
pub const DEFAULT_POOL_WINDOW: usize = 64;

/// Ring 1 (worker 0's output ring) is the doorbell every worker's publish rings.
const DOORBELL: usize = 1;
/// Most workers in one pool.
pub const MAX_WORKERS: usize = crate::memory::MAX_STAGES;

/// Configures a [`Pool`]; see [`Pool::builder`].
pub struct PoolBuilder {
    task: String,
    params: Vec<u8>,
    workers: Option<usize>,
    max_in_flight: Option<usize>,
    frame_capacity: usize,
    retry_once: bool,
    startup_timeout: Duration,
}

impl PoolBuilder {
    /// Number of worker processes (default: one per available core). More workers
    /// than cores is fine: idle ones park on a futex.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Parameter bytes for the task's constructor (see `register_stage!`).
    pub fn params(mut self, params: impl Into<Vec<u8>>) -> Self {
        self.params = params.into();
        self
    }

    /// Most tasks handed out and not yet taken back (default: [`DEFAULT_POOL_WINDOW`],
    /// or 4 per worker if that is more). A deep window keeps tiny tasks flowing (the
    /// workers rarely run dry, so rarely park); `workers` makes each next task go to
    /// whichever worker finished first, as in an MPI master-worker pool.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Bytes a task or result may take (default 64 KiB).
    pub fn frame_capacity(mut self, bytes: usize) -> Self {
        self.frame_capacity = bytes;
        self
    }

    /// Runs a task again, once, when the worker holding it dies; by default it fails
    /// with [`PoolError::WorkerDied`].
    pub fn retry_once(mut self, yes: bool) -> Self {
        self.retry_once = yes;
        self
    }

    /// Starts the workers and waits until each has built its task function.
    pub fn build(self) -> Result<Pool, BuildError> {
        if std::env::var_os(crate::worker::WORKER_ENV).is_some() {
            return Err(BuildError::InsideWorker);
        }
        let out_of_range = |what, value: usize, max: usize| {
            BuildError::Config(crate::memory::LayoutError::OutOfRange {
                what,
                value: value as u64,
                max: max as u64,
            })
        };
        let n = self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if n == 0 || n > MAX_WORKERS {
            return Err(out_of_range("pool workers", n, MAX_WORKERS));
        }
        let in_flight = self.max_in_flight.unwrap_or(DEFAULT_POOL_WINDOW.max(4 * n));
        let max_in_flight = crate::memory::MAX_SLOTS - n;
        if in_flight == 0 || in_flight > max_in_flight {
            return Err(out_of_range("max_in_flight", in_flight, max_in_flight));
        }
        if find_stage(&self.task).is_none() {
            return Err(BuildError::UnknownStage { stage: 0, name: self.task });
        }
        let mut blob = self.task.as_bytes().to_vec();
        blob.extend_from_slice(&self.params);
        let layout = Layout::with_rings(n, 2 * n, n + in_flight, self.frame_capacity, blob.len(), 0)
            .map_err(BuildError::Config)?;
        let seg = Arc::new(Segment::create(layout).map_err(BuildError::Segment)?);
        seg.write_blob(&blob);
        for w in 0..n {
            seg.write_stage(
                w,
                StageRecord {
                    name_offset: 0,
                    name_len: self.task.len() as u32,
                    params_offset: self.task.len() as u64,
                    params_len: u32::try_from(self.params.len()).map_err(|_| {
                        out_of_range("task parameters length", self.params.len(), u32::MAX as usize)
                    })?,
                    input_ring: 2 * w as u32,
                    output_ring: 2 * w as u32 + 1,
                    wake_ring: DOORBELL as u32,
                    publish_every: 1,
                    spare_slot: w as u32,
                    stage: w as u32,
                    ..StageRecord::default()
                },
            );
        }
        let fd = seg.fd().try_clone_to_owned().map_err(BuildError::Spawn)?;
        let mut workers = Vec::with_capacity(n);
        for w in 0..n {
            let (input, _) = seg.ring(2 * w);
            let (_, output) = seg.ring(2 * w + 1);
            let process = spawn::spawn(&fd, w, w).map_err(BuildError::Spawn)?;
            workers.push(Worker { process, input, output, queue: VecDeque::new(), spare: w as u32 });
        }
        let deadline = crate::wait::deadline_after(self.startup_timeout);
        for (w, worker) in workers.iter_mut().enumerate() {
            handshake(&mut worker.process, deadline, w, &self.task)?;
        }
        let watch = watch::Watch::start(workers.iter().map(|w| &w.process.status), seg.clone(), DOORBELL)
            .map_err(BuildError::Spawn)?;
        let free = Arc::new(Mutex::new(
            (n..n + in_flight)
                .map(|i| {
                    // SAFETY: the slots past the workers' spares are the parent's, in a
                    // segment created just now.
                    unsafe { OwnedSlot::assigned(&seg, i as u32) }.expect("in layout")
                })
                .collect(),
        ));
        Ok(Pool {
            seg,
            fd,
            task: self.task,
            workers,
            free,
            in_flight: 0,
            retry_once: self.retry_once,
            startup_timeout: self.startup_timeout,
            watch,
            restarts: 0,
        })
    }
}

fn handshake(process: &mut WorkerProcess, deadline: Instant, w: usize, task: &str) -> Result<(), BuildError> {
    process.handshake(deadline).map_err(|e| BuildError::from_handshake(e, w, task))
}

/// A task handed to a worker and not yet back.
#[derive(Debug)]
struct Pending {
    index: u64,
    /// The slot it was written into (the worker may hand back another one: `replace`).
    slot: u32,
    /// Its bytes, kept only when retries are on.
    retry: Option<Vec<u8>>,
}

struct Worker {
    process: WorkerProcess,
    input: Producer,
    output: Consumer,
    /// Tasks handed to this worker, oldest first (its rings are FIFO).
    queue: VecDeque<Pending>,
    /// The slot the worker holds as its spare, as far as the parent can tell.
    spare: u32,
}

/// A pool of worker processes running one registered task function.
///
/// ```no_run
/// use ringpipe_engine::Pool;
/// let mut pool = Pool::builder("double").workers(4).build()?;
/// for result in pool.map((0..100u64).map(|i| [i as f64; 8])) {
///     let result = result?;
///     let doubled: &[f64] = result.cast()?;
///     println!("task {} done by worker {}: {:?}", result.index(), result.worker(), doubled);
/// }
/// let report = pool.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool {
    seg: Arc<Segment>,
    fd: OwnedFd,
    task: String,
    workers: Vec<Worker>,
    /// Frames not in use; outputs put theirs back when dropped.
    free: Arc<Mutex<Vec<OwnedSlot>>>,
    in_flight: usize,
    retry_once: bool,
    startup_timeout: Duration,
    watch: watch::Watch,
    restarts: usize,
}

impl Pool {
    /// Starts configuring a pool running the task registered as `task`.
    pub fn builder(task: &str) -> PoolBuilder {
        PoolBuilder {
            task: task.to_owned(),
            params: Vec::new(),
            workers: None,
            max_in_flight: None,
            frame_capacity: crate::pipeline::DEFAULT_FRAME_CAPACITY,
            retry_once: false,
            startup_timeout: Duration::from_secs(30),
        }
    }

    /// Number of worker processes.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Process id of each worker, by worker number.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.process.child.id()).collect()
    }

    /// Workers restarted so far after dying.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    /// Runs every task and yields the results in task order (index 0, 1, 2, ...),
    /// keeping at most `max_in_flight` tasks out. Tasks are byte slices or slices of
    /// any `bytemuck::Pod` type; the iterator is consumed lazily, so it may be
    /// endless or larger than memory.
    pub fn map<I, T>(&mut self, tasks: I) -> PoolMap<'_, I::IntoIter, T>
    where
        I: IntoIterator,
        I::Item: AsRef<[T]>,
        T: bytemuck::Pod,
    {
        PoolMap::new(self, tasks.into_iter(), true)
    }

    /// Like [`map`](Self::map), but yields each result as soon as it is back.
    pub fn map_unordered<I, T>(&mut self, tasks: I) -> PoolMap<'_, I::IntoIter, T>
    where
        I: IntoIterator,
        I::Item: AsRef<[T]>,
        T: bytemuck::Pod,
    {
        PoolMap::new(self, tasks.into_iter(), false)
    }

    /// Stops every worker (asking it to exit, waiting up to 5 s before killing it) and
    /// reports how each ended.
    pub fn shutdown(mut self) -> Vec<WorkerReport> {
        self.stop()
    }

    fn stop(&mut self) -> Vec<WorkerReport> {
        self.seg.control().set_state(crate::memory::STATE_SHUTDOWN);
        for w in &self.workers {
            w.input.nudge();
        }
        self.watch.stop();
        self.workers
            .iter_mut()
            .enumerate()
            .map(|(i, w)| {
                // Asked by the shutdown state above; the lifeline closes after, so the
                // worker's orderly exit is not mistaken for an orphan's.
                let (status, killed) = w.process.stop(Duration::from_secs(5));
                w.process.lifeline = None;
                WorkerReport { worker: i, pid: w.process.child.id(), status, killed }
            })
            .collect()
    }

    /// Hands a task to the least loaded worker. The caller checked there is a free
    /// frame and room in flight.
    fn dispatch(&mut self, bytes: &[u8], slot: OwnedSlot, index: u64) -> Result<(), PoolError> {
        self.send(self.least_loaded(), slot, bytes, index, self.retry_once.then(|| bytes.to_vec()))
    }

    /// The worker with the fewest tasks queued.
    fn least_loaded(&self) -> usize {
        (0..self.workers.len()).min_by_key(|&w| self.workers[w].queue.len()).expect("at least one worker")
    }

    fn send(
        &mut self,
        w: usize,
        mut slot: OwnedSlot,
        bytes: &[u8],
        index: u64,
        retry: Option<Vec<u8>>,
    ) -> Result<(), PoolError> {
        slot.payload_mut(&self.seg)[..bytes.len()].copy_from_slice(bytes);
        let header = SlotHeader {
            len: bytes.len() as u32,
            ticket: index as u32,
            generation: (index >> 32) as u32,
            ..Zeroable::zeroed()
        };
        slot.set_header(&self.seg, &header);
        let worker = &mut self.workers[w];
        worker.queue.push_back(Pending { index, slot: slot.index(), retry });
        // The ring holds every slot, so it cannot be full; a bad position is corruption.
        worker
            .input
            .try_push(slot.into_descriptor())
            .map_err(|_| PoolError::Corrupt("input ring position".into()))?;
        worker.input.publish();
        self.in_flight += 1;
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.watch.is_stopped() {
            let _ = self.stop();
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("task", &self.task).field("workers", &self.worker_pids()).finish()
    }
}
