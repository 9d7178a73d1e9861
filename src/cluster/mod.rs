//! The pool across hosts, on MPI (`--features mpi`): one MPI rank per host, the
//! host's leader; inside a host everything is as on one machine (worker processes,
//! shared-memory rings, restarts, statistics).
//!
//! Rank 0 is the master: it hands out batches of tasks, each to whichever host has
//! room (every host holds at most a few batches of credit), and yields the results
//! tagged with their task index, in input order or as they finish. Its own host works
//! too. Tasks and results cross hosts as their bytes, in length-prefixed batches; a
//! message of any size is cut into chunks MPI can count (`wire.rs`). Only each rank's
//! main thread calls MPI (`Threading::Funneled`); a host's pool runs on a thread of
//! its own (`host.rs`).
//!
//! ```no_run
//! use ringpipe::cluster::{Cluster, ClusterPool};
//! # use ringpipe::{register, BoxError, Frame, Registered, Stage};
//! # struct Double;
//! # impl Stage for Double { fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> { Ok(()) } }
//! # impl Registered for Double { const NAME: &'static str = "doc.double"; type Params = ();
//! #     fn from_params((): ()) -> Result<Self, BoxError> { Ok(Double) } }
//! # register!(Double);
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     ringpipe::worker_hook();
//!     let cluster = Cluster::init()?; // under mpiexec: one rank per host
//!     let pool = ClusterPool::builder::<Double>(()).workers_per_host(2).build(&cluster)?;
//!     if !cluster.is_master() {
//!         return Ok(pool.serve()?); // a leader: run tasks until the master is done
//!     }
//!     let tasks = (0..100u64).map(|i| (i as f64).to_le_bytes());
//!     for result in pool.map(tasks) {
//!         let out = result?;
//!         println!("task {} on {}: {:?}", out.index(), out.host(), out.read::<f64>());
//!     }
//!     pool.shutdown();
//!     Ok(())
//! }
//! ```
//!
//! # When a host is lost
//!
//! What holds depends on the MPI library, and ringpipe says exactly what it found. With
//! MPICH 4.0.2 (Debian's, the one tested here) a rank that dies takes the whole job
//! down: `mpiexec` kills every rank and exits non-zero, so nothing hangs, but the
//! master cannot go on without that host (with `-disable-auto-cleanup` the master is
//! never told and would wait; rsmpi installs `MPI_ERRORS_ARE_FATAL` and does not expose
//! ULFM). What ringpipe adds is [`ClusterPool::map_resumable`]: it records each
//! finished task's index in a file as it hands the result over, and a rerun skips
//! them, so losing a host costs only the work in flight.

mod host;
mod wire;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use ringpipe_engine::{BuildError, Builder, Params, Pool, Registered, ShutdownReport, Stage};

use self::host::{Host, Local};
use self::wire::Kind;

/// How long a rank waits in `MPI_Finalize` once every rank has passed the pool's last
/// synchronisation, before it exits without it (see [`Cluster`]).
pub const FINALIZE_GRACE: Duration = Duration::from_secs(10);

