//! One host's share of the work: a thread that owns the host's [`Local`] work (a
//! [`Pool`] or a [`Pipeline`]) and turns task batches into result batches. It never
//! calls MPI (the rank's main thread does all of that, as `Threading::Funneled` asks),
//! so it talks to it over channels.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringpipe_engine::{ItemError, Map, Pipeline, Pool, ShutdownReport};

use super::wire::{self, Entry};

/// Results are sent back once this many are in (or a task batch's worth, if fewer),
/// and whenever the host runs dry.
pub(crate) const RESULTS_PER_BATCH: usize = 64;

/// What a host runs its tasks through: the same on every host.
pub(crate) enum Local {
    /// A pool of worker processes running one task function.
    Pool(Pool),
    /// A pipeline of stages, replicated or not, built by the same code on every host.
    Pipeline(Pipeline),
}

impl Local {
    fn map_unordered<I: Iterator<Item = Task>>(&self, tasks: I) -> Map<'_, I, u8> {
        match self {
            Self::Pool(p) => p.map_unordered(tasks),
            Self::Pipeline(p) => p.map_unordered(tasks),
        }
    }

    fn shutdown(self) -> ShutdownReport {
        match self {
            Self::Pool(p) => p.shutdown(),
            Self::Pipeline(p) => p.shutdown(),
        }
    }
}

/// The host's runner thread and the channels to and from it.
pub(crate) struct Host {
    tasks: Option<Sender<Vec<u8>>>,
    /// Task batches the runner is done with, for the next receive.
    spent: Receiver<Vec<u8>>,
    results: Receiver<Result<Vec<u8>, String>>,
    /// A result batch [`wait`](Host::wait) took off the channel, for `try_results`.
    waited: Cell<Option<Result<Vec<u8>, String>>>,
    /// Set once the runner is found gone (and said so, once).
    gone: Cell<bool>,
    thread: Option<JoinHandle<ShutdownReport>>,
}

impl Host {
    /// Starts the runner over `local`; it sends results back once a task batch's worth
    /// (`batch`, at most [`RESULTS_PER_BATCH`]) is in: the credit the master waits for
    /// to send the next batch, while the host still has others to run.
    pub(crate) fn start(local: Local, batch: usize) -> std::io::Result<Self> {
        let per_batch = batch.clamp(1, RESULTS_PER_BATCH);
        let (task_tx, task_rx) = channel::<Vec<u8>>();
        let (result_tx, result_rx) = channel();
        let (spent_tx, spent_rx) = channel();
        let thread = std::thread::Builder::new().name("ringpipe-host".into()).spawn(move || {
            // Ends when the master's side hangs up (either channel).
            let _ = run(&local, per_batch, &task_rx, &result_tx, &spent_tx);
            local.shutdown()
        })?;
        Ok(Self {
            tasks: Some(task_tx),
            spent: spent_rx,
            results: result_rx,
            waited: Cell::new(None),
            gone: Cell::new(false),
            thread: Some(thread),
        })
    }

    /// Hands the runner a task batch.
    pub(crate) fn submit(&self, batch: Vec<u8>) -> Result<(), String> {
        let tasks = self.tasks.as_ref().ok_or("the host was stopped")?;
        tasks.send(batch).map_err(|_| "the host's runner thread is gone".to_owned())
    }

    /// A buffer for the next task batch: one the runner is done with, if any (a fresh
    /// buffer of some MiB costs a page fault and a zeroed page per 4 KiB).
    pub(crate) fn spare(&self) -> Vec<u8> {
        self.spent.try_recv().unwrap_or_default()
    }

    /// A result batch, if one is ready; `Err` if the runner failed, or once when it is
    /// found gone (then `None` for good: a caller that drains this in a loop ends).
    pub(crate) fn try_results(&self) -> Option<Result<Vec<u8>, String>> {
        if let Some(r) = self.waited.take() {
            return Some(r);
        }
        if self.gone.get() {
            return None;
        }
        match self.results.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(self.found_gone()),
        }
    }

    /// Waits up to `timeout` for a result batch; true if one is ready for
    /// [`try_results`](Self::try_results) (or the runner was just found gone). Once it
    /// is gone, this only sleeps: a wait is a rank's pause between polls.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        if let Some(r) = self.waited.take() {
            self.waited.set(Some(r));
            return true;
        }
        if self.gone.get() {
            std::thread::sleep(timeout);
            return false;
        }
        let r = match self.results.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => self.found_gone(),
        };
        self.waited.set(Some(r));
        true
    }

    /// A host whose runner is gone, with `queued` result batches still on its channel.
    #[cfg(test)]
    pub(crate) fn gone_for_tests(queued: &[&[u8]]) -> Self {
        let (task_tx, _) = channel();
        let (result_tx, result_rx) = channel();
        let (_, spent_rx) = channel();
        for batch in queued {
            result_tx.send(Ok(batch.to_vec())).expect("the receiver is here");
        }
        Self {
            tasks: Some(task_tx),
            spent: spent_rx,
            results: result_rx,
            waited: Cell::new(None),
            gone: Cell::new(false),
            thread: None,
        }
    }

    fn found_gone(&self) -> Result<Vec<u8>, String> {
        self.gone.set(true);
        Err("the host's runner thread is gone".into())
    }

    /// Lets the runner finish what it has, then stops its pool.
    pub(crate) fn stop(mut self) -> Option<ShutdownReport> {
        self.tasks = None; // the runner's receive ends
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.tasks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The tasks of a run: those of the batches received, topped up from the channel
/// without waiting; it ends when none is left. Remembers each input's task index by
/// its position in the run (the map's `Output::index`).
struct Run<'a> {
    tasks: &'a Receiver<Vec<u8>>,
    spent: &'a Sender<Vec<u8>>,
    queue: VecDeque<Vec<u8>>,
    current: Option<(Arc<Batch>, std::vec::IntoIter<Entry>)>,
    index_of: &'a RefCell<Vec<u64>>,
    malformed: Option<String>,
}

