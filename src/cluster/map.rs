//! [`ClusterMap`]: the master's dispatch of tasks to hosts, and their results.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpi::request::{Request, StaticScope};

use super::pool::{Backoff, ClusterPool};
use super::wire::{self, Kind};
use super::ClusterError;

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

/// Its index, host and length: not its bytes, which may be megabytes.
impl std::fmt::Debug for ClusterOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOutput")
            .field("index", &self.index)
            .field("rank", &self.rank)
            .field("host", &self.host)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl std::ops::Deref for ClusterOutput {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.batch[self.bytes.clone()]
    }
}

/// Hashes a task index with one multiplication: indices are distinct integers, and this
/// set is touched twice per task on the master's hot path.
#[derive(Default)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IndexSet = HashSet<u64, BuildHasherDefault<IndexHasher>>;

/// Ends the process if a panic unwinds while MPI may still read a task's bytes from
/// memory that the unwinding would free.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        eprintln!("ringpipe: a panic while MPI was reading a task from the caller's memory; aborting");
        std::process::abort();
    }
}

/// Results of [`ClusterPool::map`] and its siblings.
#[must_use = "an iterator does nothing until it is consumed"]
pub struct ClusterMap<'p, I: Iterator> {
    pool: &'p ClusterPool<'p>,
    tasks: I,
    ordered: bool,
    exhausted: bool,
    next_index: u64,
    /// Tasks each rank holds now.
    outstanding: Vec<usize>,
    /// Their indices: failed by name if the host is lost (or, on the master's host,
    /// if its runner ends).
    in_flight: Vec<IndexSet>,
    /// When each rank was last heard from.
    last_heard: Vec<Instant>,
    /// In order: results by index until their turn; unordered: in arrival order.
    ready: BTreeMap<u64, Result<ClusterOutput, ClusterError>>,
    arrived: VecDeque<Result<ClusterOutput, ClusterError>>,
    next_out: u64,
    skip: HashSet<u64>,
    record: Option<File>,
    hosts: Vec<Arc<str>>,
    idle: Backoff,
    /// Sends of tasks to hosts lost before MPI was done with them, and the tasks they
    /// read, kept as long as the map lives (see [`Drop`]).
    stranded: Vec<Request<'static, [u8], StaticScope>>,
    kept: Vec<Batches<I::Item>>,
}

/// Batches of tasks by rank.
type Batches<T> = Vec<(usize, Vec<(u64, T)>)>;