/// This process's place in the MPI job. Dropping it finalizes MPI.
///
/// With MPICH 4.0.2 over UCX and TCP, `MPI_Finalize` sometimes never returns: measured
/// here across three emulated hosts, in 2 to 3 jobs of 30 (more often in some runs).
/// Every rank had passed the pool's last synchronisation; one rank spins in UCX's
/// progress
/// closing a connection while a peer waits on the process manager (openucx/ucx#8738
/// describes the same). So a rank whose finalize has not returned [`FINALIZE_GRACE`]
/// after it began exits there with `_exit` and status 1, saying on stderr whether every
/// rank had passed that synchronisation (then all work was done and handed over). Not
/// 0: the exit skips whatever the program would still have done or reported, an error
/// from `main` included. `mpiexec` then reports the job as failed; it never hangs.
pub struct Cluster {
    world: SimpleCommunicator,
    host: String,
    /// Set once every rank has passed a [`ClusterPool`]'s last synchronisation.
    synced: std::cell::Cell<bool>,
    universe: std::mem::ManuallyDrop<mpi::environment::Universe>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (finalized, wait) = std::sync::mpsc::channel::<()>();
        let rank = self.rank();
        let state = if self.synced.get() {
            "every rank had handed over its work"
        } else {
            "before the pool's last synchronisation"
        };
        let watchdog = std::thread::Builder::new().name("ringpipe-finalize".into()).spawn(move || {
            if wait.recv_timeout(FINALIZE_GRACE) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!(
                    "ringpipe: rank {rank}: MPI_Finalize has not returned in {FINALIZE_GRACE:?} \
                     ({state}); exiting without it, status 1"
                );
                // SAFETY: `_exit` ends the process at once; nothing runs after it.
                unsafe { libc::_exit(1) }
            }
        });
        // SAFETY: dropped here once; `self` is never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.universe) };
        drop(finalized);
        if let Ok(w) = watchdog {
            let _ = w.join();
        }
    }
}

impl Cluster {
    /// Initialises MPI with `Threading::Funneled` (only the main thread calls MPI).
    /// Call it once, from the main thread, after `ringpipe::worker_hook()`.
    pub fn init() -> Result<Self, ClusterError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| ClusterError::Init("MPI was initialised already".into()))?;
        if threading < Threading::Funneled {
            return Err(ClusterError::Init(format!(
                "this MPI gives {threading:?} threading; ringpipe needs Funneled"
            )));
        }
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        Ok(Self {
            world: universe.world(),
            host,
            synced: std::cell::Cell::new(false),
            universe: std::mem::ManuallyDrop::new(universe),
        })
    }

    /// This rank (0 is the master).
    pub fn rank(&self) -> i32 {
        self.world.rank()
    }

    /// How many ranks (hosts) the job has.
    pub fn size(&self) -> i32 {
        self.world.size()
    }

    /// True on rank 0.
    pub fn is_master(&self) -> bool {
        self.rank() == 0
    }

    /// This host's name, as MPI knows it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The world communicator, for MPI calls of the caller's own (rsmpi's API).
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }
}

/// Why the pool across hosts could not do something.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// MPI could not start as ringpipe needs it.
    Init(String),
    /// This host's pool could not be built.
    Build(BuildError),
    /// A task failed on a host: its stage failed it, or its worker died holding it.
    Task {
        /// The task's index.
        index: u64,
        /// The host's rank.
        rank: i32,
        /// The host's name.
        host: String,
        /// What the host said.
        message: String,
    },
    /// A host's runner stopped, or sent what ringpipe did not write.
    Host {
        /// The host's rank.
        rank: i32,
        /// Why.
        message: String,
    },
    /// Reading or writing the resume record failed.
    Resume(std::io::Error),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Init(e) => write!(f, "cannot start MPI: {e}"),
            Self::Build(e) => write!(f, "cannot build this host's pool: {e}"),
            Self::Task { index, rank, host, message } => {
                write!(f, "task {index} failed on rank {rank} ({host}): {message}")
            }
            Self::Host { rank, message } => write!(f, "rank {rank}: {message}"),
            Self::Resume(e) => write!(f, "resume record: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Build(e) => Some(e),
            Self::Resume(e) => Some(e),
            _ => None,
        }
    }
}

/// Configures a [`ClusterPool`]; every rank builds the same one. `L` is what each host
/// runs: a [`TaskPool`] ([`ClusterPool::builder`]) or a pipeline [`Builder`]
/// ([`ClusterPool::pipeline`]).
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClusterPoolBuilder<L = TaskPool> {
    local: L,
    batch: usize,
    credit: usize,
    master_works: bool,
}

/// Each host's part of a pool running one task function: see [`ClusterPool::builder`].
pub struct TaskPool {
    task: String,
    params: Vec<u8>,
    workers: usize,
    frame_capacity: usize,
}

