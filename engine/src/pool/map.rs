//! Running tasks through a pool: dispatch, collection, ordering, dead workers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{handshake, Pending, Pool, PoolError, DOORBELL};
use crate::frame::{OwnedSlot, STATUS_FAILED};
use crate::memory::{Segment, StageRecord};
use crate::worker::spawn;

/// How long the parent parks before re-checking for dead workers by itself.
const PARK: Duration = Duration::from_millis(100);

/// One task's result, read in place; dropping it gives its frame back to the pool.
pub struct PoolOutput {
    seg: Arc<Segment>,
    slot: Option<OwnedSlot>,
    len: usize,
    index: u64,
    worker: usize,
    pid: u32,
    free: Arc<Mutex<Vec<OwnedSlot>>>,
}

impl PoolOutput {
    /// The task's index: its position in the iterator given to `map`.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The worker that ran it.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// That worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The result as a slice of `U` (frames are 128-byte aligned).
    pub fn cast<U: bytemuck::Pod>(&self) -> Result<&[U], crate::FrameError> {
        bytemuck::try_cast_slice(self)
            .map_err(|_| crate::FrameError::Header { needed: std::mem::size_of::<U>(), len: self.len })
    }
}

impl std::ops::Deref for PoolOutput {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.slot.as_ref().expect("present until drop").payload(&self.seg)[..self.len]
    }
}

impl Drop for PoolOutput {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.free.lock().push(slot);
        }
    }
}

impl std::fmt::Debug for PoolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolOutput")
            .field("index", &self.index)
            .field("worker", &self.worker)
            .field("len", &self.len)
            .finish()
    }
}

/// A result with the index of its task.
type Tagged = (u64, Result<PoolOutput, PoolError>);

/// Collection and replacement, shared by [`PoolMap`] and its `Drop`.
impl Pool {
    pub(super) fn take_result(&mut self, w: usize, desc: u64) -> Result<Tagged, PoolError> {
        let pool = self;
        let seg = &pool.seg;
        let slot = OwnedSlot::from_descriptor(seg, desc)
            .map_err(|b| PoolError::Corrupt(format!("worker {w} returned descriptor {}", b.0)))?;
        let h = slot.header(seg);
        let index = u64::from(h.ticket) | (u64::from(h.generation) << 32);
        let worker = &mut pool.workers[w];
        let pending = match worker.queue.pop_front() {
            Some(p) if p.index == index && h.len as usize <= seg.layout().slot_capacity() => p,
            _ => return Err(PoolError::Corrupt(format!("worker {w} returned task {index} out of turn"))),
        };
        if pending.slot != slot.index() {
            worker.spare = pending.slot; // the task function replaced its frame
        }
        pool.in_flight -= 1;
        if h.status == STATUS_FAILED {
            let message = slot.error_text(seg, h.error_len);
            pool.free.lock().push(slot);
            return Ok((index, Err(PoolError::TaskFailed { index, message })));
        }
        let out = PoolOutput {
            seg: seg.clone(),
            slot: Some(slot),
            len: h.len as usize,
            index,
            worker: w,
            pid: worker.process.child.id(),
            free: pool.free.clone(),
        };
        Ok((index, Ok(out)))
    }

