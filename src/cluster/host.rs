//! One host's share of the work: a thread that owns the host's [`Local`] work (a
//! [`Pool`] or a [`Pipeline`]) and turns task batches into result batches. It never
//! calls MPI (the rank's main thread does all of that, as `Threading::Funneled` asks),
//! so it talks to it over channels.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use ringpipe_engine::{ItemError, Map, Pipeline, Pool, ShutdownReport};

use super::wire::{self, Entry};

/// Results are sent back once this many are in, and whenever the host runs dry.
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

/// The host's runner thread and its two channels.
pub(crate) struct Host {
    tasks: Option<Sender<Vec<u8>>>,
    results: Receiver<Result<Vec<u8>, String>>,
    thread: Option<JoinHandle<ShutdownReport>>,
}

impl Host {
    /// Starts the runner over `local`.
    pub(crate) fn start(local: Local) -> std::io::Result<Self> {
        let (task_tx, task_rx) = channel::<Vec<u8>>();
        let (result_tx, result_rx) = channel();
        let thread = std::thread::Builder::new().name("ringpipe-host".into()).spawn(move || {
            // Ends when the master's side hangs up (either channel).
            let _ = run(&local, &task_rx, &result_tx);
            local.shutdown()
        })?;
        Ok(Self { tasks: Some(task_tx), results: result_rx, thread: Some(thread) })
    }

    /// Hands the runner a task batch.
    pub(crate) fn submit(&self, batch: Vec<u8>) -> Result<(), String> {
        let tasks = self.tasks.as_ref().ok_or("the host was stopped")?;
        tasks.send(batch).map_err(|_| "the host's runner thread is gone".to_owned())
    }

    /// A result batch, if one is ready; `Err` if the runner failed or is gone.
    pub(crate) fn try_results(&self) -> Option<Result<Vec<u8>, String>> {
        match self.results.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err("the host's runner thread is gone".into())),
        }
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
    queue: VecDeque<Vec<u8>>,
    current: Option<(Arc<Vec<u8>>, std::vec::IntoIter<Entry>)>,
    index_of: &'a RefCell<Vec<u64>>,
    malformed: Option<String>,
}

/// One task's bytes where they lie in their batch: the pool copies them straight into
/// a frame, with no copy of their own on the way.
struct Task {
    batch: Arc<Vec<u8>>,
    bytes: std::ops::Range<usize>,
}

impl AsRef<[u8]> for Task {
    fn as_ref(&self) -> &[u8] {
        &self.batch[self.bytes.clone()]
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
                Ok(entries) => self.current = Some((Arc::new(batch), entries.into_iter())),
                Err(e) => {
                    self.malformed = Some(format!("a task batch is malformed: {e}"));
                    return None;
                }
            }
        }
    }
}

/// The runner: for each run of batches that are there, one unordered map over their
/// tasks; results go back in batches of [`RESULTS_PER_BATCH`], and all of them when
/// the run ends (so a master waiting for credit never waits on a result held here).
fn run(
    local: &Local,
    tasks: &Receiver<Vec<u8>>,
    results: &Sender<Result<Vec<u8>, String>>,
) -> Result<(), ()> {
    let send = |r: Result<Vec<u8>, String>| results.send(r).map_err(|_| ());
    // Blocks for the first batch of each run; ends when the master's side hangs up.
    while let Ok(first) = tasks.recv() {
        let index_of = RefCell::new(Vec::new());
        let mut run = Run {
            tasks,
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
                Err(ItemError::Stage { failure, output }) => {
                    wire::put_result(&mut out, task(output.index()), false, failure.to_string().as_bytes())
                }
                Err(ItemError::TooLarge { index, requested, capacity }) => {
                    let why = format!("a task of {requested} bytes; frames hold {capacity}");
                    wire::put_result(&mut out, task(index), false, why.as_bytes())
                }
                Err(e) => return send(Err(format!("the host's pipeline failed: {e}"))),
            }
            count += 1;
            if count == RESULTS_PER_BATCH {
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