impl ClusterPoolBuilder<TaskPool> {
    /// Parameter bytes of the task (the typed [`ClusterPool::builder`] sets them).
    pub fn params(mut self, params: impl Into<Vec<u8>>) -> Self {
        self.local.params = params.into();
        self
    }

    /// Worker processes on each host (default: one per core).
    pub fn workers_per_host(mut self, n: usize) -> Self {
        self.local.workers = n;
        self
    }

    /// Bytes each frame holds: the largest task and result (default 64 KiB).
    pub fn frame_capacity(mut self, bytes: usize) -> Self {
        self.local.frame_capacity = bytes;
        self
    }

    /// Builds this host's pool and, on the master, learns every host's name.
    pub fn build(self, cluster: &Cluster) -> Result<ClusterPool<'_>, ClusterError> {
        let TaskPool { task, params, workers, frame_capacity } = &self.local;
        let pool = Pool::builder_named(task)
            .params(params.clone())
            .workers(*workers)
            .frame_capacity(*frame_capacity)
            .max_in_flight((workers * 4).max(self.batch))
            .build()
            .map_err(ClusterError::Build)?;
        self.finish(cluster, Local::Pool(pool))
    }
}

impl ClusterPoolBuilder<Builder> {
    /// Builds this host's pipeline and, on the master, learns every host's name.
    pub fn build(self, cluster: &Cluster) -> Result<ClusterPool<'_>, ClusterError> {
        let ClusterPoolBuilder { local, batch, credit, master_works } = self;
        let pipeline = local.build().map_err(ClusterError::Build)?;
        ClusterPoolBuilder { local: (), batch, credit, master_works }
            .finish(cluster, Local::Pipeline(pipeline))
    }
}

impl<L> ClusterPoolBuilder<L> {
    /// Tasks per batch sent to a host (default 64; at least 1).
    pub fn batch(mut self, tasks: usize) -> Self {
        self.batch = tasks.max(1);
        self
    }

    /// Batches a host may hold at once (default 3; at least 1): enough that a host
    /// never waits for the master, few enough that the work is shared out by speed.
    pub fn credit(mut self, batches: usize) -> Self {
        self.credit = batches.max(1);
        self
    }

    /// Whether the master's own host runs tasks too (default true). Off, every task
    /// crosses to another host, as in a master-worker pool whose master only
    /// dispatches; a job of one rank works on the master's host regardless.
    pub fn master_works(mut self, yes: bool) -> Self {
        self.master_works = yes;
        self
    }

    /// Starts this host's runner over `local` and, on the master, learns every host's
    /// name.
    fn finish(self, cluster: &Cluster, local: Local) -> Result<ClusterPool<'_>, ClusterError> {
        let host =
            Host::start(local).map_err(|e| ClusterError::Init(format!("cannot start a thread: {e}")))?;
        let world = &cluster.world;
        let mut hosts = vec![cluster.host.clone()];
        if cluster.is_master() {
            for rank in 1..cluster.size() {
                hosts.push(
                    String::from_utf8_lossy(&wire::receive_from(world, rank, Kind::Hello)).into_owned(),
                );
            }
        } else {
            wire::send(world, 0, Kind::Hello, cluster.host.as_bytes());
        }
        let shares = hosts
            .iter()
            .enumerate()
            .map(|(rank, host)| HostShare { rank: rank as i32, host: host.clone(), ..HostShare::default() })
            .collect();
        Ok(ClusterPool {
            cluster,
            host: Some(host),
            hosts,
            shares: RefCell::new(shares),
            outbox: RefCell::default(),
            batch: self.batch,
            credit: self.credit,
            master_works: self.master_works || cluster.size() == 1,
            stopped: false,
        })
    }
}

/// One host's share of the work a [`ClusterPool`] did, as the master counted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostShare {
    /// The host's rank.
    pub rank: i32,
    /// The host's name.
    pub host: String,
    /// Tasks sent to it.
    pub sent: u64,
    /// Results it returned, failed ones included.
    pub done: u64,
    /// Of those, tasks that failed there.
    pub failed: u64,
    /// Task bytes sent to it.
    pub bytes_in: u64,
    /// Result bytes it returned.
    pub bytes_out: u64,
}

