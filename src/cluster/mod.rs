//! The pool, and replicated pipeline stages, across hosts on MPI (`--features mpi`):
//! one MPI rank per host, the host's leader; inside a host everything is as on one
//! machine (worker processes, shared-memory rings, restarts, statistics). Each host runs
//! a pool of one task function ([`ClusterPool::builder`]) or a whole pipeline
//! ([`ClusterPool::pipeline`]: a stage with replicas has them on every host).
//!
//! Rank 0 is the master: it hands out batches of tasks, each to whichever host has
//! room (every host holds at most a few batches of credit), and yields the results
//! tagged with their task index, in input order or as they finish. Its own host works
//! too. Tasks and results cross hosts as their bytes, in length-prefixed batches; a
//! message of any size is cut into chunks MPI can count (`wire.rs`). A task of 64 KiB
//! or more crosses on its own: MPI reads it straight from the caller's memory (no copy
//! into a batch), and the map waits until MPI is done with it before it runs the
//! caller's iterator again or hands back a result, so a borrowed task is never read
//! after its borrow could end. Only each rank's main thread calls MPI
//! (`Threading::Funneled`), and it polls at a pace rather than spinning (a blocking
//! MPI call spins, which takes the core from the host's workers); a host's pool runs
//! on a thread of its own (`host.rs`).
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
//! What holds depends on the MPI library, and ringpipe says exactly what it found with
//! MPICH 4.0.2 (Debian's, the one tested here; rsmpi installs `MPI_ERRORS_ARE_FATAL`
//! and does not expose ULFM):
//!
//! - **Plain `mpiexec`:** a rank that dies takes the whole job down. `mpiexec` kills
//!   every rank and exits non-zero, so nothing hangs, but the master cannot go on.
//! - **`mpiexec -disable-auto-cleanup`:** the other ranks live on, and MPI never tells
//!   the master. ringpipe does: every leader sends a heartbeat each [`HEARTBEAT`] when
//!   it has sent nothing else, and a host that holds tasks and stays silent for the
//!   pool's [`host_timeout`](ClusterPoolBuilder::host_timeout) is counted lost; so is
//!   one that sends the start of a message and then nothing of it for that long, or
//!   says nothing for a minute (or the host timeout, if longer) while the pool is
//!   built. Each task it held fails with [`ClusterError::HostLost`], naming the task,
//!   the rank and the host; nothing more is sent to it (MPI would fail that send, fatally), a late
//!   answer from it is dropped, and the map goes on with the other hosts (the
//!   master's own too, if every other host is lost). At the end MPI cannot finalize
//!   without the lost rank, so the master exits with status 1 once the pool is shut
//!   down, saying so on stderr. If the host died while a task of 64 KiB or more was on
//!   its way to it, MPI may never be done reading that task: the map keeps it (and
//!   goes on), and the master exits with status 1 as soon as the map is dropped, once
//!   every result was handed over, rather than let the caller free what MPI may read.
//!   The other way round, a leader whose master takes or sends nothing for the host
//!   timeout (a message stopped midway included) counts it gone: [`ClusterPool::serve`]
//!   returns [`ClusterError::Host`] for rank 0 and the leader exits with status 1. No
//!   rank waits on MPI without such a bound.
//! - **A race MPI decides:** a send the master starts to a host that has just died,
//!   before it is counted lost, fails in MPICH with UCX's "Endpoint timeout", which is
//!   fatal: the master aborts (seen once in several kills with 1 MiB tasks). The job
//!   ends; `map_resumable`'s record still holds every task finished before.
//!
//! Either way [`ClusterPool::map_resumable`] records each finished task's index in a
//! file as it hands the result over, and a rerun skips them, so losing a host costs
//! only the work in flight: the tasks lost, or failed, are the ones the rerun does.

mod host;
mod map;
mod pool;
mod stats;
mod wire;

pub use self::map::{ClusterMap, ClusterOutput};
pub use self::pool::{ClusterPool, ClusterPoolBuilder, TaskPool};
pub use self::stats::{ClusterStats, HostShare};

use std::time::Duration;

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use ringpipe_engine::BuildError;

/// How long a rank waits in `MPI_Finalize` once every rank has passed the pool's last
/// synchronisation, before it exits without it (see [`Cluster`]).
pub const FINALIZE_GRACE: Duration = Duration::from_secs(10);

