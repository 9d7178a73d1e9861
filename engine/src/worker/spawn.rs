//! The parent's side of a worker process: start it, hand it its descriptors, wait for
//! it to say ready, and keep the ends that tell when it dies.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::pipe::PipeFlags;

use super::{LIFELINE_FD, SEGMENT_FD, STATUS_FD, TEST_ENTRY, WORKER_ENV};
use crate::sandbox::{Enforced, Sandbox, SANDBOX_ENV};

/// Descriptors are first duplicated at or above this number, so that moving them to
/// 3, 4 and 5 in the child can never overwrite one another.
const HIGH_FD: i32 = 10;

/// Environment variables a worker does not inherit: what MPI launchers (MPICH's
/// Hydra, Open MPI, PMIx) give each rank. A worker that saw them and reached MPI
/// initialisation would join the job as its parent's rank.
const LAUNCHER_ENV: [&str; 5] = ["PMI_", "PMIX_", "OMPI_", "HYDI_", "HYDRA_"];

/// A started worker process.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pub child: Child,
    /// Read end of the status pipe: readiness, then EOF when the process exits.
    pub status: File,
    /// Write end of the lifeline: closing it (or dying) tells the worker to exit.
    pub lifeline: Option<OwnedFd>,
    /// The stage record it serves.
    pub record: usize,
    /// The stage that record is (a replica of).
    pub stage: usize,
    /// What its sandbox enforced, as it reported when ready (none: not sandboxed).
    pub enforced: Option<Enforced>,
    /// What it wrote on its status pipe after `R`, read with it: a worker that takes an
    /// item the moment it is ready may already have reported a forbidden system call.
    pub said: Vec<u8>,
    /// A sandboxed worker's standard error, which the supervisor copies to the parent's
    /// (see [`spawn`]); `None` when it inherits the parent's.
    pub stderr: Option<File>,
}

/// How a start-up handshake failed.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// The worker refused, with its reason.
    Refused(String),
    /// The process ended without running the worker hook.
    NoHook(Option<std::process::ExitStatus>),
    /// No answer in time.
    TimedOut,
    Io(std::io::Error),
}

/// Environment variables a sandboxed worker does not inherit: with them set, a panic
/// would read the executable to symbolise a backtrace, which the sandbox forbids.
const BACKTRACE_ENV: [&str; 2] = ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"];

