//! Helpers the fault tests share: killing processes and telling whether they live.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringpipe::Pipeline;

/// Sends SIGKILL to `pid`, if it still exists.
pub fn kill9(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok())
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
                    if kill9(pids[(rng % pids.len() as u64) as usize]) {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self { stop, kills, thread }
    }

    /// Stops killing; returns how many kills were sent.
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
    await_restarts(&p, kills, Duration::from_secs(5));
    assert_eq!(p.free_frames(), frames, "no frame leaked");
    assert!(p.shutdown().failure.is_none());
}

/// Waits up to `timeout` for the pipeline to have replaced `kills` workers.
pub fn await_restarts(p: &Pipeline, kills: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while p.restarts() < kills {
        assert!(Instant::now() < deadline, "{} restarts for {kills} kills", p.restarts());
        std::thread::sleep(Duration::from_millis(1));
    }
}
