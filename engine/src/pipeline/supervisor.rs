//! The parent thread that notices dead worker processes, at no cost on the fast
//! path: it sleeps in `poll` on each worker's status pipe, whose write end only that
//! worker holds, so the pipe reports hang-up the moment the process is gone. The dead
//! worker's item in hand is settled from its journal and a replacement starts on the
//! same rings (see `restart.rs`); only an impossible journal or a replacement that
//! fails to start breaks the pipeline.
//!
//! If a stage has a [`timeout`](crate::StageSpec::timeout), the supervisor also wakes
//! every quarter of the shortest one and reads each timed runner's journal: a runner
//! seen on the same item for longer than its timeout is killed, and its death is then
//! handled like any other, except that the item's failure says it timed out.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};

use std::process::ExitStatus;

use super::error::EngineFailure;
use super::shared::Shared;
use super::WorkerExit;
use crate::sandbox::Violation;
use crate::worker::spawn::{self, WorkerProcess};

/// How long a replacement worker gets to say ready.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Supervisor {
    wake: File,
    thread: JoinHandle<()>,
}

impl Supervisor {
    pub(crate) fn start(
        shared: Arc<Shared>,
        workers: Arc<Mutex<Vec<WorkerProcess>>>,
    ) -> std::io::Result<Self> {
        let (wake_read, wake_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let watched = workers
            .lock()
            .iter()
            .enumerate()
            .map(|(i, w)| Ok((i, File::from(w.status.as_fd().try_clone_to_owned()?))))
            .collect::<std::io::Result<Vec<_>>>()?;
        let segment = shared.seg.fd().try_clone_to_owned()?;
        let thread = std::thread::Builder::new()
            .name("ringpipe-supervisor".into())
            .spawn(move || watch(&shared, &workers, watched, wake_read, &segment))?;
        Ok(Self { wake: File::from(wake_write), thread })
    }

    pub(crate) fn stop(mut self) {
        let _ = self.wake.write_all(b"x");
        let _ = self.thread.join();
    }
}

fn watch(
    shared: &Shared,
    workers: &Mutex<Vec<WorkerProcess>>,
    mut watched: Vec<(usize, File)>,
    wake: OwnedFd,
    segment: &OwnedFd,
) {
    let tick = shared.stages.iter().filter_map(|s| s.timeout).min().map(|t| {
        let t = (t / 4).clamp(Duration::from_millis(1), Duration::from_millis(250));
        rustix::event::Timespec { tv_sec: t.as_secs() as i64, tv_nsec: t.subsec_nanos().into() }
    });
    let mut clocks = Clocks::default();
    // What each worker wrote on its status pipe after it said ready: a sandboxed
    // worker's SIGSYS handler names the forbidden call there before it dies.
    let mut said: HashMap<usize, Vec<u8>> =
        workers.lock().iter_mut().enumerate().map(|(w, p)| (w, std::mem::take(&mut p.said))).collect();
    let mut relays: Vec<Relay> = workers
        .lock()
        .iter_mut()
        .filter_map(|p| Some(Relay { stage: p.stage, pipe: p.stderr.take()?, copied: 0 }))
        .collect();
    loop {
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&wake, PollFlags::IN))
            .chain(watched.iter().map(|(_, f)| PollFd::new(f, PollFlags::IN)))
            .chain(relays.iter().map(|r| PollFd::new(&r.pipe, PollFlags::IN)))
            .collect();
        if let Err(e) = rustix::event::poll(&mut fds, tick.as_ref()) {
            if e == rustix::io::Errno::INTR {
                continue;
            }
            return;
        }
        if !fds[0].revents().is_empty() {
            drop(fds);
            for relay in &mut relays {
                relay.drain();
            }
            return;
        }
        let is_ready = |f: &PollFd<'_>| !f.revents().is_empty();
        let ready: Vec<usize> =
            fds[1..=watched.len()].iter().enumerate().filter(|(_, f)| is_ready(f)).map(|(i, _)| i).collect();
        let relaying: Vec<usize> = fds[1 + watched.len()..]
            .iter()
            .enumerate()
            .filter(|(_, f)| is_ready(f))
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        for &i in relaying.iter().rev() {
            if !relays[i].pump() {
                relays.remove(i);
            }
        }
        if tick.is_some() {
            clocks.kill_overdue(shared, workers, &watched);
        }
        let mut dead = Vec::new();
        for i in ready {
            let mut buf = [0u8; 64];
            match watched[i].1.read(&mut buf) {
                Ok(0) | Err(_) => dead.push(i),
                Ok(n) => {
                    let words = said.entry(watched[i].0).or_default();
                    if words.len() < 64 {
                        words.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        for &i in dead.iter().rev() {
            let (w, _) = watched.remove(i);
            if shared.stopping.load(Ordering::Acquire) {
                continue;
            }
            clocks.started.remove(&w);
            let timed_out = clocks.killed.remove(&w);
            let forbidden = said.remove(&w).and_then(|words| forbidden_call(&words));
            match replace(shared, workers, w, segment, timed_out, forbidden) {
                Ok(Replacement { worker, status, said: words, stderr }) => {
                    said.insert(worker, words);
                    watched.push((worker, status));
                    if let Some(pipe) = stderr {
                        relays.push(Relay { stage: workers.lock()[worker].stage, pipe, copied: 0 });
                    }
                }
                Err(failure) => shared.fail(failure),
            }
        }
    }
}

/// The system call a sandboxed worker's SIGSYS handler reported (`V<number>\n`).
fn forbidden_call(words: &[u8]) -> Option<u32> {
    let line = words.strip_prefix(b"V")?.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// A started replacement worker, as the supervisor watches it.
struct Replacement {
    /// Its index among the workers.
    worker: usize,
    /// Its status pipe.
    status: File,
    /// What it wrote there after it said ready.
    said: Vec<u8>,
    /// Its standard error, if sandboxed (see [`Relay`]).
    stderr: Option<File>,
}

/// Most bytes of one sandboxed worker's standard error copied to the parent's: a
/// hostile stage cannot fill the parent's log through it.
const RELAY_LIMIT: usize = 1 << 20;

/// A sandboxed worker's standard error, copied to the parent's as it comes (see
/// `spawn::spawn`).
struct Relay {
    stage: usize,
    pipe: File,
    copied: usize,
}

impl Relay {
    /// Copies what the pipe holds (one read); false once the worker has closed it.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let n = match self.pipe.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) => return e.kind() == std::io::ErrorKind::Interrupted,
        };
        let room = RELAY_LIMIT.saturating_sub(self.copied);
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&buf[..n.min(room)]);
        if n > room && room > 0 {
            let _ = writeln!(
                stderr,
                "\nringpipe: a sandboxed worker of stage {} wrote more than {RELAY_LIMIT} bytes to \
                 standard error; the rest is dropped",
                self.stage
            );
        }
        self.copied = self.copied.saturating_add(n);
        true
    }

    /// Copies whatever is left without waiting (the workers have exited).
    fn drain(&mut self) {
        while spawn::wait_readable(&self.pipe, Duration::ZERO).unwrap_or(false) && self.pump() {}
    }
}

/// Replaces dead worker `w`: settles what it held and starts a replacement on the same
/// record. `forbidden` is the system call the dead worker reported, if its sandbox
/// trapped one.
fn replace(
    shared: &Shared,
    workers: &Mutex<Vec<WorkerProcess>>,
    w: usize,
    segment: &OwnedFd,
    timed_out: Option<Duration>,
    forbidden: Option<u32>,
) -> Result<Replacement, EngineFailure> {
    let mut workers = workers.lock();
    let (record, stage, pid) = (workers[w].record, workers[w].stage, workers[w].child.id());
    let (exit, status) = exit_status(&mut workers[w]);
    shared.dead.lock().push(WorkerExit { stage, pid, status: exit, killed: timed_out.is_some() });
    let name = shared.stages[stage].name.clone();
    let died = |status: String| EngineFailure::WorkerDied { stage, name: name.clone(), pid, status };
    let sandbox = shared.stages[stage].sandbox.as_ref();
    let signal = exit.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    let violation = match (sandbox, signal) {
        (Some(sandbox), Some(signal)) if timed_out.is_none() => {
            Violation::from_signal(sandbox, signal, forbidden)
        }
        _ => None,
    };
    let death = super::restart::Death { record: record as u32, pid, status: &status, timed_out, violation };
    // Counted before the item it held is settled and before its replacement exists,
    // so no caller sees that item fail, or an item pass through the replacement,
    // before the count includes it. A replacement that fails to start breaks the
    // pipeline.
    shared.restarts.fetch_add(1, Ordering::Relaxed);
    super::restart::settle(&shared.seg, record, &death).map_err(EngineFailure::Corrupt)?;
    workers[w].lifeline = None;
    let mut next = spawn::spawn(segment, record, stage, shared.stages[stage].sandbox.as_ref())
        .map_err(|e| died(format!("{status}; restart failed: {e}")))?;
    next.handshake(Instant::now() + RESTART_TIMEOUT)
        .map_err(|e| died(format!("{status}; its replacement did not start: {e:?}")))?;
    let status_pipe = File::from(next.status.as_fd().try_clone_to_owned().map_err(|e| died(e.to_string()))?);
    let (said, stderr) = (std::mem::take(&mut next.said), next.stderr.take());
    // In place: the dead worker's pipes close now, not at shutdown.
    workers[w] = next;
    Ok(Replacement { worker: w, status: status_pipe, said, stderr })
}

/// When each timed runner was first seen on the item it is working on.
#[derive(Default)]
struct Clocks {
    /// Worker index → (the item's input place, when first seen there).
    started: HashMap<usize, ((u64, u64), Instant)>,
    /// Workers killed for running past their stage's timeout, and that timeout.
    killed: HashMap<usize, Duration>,
}

impl Clocks {
    /// Kills every watched worker seen on one item for longer than its stage's timeout.
    fn kill_overdue(
        &mut self,
        shared: &Shared,
        workers: &Mutex<Vec<WorkerProcess>>,
        watched: &[(usize, File)],
    ) {
        let now = Instant::now();
        let workers = workers.lock();
        for &(w, _) in watched {
            let worker = &workers[w];
            let Some(timeout) = shared.stages[worker.stage].timeout else { continue };
            let Some(item) = shared.seg.journal(worker.record).working_on() else {
                self.started.remove(&w);
                continue;
            };
            let (seen, since) = *self.started.entry(w).or_insert((item, now));
            if seen != item {
                self.started.insert(w, (item, now));
            } else if now - since >= timeout && !self.killed.contains_key(&w) {
                // Its status pipe reports the death, and `replace` settles the item.
                if let Some(pid) = rustix::process::Pid::from_raw(worker.child.id() as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                self.killed.insert(w, timeout);
            }
        }
    }
}

/// How worker `worker` ended, once its process is gone: its status, and in words.
fn exit_status(worker: &mut WorkerProcess) -> (Option<ExitStatus>, String) {
    // The pipe closes as the process exits; give the kernel a moment to make it a zombie.
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        match worker.child.try_wait() {
            Ok(Some(s)) => return (Some(s), s.to_string()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => return (None, "closed its status pipe".into()),
            Err(e) => return (None, e.to_string()),
        }
    }
}