/// Starts the worker serving stage record `record` (of stage `stage`), in `sandbox` if
/// given: the current executable with the segment at fd 3, the lifeline at fd 4 and
/// the status pipe at fd 5.
///
/// A sandboxed worker's standard error is a pipe to the parent, not the parent's own:
/// its file size limit (0 by default) would otherwise kill it at its first message
/// (a panic's, or the allocator's at the memory cap) whenever the parent's standard
/// error is a regular file, and report the wrong limit.
pub(crate) fn spawn(
    segment: &OwnedFd,
    record: usize,
    stage: usize,
    sandbox: Option<&Sandbox>,
) -> std::io::Result<WorkerProcess> {
    let (life_read, life_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let (status_read, status_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let high = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, HIGH_FD);
    let moves =
        [(high(segment)?, SEGMENT_FD), (high(&life_read)?, LIFELINE_FD), (high(&status_write)?, STATUS_FD)];
    let raw: [(i32, i32); 3] = moves.each_ref().map(|(fd, to)| (fd.as_raw_fd(), *to));
    let mut cmd = Command::new(std::env::current_exe()?);
    // Under libtest these arguments select the entry test; a plain binary's hook runs
    // before it looks at its arguments, so they are ignored there.
    cmd.args([TEST_ENTRY, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(WORKER_ENV, record.to_string())
        .stdin(Stdio::null());
    let mut under_launcher = false;
    for (name, _) in std::env::vars_os() {
        if LAUNCHER_ENV.iter().any(|p| name.as_encoded_bytes().starts_with(p.as_bytes())) {
            cmd.env_remove(name);
            under_launcher = true;
        }
    }
    let mut stderr = None;
    if let Some(sandbox) = sandbox {
        cmd.env(SANDBOX_ENV, sandbox.to_env());
        for name in BACKTRACE_ENV {
            cmd.env_remove(name);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        cmd.stderr(Stdio::from(write));
        stderr = Some(File::from(read));
    }
    // SAFETY: between fork and exec the closure makes only async-signal-safe raw syscalls
    // (dup2, close_range, close, signal), allocating nothing. Sources are >= HIGH_FD, targets
    // 3..=5: no move overwrites a later source; dup2 clears CLOEXEC on targets.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in raw {
                dup2_raw(from, to)?;
            }
            close_from(STATUS_FD + 1);
            if under_launcher {
                // MPICH's Hydra signals a job's processes with SIGUSR1 when a rank
                // fails (under `-disable-auto-cleanup`); a worker is no rank, and would
                // die of it. Ignored stays ignored across exec.
                libc::signal(libc::SIGUSR1, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(moves);
    drop(life_read);
    drop(status_write);
    Ok(WorkerProcess {
        child,
        status: File::from(status_read),
        lifeline: Some(life_write),
        record,
        stage,
        enforced: None,
        said: Vec::new(),
        stderr,
    })
}

/// dup2 without allocation, for use between fork and exec. rustix returns the error
/// (it does not set `errno`), so it is passed on as is.
fn dup2_raw(from: i32, to: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on integer descriptors; neither is owned by Rust code in
    // the forked child, which is about to exec.
    let mut target =
        std::mem::ManuallyDrop::new(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(to) });
    // SAFETY: `from` is open in the child (inherited from the parent, which holds it).
    let src = unsafe { rustix::fd::BorrowedFd::borrow_raw(from) };
    rustix::io::dup2(src, &mut target).map_err(std::io::Error::from)
}

/// Closes every descriptor from `first` up, in the child between fork and exec: a
/// worker inherits stdio and its three descriptors, nothing the parent's launcher left
/// open without close-on-exec (an MPI launcher's sockets, say).
fn close_from(first: i32) {
    // SAFETY: raw syscalls on integer descriptors in the forked child, which owns no
    // Rust object for them and is about to exec.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) == 0 {
            return;
        }
        // Kernels before 5.9: close each up to the descriptor limit.
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as i32
        } else {
            1 << 16
        };
        for fd in first..top {
            libc::close(fd);
        }
    }
}

impl WorkerProcess {
    /// Waits for the worker's `R` (after its sandbox report, if sandboxed), its
    /// refusal, or its exit.
    pub(crate) fn handshake(&mut self, deadline: Instant) -> Result<(), Handshake> {
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Handshake::TimedOut);
            }
            if !wait_readable(&self.status, left).map_err(Handshake::Io)? {
                continue;
            }
            let mut buf = [0u8; 512];
            match self.status.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if let Some(after) = got.strip_prefix(b"R") {
                        self.said = after.to_vec();
                        return Ok(());
                    }
                    // A sandboxed worker's report line, then `R`.
                    if let Some(end) = got.windows(2).position(|w| w == b"\nR").filter(|_| got[0] == b'S') {
                        self.enforced = Enforced::decode(&got[..end]);
                        if self.enforced.is_none() {
                            return Err(Handshake::Refused(format!(
                                "unreadable sandbox report {:?}",
                                String::from_utf8_lossy(&got[..end])
                            )));
                        }
                        self.said = got[end + 2..].to_vec();
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Handshake::Io(e)),
            }
        }
        // EOF: the process is exiting.
        let status = self.child.wait().ok();
        match got.split_first() {
            Some((b'E', msg)) => Err(Handshake::Refused(String::from_utf8_lossy(msg).into_owned())),
            // Its sandbox trapped a system call while it set up (see `sandbox::apply`).
            Some((b'V', number)) => Err(Handshake::Refused(format!(
                "its sandbox stopped it while it set up: forbidden system call {}",
                String::from_utf8_lossy(number).trim_end()
            ))),
            _ => Err(Handshake::NoHook(status)),
        }
    }

    /// Asks the worker to exit by closing its lifeline, and waits up to `timeout`;
    /// then kills it. Returns its exit status and whether it had to be killed.
    pub(crate) fn stop(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, bool) {
        let deadline = crate::wait::deadline_after(timeout);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return (Some(status), false),
                Ok(None) if Instant::now() < deadline => {
                    let _ = wait_readable(&self.status, Duration::from_millis(10));
                }
                _ => break,
            }
        }
        let _ = self.child.kill();
        (self.child.wait().ok(), true)
    }
}

/// Polls `f` for input or hang-up for up to `timeout`.
pub(crate) fn wait_readable(f: &impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [PollFd::new(f, PollFlags::IN)];
    let ts =
        rustix::event::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos().into() };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