impl<'p, I, T> ClusterMap<'p, I>
where
    I: Iterator<Item = T>,
    T: AsRef<[u8]>,
{
    pub(super) fn new(
        pool: &'p ClusterPool<'p>,
        tasks: I,
        ordered: bool,
        skip: HashSet<u64>,
        record: Option<File>,
    ) -> Self {
        assert!(pool.cluster.is_master(), "only the master (rank 0) maps; leaders serve()");
        if pool.stranded.get() {
            exit_stranded(pool.cluster.rank()); // a map was forgotten with them
        }
        // A second map would take the first one's results as its own (indices start
        // at 0 in both): refused, like a second `RefCell::borrow_mut`.
        assert!(
            !pool.mapping.replace(true),
            "one map at a time per ClusterPool: another map of this pool is still alive, or was forgotten"
        );
        let ranks = pool.cluster.size() as usize;
        Self {
            pool,
            tasks,
            ordered,
            exhausted: false,
            next_index: 0,
            outstanding: vec![0; ranks],
            in_flight: (0..ranks).map(|_| IndexSet::default()).collect(),
            last_heard: vec![Instant::now(); ranks],
            ready: BTreeMap::new(),
            arrived: VecDeque::new(),
            next_out: 0,
            skip,
            record,
            hosts: pool.hosts.iter().map(|h| Arc::from(h.as_str())).collect(),
            idle: Backoff::default(),
            stranded: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Sends every host the batches it has room for, one host after another, while
    /// tasks are left. Room is counted once, here: credit that comes back while a
    /// batch is being sent waits for the next call, so the hosts take turns and the
    /// caller gets its results.
    fn dispatch(&mut self) {
        let limit = self.pool.batch * self.pool.credit;
        let ranks = self.outstanding.len() as i32;
        // The master's host works too if asked, or once every other host is lost.
        let everyone_lost = (1..ranks).all(|r| self.pool.is_lost(r));
        let first = usize::from(!self.pool.master_works && !everyone_lost);
        let mut room: Vec<usize> = (0..self.outstanding.len())
            .map(|rank| match rank < first || self.pool.is_lost(rank as i32) {
                true => 0,
                false => limit.saturating_sub(self.outstanding[rank]) / self.pool.batch,
            })
            .collect();
        // Every batch first (the caller's iterator runs here), then every send, then
        // the wait for those that read the caller's memory.
        let mut batches = Vec::new();
        while !self.exhausted && room.iter().any(|&r| r > 0) {
            for (rank, room) in room.iter_mut().enumerate() {
                if *room == 0 || self.exhausted {
                    continue;
                }
                *room -= 1;
                let mut tasks = Vec::with_capacity(self.pool.batch);
                while tasks.len() < self.pool.batch {
                    let Some(task) = self.tasks.next() else {
                        self.exhausted = true;
                        break;
                    };
                    let index = self.next_index;
                    self.next_index += 1;
                    if !self.skip.contains(&index) {
                        tasks.push((index, task));
                    }
                }
                if !tasks.is_empty() {
                    batches.push((rank, tasks));
                }
            }
        }
        // Each task's bytes, asked for once (the caller's `as_ref`, before any send
        // starts): the table and the sends agree on them.
        let bytes: Vec<Vec<&[u8]>> =
            batches.iter().map(|(_, tasks)| tasks.iter().map(|(_, t)| t.as_ref()).collect()).collect();
        let guard = AbortOnUnwind;
        let mut reading = Vec::new();
        for ((rank, tasks), bytes) in batches.iter().zip(&bytes) {
            // SAFETY: `batches` outlives the requests: they complete before it is
            // dropped, and a panic meanwhile aborts (`guard`).
            reading.extend(unsafe { self.send_batch(*rank, tasks, bytes) });
        }
        let stranded = self.wait_sends(reading);
        std::mem::forget(guard);
        drop(bytes);
        if stranded {
            self.kept.push(batches);
        } else {
            // Only now may the tasks go: no send reads them any more.
            drop(batches);
        }
    }

    /// Sends a batch of tasks, whose bytes are `bytes`, to `rank`'s host. To another
    /// host, each task of [`wire::OUT_OF_LINE`] bytes or more goes straight from the
    /// caller's memory; the requests that read it are returned.
    ///
    /// # Safety
    /// `tasks` (which `bytes` borrow) must stay as they are until every returned
    /// request has completed ([`wait_sends`](Self::wait_sends)).
    unsafe fn send_batch(
        &mut self,
        rank: usize,
        tasks: &[(u64, T)],
        bytes: &[&[u8]],
    ) -> Vec<(usize, Request<'static, [u8], StaticScope>)> {
        let n = tasks.len();
        self.outstanding[rank] += n;
        {
            let mut shares = self.pool.shares.borrow_mut();
            shares[rank].sent += n as u64;
            shares[rank].bytes_in += bytes.iter().map(|b| b.len() as u64).sum::<u64>();
        }
        if rank == 0 {
            self.in_flight[0].extend(tasks.iter().map(|(index, _)| *index));
            let host = self.pool.host.as_ref().expect("the master's host runs while mapping");
            // A spare buffer from the host's last batch.
            let mut batch = host.spare();
            batch.clear();
            for ((index, _), b) in tasks.iter().zip(bytes) {
                wire::put_task(&mut batch, *index, b);
            }
            if let Err(message) = host.submit(batch) {
                self.arrived.push_back(Err(ClusterError::Host { rank: 0, message }));
            }
            return Vec::new();
        }
        let world = &self.pool.cluster.world;
        let mut table = self.pool.outbox.borrow_mut().buffer();
        for ((index, _), b) in tasks.iter().zip(bytes) {
            wire::put_table_entry(&mut table, *index, b);
            self.in_flight[rank].insert(*index);
        }
        self.pool.outbox.borrow_mut().send(world, rank as i32, Kind::Tasks, table);
        let mut reading = Vec::new();
        for b in bytes.iter().filter(|b| b.len() >= wire::OUT_OF_LINE) {
            // SAFETY: the caller keeps `tasks` as they are until these complete.
            let requests = unsafe { wire::send_out_of_line(world, rank as i32, b) };
            reading.extend(requests.into_iter().map(|r| (rank, r)));
        }
        reading
    }

    /// Waits until MPI is done with every send that reads the caller's memory: no
    /// send may read a task once its owner could drop it, and a map cannot keep what
    /// it borrowed past its own life (`mem::forget`), so none is left in flight when
    /// the map runs the caller's code or hands back a result. Results come in
    /// meanwhile, as ever (a host may be sending them to us).
    ///
    /// A send to a host lost meanwhile may never complete: it is kept, stranded, and
    /// true is returned: its tasks must then be kept as long as the map lives.
    fn wait_sends(&mut self, mut reading: Vec<(usize, Request<'static, [u8], StaticScope>)>) -> bool {
        let stranded = self.stranded.len();
        let mut idle = Backoff::default();
        loop {
            let mut live = Vec::new();
            for (rank, r) in reading {
                match r.test() {
                    Ok(_) => {}
                    Err(r) if self.pool.is_lost(rank as i32) => self.stranded.push(r),
                    Err(r) => live.push((rank, r)),
                }
            }
            reading = live;
            if reading.is_empty() {
                break;
            }
            let came = self.collect();
            self.pool.outbox.borrow_mut().progress();
            if !came {
                self.check_hosts();
            }
            idle.after(came, true, self.pool.host.as_ref());
        }
        if self.stranded.len() > stranded {
            self.pool.stranded.set(true);
        }
        self.stranded.len() > stranded
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

/// What needs nothing of the tasks: taking results in, and losing hosts.
impl<I: Iterator> ClusterMap<'_, I> {
    /// Takes in every result batch that is there; true if any came.
    fn collect(&mut self) -> bool {
        let mut batches = Vec::new();
        if let Some(host) = self.pool.host.as_ref() {
            while let Some(r) = host.try_results() {
                batches.push((0, r));
            }
        }
        let mut heard = None;
        while let Some(msg) = wire::try_receive(&self.pool.cluster.world, Vec::new, self.pool.host_timeout) {
            let msg = match msg {
                Ok(msg) => msg,
                // It sent a message's start, then nothing for the host timeout.
                Err(stalled) => {
                    self.lose_silent(stalled.rank as usize, stalled.waited);
                    continue;
                }
            };
            let now = *heard.get_or_insert_with(Instant::now);
            if let Some(t) = self.last_heard.get_mut(msg.rank as usize) {
                *t = now;
            }
            match msg.kind {
                Kind::Alive => {}
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
        if self.pool.is_lost(rank) {
            return; // its tasks were failed as lost; a late answer is not taken twice
        }
        let host_error = |message| Err(ClusterError::Host { rank, message });
        let batch = match batch {
            Ok(b) => Arc::new(b),
            // The master's runner ended: its tasks will not come back.
            Err(message) if rank == 0 => return self.lose_own_host(message),
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
            if !self.in_flight[rank as usize].remove(&e.index) {
                let message = format!("a result for task {}, which it was not running", e.index);
                self.arrived.push_back(host_error(message));
                continue;
            }
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

    /// Counts lost every other host that holds tasks and has been silent past the
    /// pool's host timeout, and fails its tasks.
    fn check_hosts(&mut self) {
        let now = Instant::now();
        for rank in 1..self.outstanding.len() {
            let silent = now.saturating_duration_since(self.last_heard[rank]);
            if self.in_flight[rank].is_empty() || silent <= self.pool.host_timeout {
                continue;
            }
            self.lose_silent(rank, silent);
        }
    }

    /// Counts host `rank` lost after it was `silent` so long: its tasks fail.
    fn lose_silent(&mut self, rank: usize, silent: Duration) {
        let host = self.hosts[rank].to_string();
        self.lose(rank, |index| ClusterError::HostLost {
            index,
            rank: rank as i32,
            host: host.clone(),
            silent,
        });
    }

    /// The master's own host failed (its runner ended, saying `message`): its tasks
    /// fail, each by index, and the map goes on with the other hosts.
    fn lose_own_host(&mut self, message: String) {
        let host = self.hosts[0].to_string();
        let message = format!("this host failed: {message}");
        self.lose(0, |index| ClusterError::Task {
            index,
            rank: 0,
            host: host.clone(),
            message: message.clone(),
        });
    }

    /// Marks `rank` lost and fails every task it holds with `error(index)`.
    fn lose(&mut self, rank: usize, error: impl Fn(u64) -> ClusterError) {
        self.pool.shares.borrow_mut()[rank].lost = true;
        self.outstanding[rank] = 0;
        let mut lost: Vec<u64> = self.in_flight[rank].drain().collect();
        lost.sort_unstable();
        for index in lost {
            if self.ordered {
                self.ready.insert(index, Err(error(index)));
            } else {
                self.arrived.push_back(Err(error(index)));
            }
        }
    }

    /// Waits for every task a live host still holds, dropping the results: a map
    /// dropped early (a `?` on a failed task, a `break`) must not leave them to the
    /// pool's next map, which would take them as its own. Bounded: a host that holds
    /// tasks answers, or goes silent and is lost after the host timeout.
    fn drain(&mut self) {
        let mut idle = Backoff::default();
        while (0..self.outstanding.len()).any(|r| self.outstanding[r] > 0 && !self.pool.is_lost(r as i32)) {
            let came = self.collect();
            let sending = !self.pool.outbox.borrow_mut().progress();
            if !came {
                self.check_hosts();
            }
            idle.after(came, sending, self.pool.host.as_ref());
        }
    }
}

/// A map that stranded sends to a lost host (see `wait_sends`) ends the process when
/// it ends: MPI may still read those tasks, and whatever they borrowed goes with the
/// map. MPI cannot finalize without the host either, so the master would end with
/// status 1 regardless (see [`Cluster`](super::Cluster)); this is only sooner, once
/// every result, the lost host's typed errors included, was handed over.
impl<I: Iterator> Drop for ClusterMap<'_, I> {
    fn drop(&mut self) {
        self.drain();
        self.pool.mapping.set(false);
        self.stranded =
            std::mem::take(&mut self.stranded).into_iter().filter_map(|r| r.test().err()).collect();
        if self.stranded.is_empty() {
            return;
        }
        exit_stranded(self.pool.cluster.rank());
    }
}

/// Ends the process: sends of tasks to a lost host may still read memory that is about
/// to be freed.
pub(super) fn exit_stranded(rank: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    super::say(format!(
        "ringpipe: rank {rank}: tasks were on their way to a lost host, and MPI may still read \
         them from the caller's memory; exiting, status 1"
    ));
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(1) }
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
            if !self.exhausted && (0..self.outstanding.len()).all(|r| self.pool.is_lost(r as i32)) {
                // No host is left to run the rest: they are not taken from the caller.
                self.exhausted = true;
                let message = "every host is lost or failed; the tasks not yet sent were not run".into();
                self.arrived.push_back(Err(ClusterError::Host { rank: 0, message }));
                continue;
            }
            if self.exhausted && self.outstanding.iter().all(|&n| n == 0) {
                // Results may have come in while dispatch waited for its sends: they are
                // handed over before the end, even past a gap in the order.
                return self.pop().or_else(|| self.ready.pop_first().map(|(_, r)| r)).map(|r| {
                    match self.record(&r) {
                        Ok(()) => r,
                        Err(e) => Err(e),
                    }
                });
            }
            let came = self.collect();
            // While a send is in flight the master keeps MPI moving, as a blocking send
            // would: a large message advances only while MPI is being called.
            let sending = !self.pool.outbox.borrow_mut().progress();
            if !came {
                self.check_hosts();
            }
            self.idle.after(came, sending, self.pool.host.as_ref());
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cluster::{host::Host, Cluster};
    use crate::{BoxError, Frame, Pipeline, Registered, Stage, StageSpec};

    /// Adds one to every byte, on a thread of the host (no worker process to start).
    struct AddOne;

    impl Stage for AddOne {
        fn process(&mut self, f: &mut Frame<'_>) -> Result<(), BoxError> {
            f.bytes_mut().iter_mut().for_each(|b| *b = b.wrapping_add(1));
            Ok(())
        }
    }

    impl Registered for AddOne {
        const NAME: &'static str = "test.cluster.add_one";
        type Params = ();
        fn from_params((): ()) -> Result<Self, BoxError> {
            Ok(AddOne)
        }
    }

    crate::register!(AddOne);

    fn tasks(n: usize, first: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![first.wrapping_add(i as u8); 16]).collect()
    }

    /// Every result is its own task's, each task once.
    fn assert_own_results(results: Vec<Result<ClusterOutput, ClusterError>>, tasks: &[Vec<u8>]) {
        let mut seen = vec![false; tasks.len()];
        for r in results {
            let out = r.expect("no task fails");
            let i = out.index() as usize;
            let expected: Vec<u8> = tasks[i].iter().map(|b| b.wrapping_add(1)).collect();
            assert_eq!(&out[..], &expected[..], "task {i}'s result");
            assert!(!std::mem::replace(&mut seen[i], true), "task {i} came back twice");
        }
        assert!(seen.iter().all(|&s| s), "every task came back");
    }

    /// Run by `wire`'s test, which starts MPI (once per process): a one-rank job.
    pub(crate) fn maps_on_one_rank(cluster: &Cluster) {
        let mut pool = ClusterPool::pipeline(Pipeline::builder().stage(StageSpec::thread::<AddOne>(())))
            .batch(4)
            .credit(2)
            .build(cluster)
            .expect("a one-rank pool of a thread stage");

        // A map dropped after 3 results, with tasks still out on the host, leaves none
        // of them to the next map (whose indices start at 0 too).
        let abandoned = tasks(100, 0);
        assert_eq!(pool.map_unordered(abandoned.iter()).take(3).count(), 3);
        let next = tasks(100, 100);
        assert_own_results(pool.map_unordered(next.iter()).collect(), &next);
        assert_eq!(pool.map(abandoned.iter()).take(5).count(), 5);
        assert_own_results(pool.map(next.iter()).collect(), &next);

        // One map at a time: a second one while the first is alive is refused.
        let alive = pool.map(next.iter());
        let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(pool.map(next.iter()))));
        assert!(second.is_err(), "a second map while one is alive panics");
        drop(alive);
        assert_own_results(pool.map(next.iter()).collect(), &next);

        // The master's own host fails (its runner is gone): the tasks it was given fail
        // by index, and with no host left the map ends with an error, never hangs.
        let host = pool.host.replace(Host::gone_for_tests(&[])).expect("the pool's host");
        host.stop();
        let results: Vec<_> = pool.map(next.iter()).collect();
        let mut failed = HashSet::new();
        for r in &results {
            match r {
                Err(ClusterError::Task { index, rank: 0, message, .. }) => {
                    assert!(message.contains("this host failed"), "{message}");
                    assert!(failed.insert(*index), "task {index} failed twice");
                }
                Err(ClusterError::Host { rank: 0, .. }) => {}
                other => panic!("expected the host's failure, got {other:?}"),
            }
        }
        assert_eq!(failed.len(), 2 * 4, "the tasks of the two batches of credit it was given");
        let last = results.iter().rev().find_map(|r| match r {
            Err(ClusterError::Host { message, .. }) if message.contains("every host") => Some(message),
            _ => None,
        });
        assert!(last.is_some(), "the map says no host is left: {results:?}");
        assert!(pool.is_lost(0));
    }
}