/// Every host's share of a [`ClusterPool`]'s work: [`ClusterPool::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// By rank.
    pub hosts: Vec<HostShare>,
}

impl ClusterStats {
    /// Results returned by all hosts together.
    pub fn done(&self) -> u64 {
        self.hosts.iter().map(|h| h.done).sum()
    }
}

impl std::fmt::Display for ClusterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.done().max(1) as f64;
        writeln!(
            f,
            "{:>4}  {:<16} {:>10} {:>6} {:>7} {:>12} {:>12}",
            "rank", "host", "tasks", "share", "failed", "bytes in", "bytes out"
        )?;
        for h in &self.hosts {
            writeln!(
                f,
                "{:>4}  {:<16} {:>10} {:>5.1}% {:>7} {:>12} {:>12}",
                h.rank,
                h.host,
                h.done,
                100.0 * h.done as f64 / total,
                h.failed,
                h.bytes_in,
                h.bytes_out
            )?;
        }
        Ok(())
    }
}

/// The pool across hosts: see the [module docs](self).
pub struct ClusterPool<'c> {
    cluster: &'c Cluster,
    host: Option<Host>,
    /// Every rank's host name (on the master; on a leader only its own).
    hosts: Vec<String>,
    /// What each host was sent and returned (counted on the master).
    shares: RefCell<Vec<HostShare>>,
    /// The master's sends in flight (it never blocks sending: see [`wire::Outbox`]).
    outbox: RefCell<wire::Outbox>,
    batch: usize,
    credit: usize,
    master_works: bool,
    stopped: bool,
}