    /// Replaces dead worker `w` on the same rings. Returns what it published before
    /// dying, and the task it held as failed (or re-sends it, once, with retries on).
    pub(super) fn replace(&mut self, w: usize) -> Result<Vec<Tagged>, PoolError> {
        let (pid, status) = {
            let child = &mut self.workers[w].process.child;
            (child.id(), child.wait().map_or_else(|e| e.to_string(), |s| s.to_string()))
        };
        let mut results = Vec::new();
        // What it published is good; collect it before deciding what it held.
        while let Ok(Some(desc)) = self.workers[w].output.try_pop() {
            results.push(self.take_result(w, desc)?);
        }
        let seg = self.seg.clone();
        let worker = &mut self.workers[w];
        // Tasks still in its input ring were never touched: the replacement serves them.
        // The one it popped without publishing a result was held when it died.
        let unread = worker.input.queued() as usize;
        let held = worker.queue.len().saturating_sub(unread);
        let held: Vec<Pending> = worker.queue.drain(..held).collect();
        // The dead worker owned the held tasks' frames and its spare (as a set; a
        // `replace` swaps within it). The replacement gets the spare; the rest are free.
        let record = seg.stage(w).map_err(|e| PoolError::Corrupt(e.to_string()))?;
        seg.write_stage(w, StageRecord { spare_slot: worker.spare, ..record });
        self.in_flight -= held.len();
        for p in &held {
            // SAFETY: the slot of the task the dead worker held; it is dead and its
            // replacement not started.
            self.free.lock().push(unsafe { OwnedSlot::assigned(&seg, p.slot) }.expect("slot of ours"));
        }
        let restart = |message: String| PoolError::Restart { worker: w, message };
        let mut process = spawn::spawn(&self.fd, w, w).map_err(|e| restart(e.to_string()))?;
        handshake(&mut process, crate::wait::deadline_after(self.startup_timeout), w, &self.task)
            .map_err(|e| restart(e.to_string()))?;
        self.watch.replace(w, &process.status).map_err(|e| restart(e.to_string()))?;
        self.workers[w].process = process;
        self.restarts += 1;
        for p in held {
            match p.retry {
                Some(bytes) => {
                    let slot = self.free.lock().pop().expect("its own frame was just freed");
                    // Sent with no retry left: a second death fails it.
                    self.send(self.least_loaded(), slot, &bytes, p.index, None)?;
                }
                None => {
                    let e = PoolError::WorkerDied { index: p.index, worker: w, pid, status: status.clone() };
                    results.push((p.index, Err(e)));
                }
            }
        }
        Ok(results)
    }

    /// Parks until a worker publishes or dies (or a short timeout passes).
    pub(super) fn park(&mut self) {
        let (workers, watch) = (&mut self.workers, &self.watch);
        self.seg.ring_header(DOORBELL).wait_doorbell(
            || watch.any_dead() || workers.iter_mut().any(|w| !matches!(w.output.has_data(), Ok(false))),
            PARK,
        );
    }
}

/// Results of [`Pool::map`] (in task order) or [`Pool::map_unordered`].
pub struct PoolMap<'p, I, T> {
    pool: &'p mut Pool,
    _task: std::marker::PhantomData<fn() -> T>,
    tasks: I,
    ordered: bool,
    exhausted: bool,
    /// Index the next task gets.
    next_task: u64,
    /// Ordered: index of the next result to yield.
    next_out: u64,
    by_index: BTreeMap<u64, Result<PoolOutput, PoolError>>,
    in_order: VecDeque<Result<PoolOutput, PoolError>>,
    /// A terminal error, yielded once, after which the map ends.
    fatal: Option<PoolError>,
    done: bool,
}

impl<'p, I, T> PoolMap<'p, I, T> {
    pub(super) fn new(pool: &'p mut Pool, tasks: I, ordered: bool) -> Self {
        Self {
            pool,
            _task: std::marker::PhantomData,
            tasks,
            ordered,
            exhausted: false,
            next_task: 0,
            next_out: 0,
            by_index: BTreeMap::new(),
            in_order: VecDeque::new(),
            fatal: None,
            done: false,
        }
    }

    fn push_result(&mut self, index: u64, r: Result<PoolOutput, PoolError>) {
        if self.ordered {
            self.by_index.insert(index, r);
        } else {
            self.in_order.push_back(r);
        }
    }

    fn take_ready(&mut self) -> Option<Result<PoolOutput, PoolError>> {
        if !self.ordered {
            return self.in_order.pop_front();
        }
        let r = self.by_index.remove(&self.next_out)?;
        self.next_out += 1;
        Some(r)
    }