/// A task batch; once no task of it is left, its buffer goes back to the rank's main
/// thread for the next batch it receives.
struct Batch {
    bytes: Vec<u8>,
    spent: Sender<Vec<u8>>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        // The main thread may be gone (the job is ending): then the buffer is freed.
        let _ = self.spent.send(std::mem::take(&mut self.bytes));
    }
}

/// One task's bytes where they lie in their batch: the pool copies them straight into
/// a frame, with no copy of their own on the way.
struct Task {
    batch: Arc<Batch>,
    bytes: std::ops::Range<usize>,
}

impl AsRef<[u8]> for Task {
    fn as_ref(&self) -> &[u8] {
        &self.batch.bytes[self.bytes.clone()]
    }
}

impl Iterator for Run<'_> {
    type Item = Task;

    fn next(&mut self) -> Option<Task> {
        loop {
            if let Some((batch, entries)) = self.current.as_mut() {
                if let Some(e) = entries.next() {
                    self.index_of.borrow_mut().push(e.index);
                    return Some(Task { batch: batch.clone(), bytes: e.bytes });
                }
            }
            if self.queue.is_empty() {
                self.queue.extend(std::iter::from_fn(|| self.tasks.try_recv().ok()));
            }
            let batch = self.queue.pop_front()?;
            match wire::entries(&batch, false) {
                Ok(entries) => {
                    let batch = Batch { bytes: batch, spent: self.spent.clone() };
                    self.current = Some((Arc::new(batch), entries.into_iter()));
                }
                Err(e) => {
                    self.malformed = Some(format!("a task batch is malformed: {e}"));
                    return None;
                }
            }
        }
    }
}

/// The runner: for each run of batches that are there, one unordered map over their
/// tasks; results go back in batches of `per_batch`, and all of them when
/// the run ends (so a master waiting for credit never waits on a result held here).
fn run(
    local: &Local,
    per_batch: usize,
    tasks: &Receiver<Vec<u8>>,
    results: &Sender<Result<Vec<u8>, String>>,
    spent: &Sender<Vec<u8>>,
) -> Result<(), ()> {
    let send = |r: Result<Vec<u8>, String>| results.send(r).map_err(|_| ());
    // Blocks for the first batch of each run; ends when the master's side hangs up.
    while let Ok(first) = tasks.recv() {
        let index_of = RefCell::new(Vec::new());
        let mut run = Run {
            tasks,
            spent,
            queue: VecDeque::from([first]),
            current: None,
            index_of: &index_of,
            malformed: None,
        };
        let mut out = Vec::new();
        let mut count = 0;
        for result in local.map_unordered(&mut run) {
            let task = |position: u64| index_of.borrow()[position as usize];
            match result {
                // The result's bytes go from its frame into the batch: one copy.
                Ok(o) => wire::put_result(&mut out, task(o.index()), true, &o),
                Err(ItemError::Stage { failure, output } | ItemError::Poison { failure, output }) => {
                    wire::put_result(&mut out, task(output.index()), false, failure.to_string().as_bytes())
                }
                Err(ItemError::TooLarge { index, requested, capacity }) => {
                    let why = format!("a task of {requested} bytes; frames hold {capacity}");
                    wire::put_result(&mut out, task(index), false, why.as_bytes())
                }
                Err(e) => return send(Err(format!("the host's pipeline failed: {e}"))),
            }
            count += 1;
            if count == per_batch {
                send(Ok(std::mem::take(&mut out)))?;
                count = 0;
            }
        }
        if count > 0 {
            send(Ok(out))?;
        }
        if let Some(e) = run.malformed.take() {
            send(Err(e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The master drains a host's results in a loop; a runner that ended must end that
    /// loop, not feed it an error forever.
    #[test]
    fn a_gone_runner_is_reported_once_after_its_results() {
        let host = Host::gone_for_tests(&[b"a", b"b"]);
        let drained: Vec<_> = std::iter::from_fn(|| host.try_results()).take(10).collect();
        assert_eq!(
            drained,
            [Ok(b"a".to_vec()), Ok(b"b".to_vec()), Err("the host's runner thread is gone".to_owned())]
        );
        assert!(!host.wait(Duration::from_millis(1)), "a wait on a gone runner only pauses");
        assert_eq!(host.try_results(), None);

        let host = Host::gone_for_tests(&[]);
        assert!(host.wait(Duration::from_secs(60)), "found gone at once, not after the timeout");
        assert!(host.try_results().is_some_and(|r| r.is_err()));
        assert_eq!(host.try_results(), None);
    }
}
