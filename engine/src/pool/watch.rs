//! A thread asleep in `poll` on every worker's status pipe: a hang-up means the worker
//! died; it is recorded and the parent woken through the doorbell. No cost while
//! workers live.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};

use crate::memory::Segment;

struct Shared {
    /// Status pipe of each worker (`None` once it hung up, until replaced).
    pipes: Mutex<Vec<Option<File>>>,
    dead: Mutex<Vec<usize>>,
    any_dead: AtomicBool,
}

pub(super) struct Watch {
    shared: Arc<Shared>,
    wake: Option<File>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    pub(super) fn start<'a>(
        pipes: impl Iterator<Item = &'a File>,
        seg: Arc<Segment>,
        doorbell: usize,
    ) -> std::io::Result<Self> {
        let pipes = pipes
            .map(|p| Ok(Some(File::from(p.as_fd().try_clone_to_owned()?))))
            .collect::<std::io::Result<_>>()?;
        let shared = Arc::new(Shared {
            pipes: Mutex::new(pipes),
            dead: Mutex::new(Vec::new()),
            any_dead: AtomicBool::new(false),
        });
        let (wake_read, wake_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ringpipe-pool-watch".into())
            .spawn(move || watch(&sh, &seg, doorbell, wake_read))?;
        Ok(Self { shared, wake: Some(File::from(wake_write)), thread: Some(thread) })
    }

    /// True if some worker died since the last `take_dead` (cheap: one load).
    pub(super) fn any_dead(&self) -> bool {
        self.shared.any_dead.load(Ordering::Acquire)
    }

    /// The workers that died since the last call.
    pub(super) fn take_dead(&self) -> Vec<usize> {
        let mut dead = self.shared.dead.lock();
        self.shared.any_dead.store(false, Ordering::Release);
        std::mem::take(&mut *dead)
    }

    /// Watches worker `w`'s replacement.
    pub(super) fn replace(&mut self, w: usize, status: &File) -> std::io::Result<()> {
        self.shared.pipes.lock()[w] = Some(File::from(status.as_fd().try_clone_to_owned()?));
        if let Some(wake) = &mut self.wake {
            wake.write_all(b"r")?;
        }
        Ok(())
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.thread.is_none()
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut wake) = self.wake.take() {
            let _ = wake.write_all(b"q");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, seg: &Segment, doorbell: usize, wake: OwnedFd) {
    let mut wake = File::from(wake);
    loop {
        let pipes: Vec<(usize, File)> = shared
            .pipes
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_ref()?.try_clone().ok()?)))
            .collect();
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&wake, PollFlags::IN))
            .chain(pipes.iter().map(|(_, f)| PollFd::new(f, PollFlags::IN)))
            .collect();
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let woken = !fds[0].revents().is_empty();
        let ready: Vec<usize> =
            fds[1..].iter().enumerate().filter(|(_, f)| !f.revents().is_empty()).map(|(i, _)| i).collect();
        drop(fds);
        if woken {
            let mut buf = [0u8; 16];
            match wake.read(&mut buf) {
                Ok(n) if n > 0 && !buf[..n].contains(&b'q') => {}
                _ => return, // asked to stop, or the pool is gone
            }
        }
        for i in ready {
            let (w, mut pipe) = (pipes[i].0, &pipes[i].1);
            let mut buf = [0u8; 64];
            if matches!(pipe.read(&mut buf), Ok(0) | Err(_)) {
                shared.pipes.lock()[w] = None;
                shared.dead.lock().push(w);
                shared.any_dead.store(true, Ordering::Release);
                seg.ring_header(doorbell).nudge_consumer();
            }
        }
    }
}