    fn results_held(&self) -> bool {
        !self.by_index.is_empty() || !self.in_order.is_empty()
    }
}

impl<I, T> PoolMap<'_, I, T>
where
    I: Iterator,
    I::Item: AsRef<[T]>,
    T: bytemuck::Pod,
{
    /// Hands out tasks while frames are free and fewer than `max_in_flight` are out.
    fn fill(&mut self) {
        let capacity = self.pool.seg.layout().slot_capacity();
        while !self.exhausted {
            let Some(slot) = self.pool.free.lock().pop() else { return };
            let Some(task) = self.tasks.next() else {
                self.exhausted = true;
                self.pool.free.lock().push(slot);
                return;
            };
            let index = self.next_task;
            self.next_task += 1;
            let bytes: &[u8] = bytemuck::cast_slice(task.as_ref());
            if bytes.len() > capacity {
                self.pool.free.lock().push(slot);
                self.push_result(index, Err(PoolError::TooLarge { index, requested: bytes.len(), capacity }));
                continue;
            }
            if let Err(e) = self.pool.dispatch(bytes, slot, index) {
                self.fatal = Some(e);
                return;
            }
        }
    }

    /// Takes every result the workers published; returns how many.
    fn collect(&mut self) -> usize {
        let mut got = 0;
        for w in 0..self.pool.workers.len() {
            loop {
                let desc = match self.pool.workers[w].output.try_pop() {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => {
                        self.fatal = Some(PoolError::Corrupt(e.to_string()));
                        return got;
                    }
                };
                match self.pool.take_result(w, desc) {
                    Ok((index, r)) => self.push_result(index, r),
                    Err(e) => {
                        self.fatal = Some(e);
                        return got;
                    }
                }
                got += 1;
            }
        }
        got
    }

    /// Replaces dead workers; fails (or re-sends) the task each one held.
    fn bury(&mut self) {
        for w in self.pool.watch.take_dead() {
            match self.pool.replace(w) {
                Ok(results) => results.into_iter().for_each(|(index, r)| self.push_result(index, r)),
                Err(e) => {
                    self.fatal = Some(e);
                    return;
                }
            }
        }
    }
}

impl<I, T> Iterator for PoolMap<'_, I, T>
where
    I: Iterator,
    I::Item: AsRef<[T]>,
    T: bytemuck::Pod,
{
    type Item = Result<PoolOutput, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(r) = self.take_ready() {
                return Some(r);
            }
            if let Some(e) = self.fatal.take() {
                self.done = true;
                return Some(Err(e));
            }
            self.fill();
            if self.collect() > 0 || self.fatal.is_some() {
                continue;
            }
            if self.pool.watch.any_dead() {
                self.bury();
                continue;
            }
            if self.pool.in_flight == 0 {
                if self.exhausted && !self.results_held() {
                    self.done = true;
                    return None;
                }
                if !self.exhausted && self.pool.free.lock().is_empty() && !self.results_held() {
                    // Every frame is in a result the caller still holds: waiting would
                    // deadlock. Terminal, like `Pipeline::map`.
                    self.fatal = Some(PoolError::Saturated);
                }
                continue;
            }
            self.pool.park();
        }
    }
}

impl<I, T> Drop for PoolMap<'_, I, T> {
    /// Results still out are taken back and dropped (dead workers replaced as usual),
    /// so the pool is ready for the next `map`.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pool = &mut *self.pool;
        while pool.in_flight > 0 && Instant::now() < deadline {
            let mut got = 0;
            for w in 0..pool.workers.len() {
                while let Ok(Some(desc)) = pool.workers[w].output.try_pop() {
                    if pool.take_result(w, desc).is_err() {
                        return; // corrupt: nothing more can be trusted
                    }
                    got += 1;
                }
            }
            if pool.watch.any_dead() {
                for w in pool.watch.take_dead() {
                    if pool.replace(w).is_err() {
                        return;
                    }
                }
            } else if got == 0 {
                pool.park();
            }
        }
    }
}