impl ClusterPool<'_> {
    /// Starts configuring a pool running task `S`, built from `params` on each host.
    pub fn builder<S: Registered + Stage>(params: S::Params) -> ClusterPoolBuilder {
        Self::builder_named(S::NAME).params(params.encode())
    }

    /// The dynamic form of [`builder`](Self::builder).
    pub fn builder_named(task: &str) -> ClusterPoolBuilder {
        Self::spread(TaskPool {
            task: task.to_owned(),
            params: Vec::new(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            frame_capacity: ringpipe_engine::DEFAULT_FRAME_CAPACITY,
        })
    }

    /// Starts configuring a pool whose hosts each run `pipeline`, every rank building
    /// it from the same code: a replicated stage spans the hosts, its replicas on each.
    /// Tasks go through every stage of the host they are sent to; [`map`](Self::map)
    /// yields them in submission order, and [`stats`](Self::stats) says what share
    /// each host took.
    ///
    /// ```no_run
    /// # use ringpipe::cluster::{Cluster, ClusterPool};
    /// # use ringpipe::{stages::compress::Zstd, Pipeline, StageSpec};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::init()?;
    /// // zstd with two replicas on every host; the master's host works too.
    /// let zstd = StageSpec::process::<Zstd>(3).replicas(2);
    /// let pool = ClusterPool::pipeline(Pipeline::builder().stage(zstd).frame_capacity(1 << 21))
    ///     .batch(4)
    ///     .build(&cluster)?;
    /// # Ok(()) }
    /// ```
    pub fn pipeline(pipeline: Builder) -> ClusterPoolBuilder<Builder> {
        Self::spread(pipeline)
    }

    fn spread<L>(local: L) -> ClusterPoolBuilder<L> {
        ClusterPoolBuilder { local, batch: 64, credit: 3, master_works: true }
    }

    /// What each host was sent and returned so far (on the master; on a leader, its
    /// own host with no counts).
    pub fn stats(&self) -> ClusterStats {
        ClusterStats { hosts: self.shares.borrow().clone() }
    }

    /// The hosts' names by rank (the master knows them all).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// On a leader (rank > 0): runs the tasks the master sends until it says stop.
    pub fn serve(mut self) -> Result<(), ClusterError> {
        let world = &self.cluster.world;
        let rank = self.cluster.rank();
        let host = self.host.take().expect("a pool has its host until stopped");
        let mut idle = Backoff::default();
        loop {
            let mut worked = false;
            while let Some(r) = host.try_results() {
                let batch = r.map_err(|message| ClusterError::Host { rank, message })?;
                wire::send(world, 0, Kind::Results, &batch);
                worked = true;
            }
            if let Some(msg) = wire::try_receive(world) {
                worked = true;
                match msg.kind {
                    Kind::Tasks => {
                        host.submit(msg.bytes).map_err(|message| ClusterError::Host { rank, message })?
                    }
                    Kind::Stop => break,
                    other => {
                        return Err(ClusterError::Host {
                            rank: msg.rank,
                            message: format!("unexpected {other:?}"),
                        })
                    }
                }
            }
            idle.after(worked);
        }
        host.stop();
        self.stopped = true;
        // The last synchronisation before MPI_Finalize, through the master only (see
        // `stop`).
        wire::send(world, 0, Kind::Done, &[]);
        wire::receive_from(world, 0, Kind::Done);
        self.cluster.synced.set(true);
        Ok(())
    }

    /// On the master: runs `tasks` across the hosts; results in input order, each
    /// tagged with its index.
    pub fn map<I, T>(&self, tasks: I) -> ClusterMap<'_, I::IntoIter>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        ClusterMap::new(self, tasks.into_iter(), true, HashSet::new(), None)
    }

    /// Like [`map`](Self::map), results as they finish.
    pub fn map_unordered<I, T>(&self, tasks: I) -> ClusterMap<'_, I::IntoIter>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        ClusterMap::new(self, tasks.into_iter(), false, HashSet::new(), None)
    }

    /// Like [`map_unordered`](Self::map_unordered), skipping the tasks `record` lists
    /// as finished, and adding each task to it as its result is handed over. A rerun
    /// after a lost host (or anything else that ended the job) does only the rest.
    /// The record is a file of little-endian `u64` indices, created if missing.
    pub fn map_resumable<I, T>(
        &self,
        tasks: I,
        record: &Path,
    ) -> Result<ClusterMap<'_, I::IntoIter>, ClusterError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut done = HashSet::new();
        if let Ok(f) = File::open(record) {
            let mut bytes = Vec::new();
            BufReader::new(f).read_to_end(&mut bytes).map_err(ClusterError::Resume)?;
            // A torn last write (the job died mid-record) is ignored.
            done.extend(bytes.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(record)
            .map_err(ClusterError::Resume)?;
        Ok(ClusterMap::new(self, tasks.into_iter(), false, done, Some(file)))
    }

    /// On the master: tells every leader to stop, and stops this host's pool.
    pub fn shutdown(mut self) -> Option<ShutdownReport> {
        self.stop()
    }

    fn stop(&mut self) -> Option<ShutdownReport> {
        if std::mem::replace(&mut self.stopped, true) {
            return None;
        }
        let report = self.host.take().and_then(Host::stop);
        if self.cluster.is_master() {
            let mut outbox = self.outbox.borrow_mut();
            for rank in 1..self.cluster.size() {
                outbox.send(&self.cluster.world, rank, Kind::Stop, Vec::new());
            }
            outbox.flush();
            // Every rank done before any finalizes: without it ranks over TCP hung in
            // MPI_Finalize. A star through the master rather than MPI_Barrier: leaders
            // never talk to each other, so they open no connections between them
            // (hangs in finalize were seen more often with more of them).
            let world = &self.cluster.world;
            for rank in 1..self.cluster.size() {
                wire::receive_from(world, rank, Kind::Done);
            }
            for rank in 1..self.cluster.size() {
                outbox.send(world, rank, Kind::Done, Vec::new());
            }
            outbox.flush();
            self.cluster.synced.set(true);
        }
        report
    }
}

