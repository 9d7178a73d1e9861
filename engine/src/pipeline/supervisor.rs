//! The parent thread that notices dead worker processes, at no cost on the fast
//! path: it sleeps in `poll` on each worker's status pipe, whose write end only that
//! worker holds, so the pipe reports hang-up the moment the process is gone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};

use super::error::EngineFailure;
use super::shared::Shared;
use crate::worker::spawn::WorkerProcess;

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
        let thread = std::thread::Builder::new()
            .name("ringpipe-supervisor".into())
            .spawn(move || watch(&shared, &workers, watched, wake_read))?;
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
) {
    loop {
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&wake, PollFlags::IN))
            .chain(watched.iter().map(|(_, f)| PollFd::new(f, PollFlags::IN)))
            .collect();
        if let Err(e) = rustix::event::poll(&mut fds, None) {
            if e == rustix::io::Errno::INTR {
                continue;
            }
            return;
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        let ready: Vec<usize> =
            fds[1..].iter().enumerate().filter(|(_, f)| !f.revents().is_empty()).map(|(i, _)| i).collect();
        drop(fds);
        let mut dead = Vec::new();
        for i in ready {
            let mut buf = [0u8; 64];
            if matches!(watched[i].1.read(&mut buf), Ok(0) | Err(_)) {
                dead.push(i);
            }
        }
        for &i in dead.iter().rev() {
            let (w, _) = watched.remove(i);
            if !shared.stopping.load(Ordering::Acquire) {
                shared.fail(describe_death(shared, workers, w));
            }
        }
    }
}

fn describe_death(shared: &Shared, workers: &Mutex<Vec<WorkerProcess>>, w: usize) -> EngineFailure {
    let mut workers = workers.lock();
    let worker = &mut workers[w];
    // The pipe closes as the process exits; give the kernel a moment to make it a zombie.
    let deadline = Instant::now() + Duration::from_millis(200);
    let status = loop {
        match worker.child.try_wait() {
            Ok(Some(s)) => break s.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => break "closed its status pipe".into(),
            Err(e) => break e.to_string(),
        }
    };
    EngineFailure::WorkerDied {
        stage: worker.stage,
        name: shared.stages[worker.stage].name.clone(),
        pid: worker.child.id(),
        status,
    }
}
