//! Helpers the tests share: killing processes and telling whether they live, and
//! scratch directories.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringpipe::Pipeline;

/// How long a test waits for something that must happen (a death noticed, a worker
/// taking its item) before it calls it a hang. Only a hang fails on it: a slow or
/// loaded machine takes longer than an idle one but never this long.
pub const HANG: Duration = Duration::from_secs(60);

/// SIGKILLs `pid` and waits until it is dead. True if this call killed it: false if
/// it was gone or already dead (a zombie not yet reaped, say by a kill a moment
/// earlier), so a count of `true`s counts deaths, not signals sent.
///
/// The signal goes through a pidfd, so between the check and the kill the pid cannot
/// come to name another process.
pub fn kill9(pid: u32) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let Some(fd) = Pid::from_raw(pid as i32).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok()) else {
        return false;
    };
    // A pidfd is readable once its process has exited (zombies included).
    let exited = |timeout: Option<&rustix::event::Timespec>| {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
    };
    if exited(Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })) {
        return false;
    }
    if pidfd_send_signal(&fd, Signal::KILL).is_err() {
        return false;
    }
    let wait = rustix::event::Timespec { tv_sec: HANG.as_secs() as i64, tv_nsec: 0 };
    assert!(exited(Some(&wait)), "{pid} outlived SIGKILL by {HANG:?}");
    true
}

/// Marks: a worker tells its test that it holds an item, so that the test kills it
/// then and not "after a while" (a sleep orders nothing on a loaded machine).
///
/// The test creates `Marks`; a stage calls [`mark`] with a tag; the test's
/// [`Marks::wait`] returns once that tag was marked. Marks live in a directory of
/// the test process's own under Cargo's temporary directory, removed on drop.
pub struct Marks {
    dir: std::path::PathBuf,
}

fn marks_dir(pid: u32) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("marks-{pid}"))
}

impl Marks {
    /// One per test process at a time (tests of one binary share it): tags must be
    /// unique within a test binary.
    pub fn new() -> Self {
        let dir = marks_dir(std::process::id());
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Waits until a worker marked `tag`, and takes the mark away.
    pub fn wait(&self, tag: &str) {
        let path = self.dir.join(tag);
        let deadline = Instant::now() + HANG;
        while std::fs::remove_file(&path).is_err() {
            assert!(Instant::now() < deadline, "no worker marked {tag:?} in {HANG:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a worker waiting in [`await_release`] for `tag` go on.
    pub fn release(&self, tag: &str) {
        std::fs::write(self.dir.join(format!("release-{tag}")), b"").unwrap();
    }
}

/// Removes the marks of test process `pid`, which was killed before it could.
pub fn remove_marks_of(pid: u32) {
    let _ = std::fs::remove_dir_all(marks_dir(pid));
}

impl Drop for Marks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// In a worker (process or thread): marks `tag` for the test process that started
/// the pipeline, if that test is waiting for marks.
pub fn mark(tag: &str) {
    for pid in [rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32), std::process::id()]
    {
        let dir = marks_dir(pid);
        if dir.is_dir() {
            let _ = std::fs::write(dir.join(tag), b"");
            return;
        }
    }
}

/// In a worker: waits until the test calls [`Marks::release`] for `tag`.
pub fn await_release(tag: &str) {
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    let paths = [marks_dir(ppid), marks_dir(std::process::id())].map(|d| d.join(format!("release-{tag}")));
    let deadline = Instant::now() + HANG;
    while !paths.iter().any(|p| p.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// True if `pid` runs (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// A thread that kills a pseudo-random live worker of a pipeline (or of one of its
/// stages) every `period`.
pub struct Killer {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl Killer {
    pub fn every(p: &Arc<Pipeline>, period: Duration) -> Self {
        Self::spawn(p, period, None)
    }

    /// Kills only workers of stage `stage`.
    pub fn every_in_stage(p: &Arc<Pipeline>, period: Duration, stage: usize) -> Self {
        Self::spawn(p, period, Some(stage))
    }

    fn spawn(p: &Arc<Pipeline>, period: Duration, stage: Option<usize>) -> Self {
        let (stop, kills) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (p, stop, kills) = (p.clone(), stop.clone(), kills.clone());
            std::thread::spawn(move || {
                let mut rng = 0x2545_F491_4F6C_DD1Du64;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let pids: Vec<u32> = p
                        .worker_pids()
                        .into_iter()
                        .filter(|&(s, _)| stage.is_none_or(|want| s == want))
                        .map(|(_, pid)| pid)
                        .collect();
                    // `kill9` returns once the worker is dead, and only if this call
                    // killed it: a listed worker may already be dead but not yet
                    // noticed (see `Pipeline::worker_pids`).
                    if kill9(pids[(rng % pids.len() as u64) as usize]) {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self { stop, kills, thread }
    }

    /// Stops killing; returns how many workers it killed (deaths, not signals).
    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.kills.load(Ordering::Relaxed)
    }
}

/// The end of a random-kill test: enough kills to mean something, at most one failed
/// item per kill, every killed worker replaced, `frames` free again (none leaked), and
/// a clean shutdown.
pub fn check_after_kills(p: Arc<Pipeline>, kills: usize, died: usize, frames: usize) {
    assert!(kills >= 3, "only {kills} kills: the test did not test much");
    assert!(died <= kills, "{died} failures for {kills} kills");
    let p = Arc::into_inner(p).expect("the killer let go of the pipeline");
    await_restarts(&p, kills);
    assert_eq!(p.free_frames(), frames, "no frame leaked");
    assert!(p.shutdown().failure.is_none());
}

/// Waits for the pipeline to have replaced `kills` workers (a hang after [`HANG`]).
pub fn await_restarts(p: &Pipeline, kills: usize) {
    let deadline = Instant::now() + HANG;
    while p.restarts() < kills {
        assert!(Instant::now() < deadline, "{} restarts for {kills} kills", p.restarts());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A scratch directory under the temporary directory, named for the test and this
/// process, empty at the start and removed at the end (a panic included).
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringpipe-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
