//! [`ClusterMap`]: the master's dispatch of tasks to hosts, and their results.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

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
    pub(super) fn new(
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