impl Drop for ClusterPool<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spins a little, then yields, then sleeps up to 200 µs between polls that found
/// nothing: MPI offers no wait on "a message or a local result".
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn after(&mut self, worked: bool) {
        if worked {
            self.0 = 0;
            return;
        }
        self.0 = self.0.saturating_add(1);
        match self.0 {
            0..=64 => std::hint::spin_loop(),
            65..=128 => std::thread::yield_now(),
            n => std::thread::sleep(Duration::from_micros(u64::from((n - 128).min(200)))),
        }
    }
}

/// A task's result from whichever host ran it.
pub struct ClusterOutput {
    index: u64,
    rank: i32,
    host: Arc<str>,
    batch: Arc<Vec<u8>>,
    bytes: std::ops::Range<usize>,
}

impl ClusterOutput {
    /// The task's index: its position in the map's input.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The rank of the host that ran it.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// The name of the host that ran it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The result's leading bytes as a `T` (copied: a result's bytes are not aligned).
    pub fn read<T: bytemuck::Pod>(&self) -> Option<T> {
        self.get(..std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned)
    }
}

impl std::ops::Deref for ClusterOutput {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.batch[self.bytes.clone()]
    }
}

/// Results of [`ClusterPool::map`] and its siblings.
#[must_use = "an iterator does nothing until it is consumed"]
pub struct ClusterMap<'p, I> {
    pool: &'p ClusterPool<'p>,
    tasks: I,
    ordered: bool,
    exhausted: bool,
    next_index: u64,
    /// Tasks each rank holds now.
    outstanding: Vec<usize>,
    /// In order: results by index until their turn; unordered: in arrival order.
    ready: BTreeMap<u64, Result<ClusterOutput, ClusterError>>,
    arrived: VecDeque<Result<ClusterOutput, ClusterError>>,
    next_out: u64,
    skip: HashSet<u64>,
    record: Option<File>,
    hosts: Vec<Arc<str>>,
    idle: Backoff,
}

