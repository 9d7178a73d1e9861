//! [`ClusterPool`]: its builder, the leaders' loop and the end of a job.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use ringpipe_engine::{Builder, Params, Pool, Registered, ShutdownReport, Stage};

use super::host::{Host, Local};
use super::map::ClusterMap;
use super::stats::{ClusterStats, HostShare};
use super::wire::{self, BatchError, Kind};
use super::{Cluster, ClusterError, HEARTBEAT};

/// [`ClusterPoolBuilder::host_timeout`]'s default.
const HOST_TIMEOUT: Duration = Duration::from_secs(10);

/// The least time ranks are given to find each other while the pool is built (the
/// host timeout, if longer): ranks start unevenly, the more so on a loaded machine,
/// and a host counted lost at the start is lost for the whole job.
const STARTUP: Duration = Duration::from_secs(60);

/// Configures a [`ClusterPool`]; every rank builds the same one. `L` is what each host
/// runs: a [`TaskPool`] ([`ClusterPool::builder`]) or a pipeline [`Builder`]
/// ([`ClusterPool::pipeline`]).
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClusterPoolBuilder<L = TaskPool> {
    local: L,
    batch: usize,
    credit: usize,
    master_works: bool,
    host_timeout: Duration,
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
        let ClusterPoolBuilder { local, batch, credit, master_works, host_timeout } = self;
        let pipeline = local.build().map_err(ClusterError::Build)?;
        ClusterPoolBuilder { local: (), batch, credit, master_works, host_timeout }
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

    /// How long a host holding tasks may stay silent before the master counts it lost
    /// (default 10 s; leaders send a heartbeat every [`HEARTBEAT`](super::HEARTBEAT)).
    /// Its tasks then fail with [`ClusterError::HostLost`] and the job goes on with
    /// the other hosts, as far as the MPI library lets it (see the module docs).
    ///
    /// It bounds a leader's wait on the master too: a message the master does not take
    /// within it (a heartbeat, results) means the master is gone, and
    /// [`serve`](ClusterPool::serve) returns [`ClusterError::Host`] for rank 0 instead
    /// of waiting for good; dropping the [`Cluster`] then exits with status 1. A master
    /// that is alive takes a small message at once, but a large result batch only when
    /// it next calls into the pool: keep the time between two results under this.
    pub fn host_timeout(mut self, timeout: Duration) -> Self {
        self.host_timeout = timeout.max(super::HEARTBEAT * 2);
        self
    }

    /// Starts this host's runner over `local` and, on the master, learns every host's
    /// name.
    fn finish(self, cluster: &Cluster, local: Local) -> Result<ClusterPool<'_>, ClusterError> {
        let host = Host::start(local, self.batch)
            .map_err(|e| ClusterError::Init(format!("cannot start a thread: {e}")))?;
        let world = &cluster.world;
        let mut hosts = vec![cluster.host.clone()];
        // A leader that says nothing while ranks find each other is lost from the start.
        let mut silent = Vec::new();
        let startup = self.host_timeout.max(STARTUP);
        if cluster.is_master() {
            for rank in 1..cluster.size() {
                match wire::receive_from_within(world, rank, Kind::Hello, startup) {
                    Ok(name) => hosts.push(String::from_utf8_lossy(&name).into_owned()),
                    Err(_) => {
                        hosts.push(format!("rank {rank}, silent"));
                        silent.push(rank);
                    }
                }
            }
        } else if wire::send_within(world, 0, Kind::Hello, cluster.host.as_bytes().to_vec(), startup).is_err()
        {
            return Err(master_gone(cluster, startup));
        }
        let shares = hosts
            .iter()
            .enumerate()
            .map(|(rank, host)| HostShare {
                rank: rank as i32,
                host: host.clone(),
                lost: silent.contains(&(rank as i32)),
                ..HostShare::default()
            })
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
            host_timeout: self.host_timeout,
            stranded: Cell::new(false),
            mapping: Cell::new(false),
            stopped: false,
        })
    }
}