/// How often a leader that has sent nothing else tells the master it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The sizes in which UCX's TCP transport (MPICH's `ch4:ucx`) moves a message through
/// its sockets, set by [`Cluster::init`] unless the environment sets either: 1 MiB
/// each, against UCX's 8 KiB to send and 64 KiB to receive.
///
/// Over TCP a large message moves only while both ranks call MPI, and the master's
/// MPI thread shares a core with the host's workers: when it yields, a worker may
/// keep the core until the scheduler's next tick (4 ms on the test VM). UCX reads and
/// writes its sockets a segment at a time, and with small segments those rare calls
/// moved too little to keep the other host fed. Measured on two emulated hosts
/// (`benches/cluster.sh`): zstd on two hosts against one, 1.38-1.47x before and
/// 1.65-1.86x after; 1 MiB tasks 16-28% faster; 64-byte tasks no slower. UCX refuses a send segment larger than the receive one, so the two
/// are set together or not at all. Other transports (InfiniBand, shared memory) do not
/// read them.
pub const UCX_TCP_SEGMENTS: [(&str, &str); 2] =
    [("UCX_TCP_RX_SEG_SIZE", "1mb"), ("UCX_TCP_TX_SEG_SIZE", "1mb")];

/// This process's place in the MPI job. Dropping it finalizes MPI.
///
/// With MPICH 4.0.2 over UCX and TCP, `MPI_Finalize` sometimes never returns: measured
/// here across three emulated hosts, in 2 to 3 jobs of 30 (more often in some runs).
/// Every rank had passed the pool's last synchronisation; one rank spins in UCX's
/// progress closing a connection while a peer waits on the process manager
/// (openucx/ucx#8738 describes the same). So a rank whose finalize has not returned [`FINALIZE_GRACE`]
/// after it began exits there with `_exit` and status 1, saying on stderr whether every
/// rank had passed that synchronisation (then all work was done and handed over). Not
/// 0: the exit skips whatever the program would still have done or reported, an error
/// from `main` included. `mpiexec` then reports the job as failed; it never hangs.
pub struct Cluster {
    world: SimpleCommunicator,
    host: String,
    /// Set once every rank has passed a [`ClusterPool`]'s last synchronisation.
    synced: std::cell::Cell<bool>,
    /// Set once a pool ended without some rank, saying which: on the master a lost
    /// host, on a leader the master (see [`ClusterPoolBuilder::host_timeout`]). MPI
    /// cannot finalize without it.
    lost_host: std::cell::RefCell<Option<String>>,
    universe: std::mem::ManuallyDrop<mpi::environment::Universe>,
}

/// Writes `line` to stderr in one write, so that the lines of a job's ranks, which
/// share a stderr, never cut into each other (`eprintln!` writes piece by piece).
pub(crate) fn say(mut line: String) {
    use std::io::Write;
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(why) = self.lost_host.take() {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // The error `main` may return is never printed: this exit comes first.
            say(format!(
                "ringpipe: rank {}: {why}; MPI cannot finalize without it: exiting, status 1",
                self.rank()
            ));
            // SAFETY: `_exit` ends the process at once; nothing runs after it.
            unsafe { libc::_exit(1) }
        }
        let (finalized, wait) = std::sync::mpsc::channel::<()>();
        let rank = self.rank();
        let state = if self.synced.get() {
            "every rank had handed over its work"
        } else {
            "before the pool's last synchronisation"
        };
        let watchdog = std::thread::Builder::new().name("ringpipe-finalize".into()).spawn(move || {
            if wait.recv_timeout(FINALIZE_GRACE) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                say(format!(
                    "ringpipe: rank {rank}: MPI_Finalize has not returned in {FINALIZE_GRACE:?} \
                     ({state}); exiting without it, status 1"
                ));
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
    /// Call it once, from the main thread, after `ringpipe::worker_hook()` and before
    /// starting other threads: it first sets [`UCX_TCP_SEGMENTS`] in the environment
    /// unless either of its variables is set already.
    pub fn init() -> Result<Self, ClusterError> {
        if UCX_TCP_SEGMENTS.iter().all(|(name, _)| std::env::var_os(name).is_none()) {
            for (name, value) in UCX_TCP_SEGMENTS {
                std::env::set_var(name, value);
            }
        }
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
            lost_host: std::cell::RefCell::new(None),
            universe: std::mem::ManuallyDrop::new(universe),
        })
    }

    /// A cluster on MPI started elsewhere (unit tests: MPI starts once per process).
    #[cfg(test)]
    pub(crate) fn from_universe(universe: mpi::environment::Universe) -> Self {
        Self {
            world: universe.world(),
            host: "test".into(),
            synced: std::cell::Cell::new(false),
            lost_host: std::cell::RefCell::new(None),
            universe: std::mem::ManuallyDrop::new(universe),
        }
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
    /// A host went silent while it held the task: no message from its leader, not even
    /// the heartbeat it sends every [`HEARTBEAT`], for the pool's
    /// [`host_timeout`](ClusterPoolBuilder::host_timeout). The task did not finish; the
    /// rest of the job goes on without that host.
    HostLost {
        /// The task's index.
        index: u64,
        /// The host's rank.
        rank: i32,
        /// The host's name.
        host: String,
        /// How long it had been silent.
        silent: Duration,
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
            Self::HostLost { index, rank, host, silent } => {
                write!(f, "task {index} was lost with rank {rank} ({host}): no word from it for {silent:.1?}")
            }
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