impl<'p, I, T> ClusterMap<'p, I>
where
    I: Iterator<Item = T>,
    T: AsRef<[u8]>,
{
    fn new(
        pool: &'p ClusterPool<'p>,
        tasks: I,
        ordered: bool,
        skip: HashSet<u64>,
        record: Option<File>,
    ) -> Self {
        assert!(pool.cluster.is_master(), "only the master (rank 0) maps; leaders serve()");
        let ranks = pool.cluster.size() as usize;
        Self {
            pool,
            tasks,
            ordered,
            exhausted: false,
            next_index: 0,
            outstanding: vec![0; ranks],
            ready: BTreeMap::new(),
            arrived: VecDeque::new(),
            next_out: 0,
            skip,
            record,
            hosts: pool.hosts.iter().map(|h| Arc::from(h.as_str())).collect(),
            idle: Backoff::default(),
        }
    }

    /// Sends a batch to every host with room, while tasks are left.
    fn dispatch(&mut self) {
        let limit = self.pool.batch * self.pool.credit;
        let first = usize::from(!self.pool.master_works);
        for rank in first..self.outstanding.len() {
            while !self.exhausted && self.outstanding[rank] + self.pool.batch <= limit {
                let mut batch = Vec::new();
                let (mut n, mut bytes) = (0, 0);
                while n < self.pool.batch {
                    let Some(task) = self.tasks.next() else {
                        self.exhausted = true;
                        break;
                    };
                    let index = self.next_index;
                    self.next_index += 1;
                    if self.skip.contains(&index) {
                        continue;
                    }
                    wire::put_task(&mut batch, index, task.as_ref());
                    n += 1;
                    bytes += task.as_ref().len();
                }
                if n == 0 {
                    break;
                }
                self.outstanding[rank] += n;
                {
                    let mut shares = self.pool.shares.borrow_mut();
                    shares[rank].sent += n as u64;
                    shares[rank].bytes_in += bytes as u64;
                }
                if rank == 0 {
                    let host = self.pool.host.as_ref().expect("the master's host runs while mapping");
                    if let Err(message) = host.submit(batch) {
                        self.arrived.push_back(Err(ClusterError::Host { rank: 0, message }));
                    }
                } else {
                    let world = &self.pool.cluster.world;
                    self.pool.outbox.borrow_mut().send(world, rank as i32, Kind::Tasks, batch);
                }
            }
        }
    }

    /// Takes in every result batch that is there; true if any came.
    fn collect(&mut self) -> bool {
        let mut batches = Vec::new();
        if let Some(host) = self.pool.host.as_ref() {
            while let Some(r) = host.try_results() {
                batches.push((0, r));
            }
        }
        while let Some(msg) = wire::try_receive(&self.pool.cluster.world) {
            match msg.kind {
                Kind::Results => batches.push((msg.rank, Ok(msg.bytes))),
                other => batches.push((msg.rank, Err(format!("unexpected {other:?} message")))),
            }
        }
        let came = !batches.is_empty();
        for (rank, batch) in batches {
            self.take_batch(rank, batch);
        }
        came
    }

    fn take_batch(&mut self, rank: i32, batch: Result<Vec<u8>, String>) {
        let host_error = |message| Err(ClusterError::Host { rank, message });
        let batch = match batch {
            Ok(b) => Arc::new(b),
            Err(message) => return self.arrived.push_back(host_error(message)),
        };
        let entries = match wire::entries(&batch, true) {
            Ok(e) => e,
            Err(e) => return self.arrived.push_back(host_error(format!("a result batch is malformed: {e}"))),
        };
        let host = self.hosts.get(rank as usize).cloned().unwrap_or_else(|| Arc::from("?"));
        self.outstanding[rank as usize] = self.outstanding[rank as usize].saturating_sub(entries.len());
        if let Some(share) = self.pool.shares.borrow_mut().get_mut(rank as usize) {
            share.done += entries.len() as u64;
            share.failed += entries.iter().filter(|e| !e.ok).count() as u64;
            share.bytes_out += entries.iter().filter(|e| e.ok).map(|e| e.bytes.len() as u64).sum::<u64>();
        }
        for e in entries {
            let result = if e.ok {
                Ok(ClusterOutput {
                    index: e.index,
                    rank,
                    host: host.clone(),
                    batch: batch.clone(),
                    bytes: e.bytes,
                })
            } else {
                Err(ClusterError::Task {
                    index: e.index,
                    rank,
                    host: host.to_string(),
                    message: String::from_utf8_lossy(&batch[e.bytes]).into_owned(),
                })
            };
            if self.ordered {
                self.ready.insert(e.index, result);
            } else {
                self.arrived.push_back(result);
            }
        }
    }

    fn pop(&mut self) -> Option<Result<ClusterOutput, ClusterError>> {
        if let Some(r) = self.arrived.pop_front() {
            return Some(r);
        }
        if self.ordered {
            while self.skip.contains(&self.next_out) {
                self.next_out += 1;
            }
            if let Some(r) = self.ready.remove(&self.next_out) {
                self.next_out += 1;
                return Some(r);
            }
        }
        None
    }

    fn record(&mut self, result: &Result<ClusterOutput, ClusterError>) -> Result<(), ClusterError> {
        if let (Some(file), Ok(out)) = (self.record.as_mut(), result) {
            file.write_all(&out.index.to_le_bytes()).map_err(ClusterError::Resume)?;
        }
        Ok(())
    }
}

impl<I, T> Iterator for ClusterMap<'_, I>
where
    I: Iterator<Item = T>,
    T: AsRef<[u8]>,
{
    type Item = Result<ClusterOutput, ClusterError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.pop() {
                return Some(match self.record(&r) {
                    Ok(()) => r,
                    Err(e) => Err(e),
                });
            }
            self.dispatch();
            if self.exhausted && self.outstanding.iter().all(|&n| n == 0) {
                return None;
            }
            let came = self.collect();
            // While a send is in flight the master keeps MPI moving, as a blocking send
            // would: a large message advances only while MPI is being called.
            let sending = !self.pool.outbox.borrow_mut().progress();
            self.idle.after(came || sending);
        }
    }
}