/// The pool across hosts: see the [module docs](super).
pub struct ClusterPool<'c> {
    pub(super) cluster: &'c Cluster,
    pub(super) host: Option<Host>,
    /// Every rank's host name (on the master; on a leader only its own).
    pub(super) hosts: Vec<String>,
    /// What each host was sent and returned (counted on the master).
    pub(super) shares: RefCell<Vec<HostShare>>,
    /// The master's sends in flight (it never blocks sending: see [`wire::Outbox`]).
    pub(super) outbox: RefCell<wire::Outbox>,
    pub(super) batch: usize,
    pub(super) credit: usize,
    pub(super) master_works: bool,
    pub(super) host_timeout: Duration,
    /// Set while a map holds sends to a lost host that MPI may still read from the
    /// caller's memory; only a map forgotten (`mem::forget`) leaves it set.
    pub(super) stranded: Cell<bool>,
    /// Set while a map of this pool is alive (one at a time: see [`map`](Self::map)).
    pub(super) mapping: Cell<bool>,
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
        ClusterPoolBuilder { local, batch: 64, credit: 3, master_works: true, host_timeout: HOST_TIMEOUT }
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
        let mut last_sent = Instant::now();
        // The buffer the next message's bytes go into (task tables, mostly).
        let mut table = Vec::new();
        loop {
            let mut worked = false;
            // Nothing of a message moving to or from the master for the host timeout:
            // it is gone.
            let gone = |_| master_gone(self.cluster, self.host_timeout);
            let send =
                |kind, bytes| wire::send_within(world, 0, kind, bytes, self.host_timeout).map_err(gone);
            while let Some(r) = host.try_results() {
                let batch = r.map_err(|message| ClusterError::Host { rank, message })?;
                send(Kind::Results, batch)?;
                last_sent = Instant::now();
                worked = true;
            }
            if last_sent.elapsed() >= HEARTBEAT {
                send(Kind::Alive, Vec::new())?;
                last_sent = Instant::now();
            }
            if let Some(msg) = wire::try_receive(world, || std::mem::take(&mut table), self.host_timeout) {
                let msg = msg.map_err(gone)?;
                worked = true;
                match msg.kind {
                    Kind::Tasks => {
                        let host_error = |message| ClusterError::Host { rank, message };
                        // One spare of the host's in, one batch out: the buffer not
                        // used takes the next message.
                        let (batch, unused) =
                            wire::receive_tasks(world, 0, msg.bytes, host.spare(), self.host_timeout)
                                .map_err(|e| match e {
                                    BatchError::Malformed(e) => {
                                        host_error(format!("a task batch is malformed: {e}"))
                                    }
                                    BatchError::Stalled(s) => gone(s),
                                })?;
                        table = unused;
                        host.submit(batch).map_err(host_error)?
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
            idle.after(worked, false, Some(&host));
        }
        host.stop();
        self.stopped = true;
        // The last synchronisation before MPI_Finalize, through the master only (see
        // `stop`). The master answers once every leader is done or lost, each within a
        // host timeout of its last word.
        let gone = |_| master_gone(self.cluster, self.host_timeout);
        wire::send_within(world, 0, Kind::Done, Vec::new(), self.host_timeout).map_err(gone)?;
        wire::receive_from_within(world, 0, Kind::Done, 2 * self.host_timeout).map_err(gone)?;
        self.cluster.synced.set(true);
        Ok(())
    }

    /// On the master: runs `tasks` across the hosts; results in input order, each
    /// tagged with its index.
    ///
    /// One map at a time: creating a second map of the same pool while the first is
    /// alive (or was forgotten with `mem::forget`) panics, since the second would take
    /// the first one's results as its own. A map dropped early (a `?` on a failed
    /// task, a `break`) first waits for the tasks the hosts still hold and drops their
    /// results; tasks not yet sent are not run. A task of 64 KiB or more is sent from
    /// where `tasks` keep it, and the map waits for MPI to be done with it before it
    /// goes on (see the [module docs](super)).
    ///
    /// If the master's own host fails (its runner ends), the tasks it holds fail with
    /// [`ClusterError::Task`] and the rest go to the other hosts; with no host left,
    /// the map ends with a [`ClusterError::Host`].
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

    /// Whether the master counted host `rank` lost (see [`ClusterPoolBuilder::host_timeout`]).
    pub fn is_lost(&self, rank: i32) -> bool {
        self.shares.borrow().get(rank as usize).is_some_and(|s| s.lost)
    }

    /// On the master: tells every leader to stop, and stops this host's pool.
    pub fn shutdown(mut self) -> Option<ShutdownReport> {
        self.stop()
    }

    fn stop(&mut self) -> Option<ShutdownReport> {
        if std::mem::replace(&mut self.stopped, true) {
            return None;
        }
        if self.stranded.get() {
            super::map::exit_stranded(self.cluster.rank()); // MPI would go on reading them
        }
        let report = self.host.take().and_then(Host::stop);
        if self.cluster.is_master() {
            let world = &self.cluster.world;
            let live: Vec<i32> = (1..self.cluster.size()).filter(|&r| !self.is_lost(r)).collect();
            let mut outbox = self.outbox.borrow_mut();
            for &rank in &live {
                outbox.send(world, rank, Kind::Stop, Vec::new());
            }
            // Every rank done before any finalizes: without it ranks over TCP hung in
            // MPI_Finalize. A star through the master rather than MPI_Barrier: leaders
            // never talk to each other, so they open no connections between them
            // (hangs in finalize were seen more often with more of them). What else
            // comes meanwhile (heartbeats) is dropped; a leader silent for the host
            // timeout is lost, not waited for.
            let mut waiting: Vec<(i32, Instant)> = live.iter().map(|&r| (r, Instant::now())).collect();
            let mut done = Vec::new();
            let mut idle = Backoff::default();
            while !waiting.is_empty() {
                let msg = match wire::try_receive(world, Vec::new, self.host_timeout) {
                    Some(Err(stalled)) => {
                        self.shares.borrow_mut()[stalled.rank as usize].lost = true;
                        None
                    }
                    msg => msg.and_then(Result::ok),
                };
                if let Some(msg) = &msg {
                    if let Some(w) = waiting.iter_mut().find(|(r, _)| *r == msg.rank) {
                        w.1 = Instant::now();
                    }
                    if msg.kind == Kind::Done {
                        waiting.retain(|(r, _)| *r != msg.rank);
                        done.push(msg.rank);
                    }
                }
                for &(rank, heard) in &waiting {
                    if heard.elapsed() > self.host_timeout {
                        self.shares.borrow_mut()[rank as usize].lost = true;
                    }
                }
                waiting.retain(|&(rank, _)| !self.is_lost(rank));
                let sending = !outbox.progress();
                idle.after(msg.is_some(), sending, None);
            }
            for &rank in &done {
                outbox.send(world, rank, Kind::Done, Vec::new());
            }
            // What is still on its way to a lost host stays in the outbox, unsent.
            outbox.flush(|rank| self.is_lost(rank));
            if done.len() + 1 < self.cluster.size() as usize {
                // MPI cannot finalize (see `Cluster`).
                let lost: Vec<String> = (1..self.cluster.size())
                    .filter(|r| !done.contains(r))
                    .map(|r| format!("{r} ({})", self.hosts[r as usize]))
                    .collect();
                *self.cluster.lost_host.borrow_mut() = Some(format!("lost rank {}", lost.join(", ")));
                return report;
            }
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

/// How a rank waits when a poll found nothing. MPI offers no wait on "a message or a
/// local result", so it polls at a [`Pace`](wire::Pace), capped at [`IDLE_WAIT`]. A wait
/// on the host's results ends as soon as one comes, so only MPI messages can wait that
/// long; leaders hold a few batches of credit, which covers it. While a send of the
/// master's is in flight it only yields between polls, never sleeps: a large
/// `MPI_Isend` moves only while MPI is called, and every host waits on the master.
///
/// Polling without a pause, as before, took 40% of a core from each host's workers
/// (every poll is a system call inside MPI).
#[derive(Default)]
pub(super) struct Backoff(wire::Pace);

/// The longest wait between two polls.
pub(super) const IDLE_WAIT: Duration = Duration::from_micros(200);

impl Backoff {
    /// After a poll: `worked` if it found anything; `sending` if a send is in flight;
    /// `host` is this rank's own host, whose results end a wait.
    pub(super) fn after(&mut self, worked: bool, sending: bool, host: Option<&Host>) {
        if worked {
            self.0.reset();
            return;
        }
        let cap = if sending { Duration::ZERO } else { IDLE_WAIT };
        self.0.wait(cap, host);
    }
}

/// On a leader whose master took or sent nothing for `timeout` while it had to: the
/// error, and MPI marked unable to finalize (a rank that died never answers), so that
/// dropping the [`Cluster`] exits at once, saying so.
fn master_gone(cluster: &Cluster, timeout: Duration) -> ClusterError {
    let message = format!("the master took or sent nothing for {timeout:?}; it is gone");
    *cluster.lost_host.borrow_mut() = Some(format!("rank 0 (the master): {message}"));
    ClusterError::Host { rank: 0, message }
}
