//! The worker process's side: adopt the descriptors, apply the sandbox if it has one,
//! check the segment, build the stage, say ready, serve.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use super::runner::{RunEnd, StageRunner};
use super::{exit, LIFELINE_FD, SEGMENT_FD, STATUS_FD, WORKER_ENV};
use crate::memory::Segment;
use crate::sandbox::{self, Sandbox, SANDBOX_ENV};
use crate::stage::find_stage;

/// Turns this process into a ringpipe worker if it was started as one, and returns
/// at once otherwise. Call it first thing in `main` (`multiprocessing.freeze_support()` in Python),
/// before anything else looks at arguments or starts threads.
///
/// ```
/// fn main() {
///     ringpipe_engine::worker_hook();
///     // ... the program ...
/// }
/// # main();
/// ```
///
/// In a worker it never returns: it serves its stage and exits the process.
pub fn worker_hook() {
    let Ok(spec) = std::env::var(WORKER_ENV) else { return };
    let code = match run(&spec) {
        Ok(RunEnd::Shutdown) => exit::OK,
        Ok(RunEnd::Broken) => exit::BROKEN,
        Ok(RunEnd::Corrupt(why)) => {
            eprintln!("ringpipe worker {}: {why}", std::process::id());
            exit::BROKEN
        }
        Err(()) => exit::SETUP,
    };
    std::process::exit(code);
}

/// Adopts a descriptor the parent placed at `fd`, if it is open.
fn adopt(fd: i32) -> Option<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) on any number is harmless; it fails if `fd` is not open.
    let open = unsafe { rustix::io::fcntl_getfd(rustix::fd::BorrowedFd::borrow_raw(fd)) }.is_ok();
    // SAFETY: the parent dup2'd this number for us between fork and exec, nothing in
    // this process has claimed it yet (the hook runs first in main), and we adopt
    // each number once.
    open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn run(spec: &str) -> Result<RunEnd, ()> {
    let Some(status) = adopt(STATUS_FD) else {
        eprintln!(
            "ringpipe worker: started without a status pipe; {WORKER_ENV} must only be set by ringpipe"
        );
        return Err(());
    };
    let mut status = File::from(status);
    let mut refuse = |msg: String| {
        let _ = status.write_all(format!("E{msg}").as_bytes());
        Err(())
    };
    let index: usize = match spec.parse() {
        Ok(i) => i,
        Err(_) => return refuse(format!("bad {WORKER_ENV} value {spec:?}")),
    };
    let (Some(segment_fd), Some(lifeline)) = (adopt(SEGMENT_FD), adopt(LIFELINE_FD)) else {
        return refuse("started without the segment or lifeline descriptor".into());
    };
    // The sandbox first: before any thread starts and before a byte of the segment
    // (which any worker can scribble on) is read. It comes from the environment, which
    // only the parent wrote.
    let enforced = match std::env::var(SANDBOX_ENV).ok().map(|s| Sandbox::from_env(&s)) {
        None => None,
        Some(Ok(sandbox)) => match sandbox::apply::apply(&sandbox, STATUS_FD) {
            Ok(enforced) => Some(enforced),
            Err(e) => return refuse(e),
        },
        Some(Err(e)) => return refuse(e),
    };
    watch_parent(lifeline);
    let seg = match Segment::open(segment_fd) {
        Ok(seg) => Arc::new(seg),
        Err(e) => return refuse(e.to_string()),
    };
    if let Err(e) = seg.check_stages() {
        return refuse(e.to_string());
    }
    let record = match seg.stage(index) {
        Ok(r) => r,
        Err(e) => return refuse(e.to_string()),
    };
    let (Ok(name), Ok(params)) =
        (seg.blob(record.name_offset, record.name_len), seg.blob(record.params_offset, record.params_len))
    else {
        return refuse("stage name or parameters out of bounds".into());
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    let Some(factory) = find_stage(&name) else {
        return refuse(format!("no stage named {name:?} is registered in this executable"));
    };
    let stage = match (factory.make)(&params) {
        Ok(stage) => stage,
        Err(e) => return refuse(format!("stage {name:?} rejected its parameters: {e}")),
    };
    let runner = match StageRunner::new(seg, index, stage) {
        Ok(r) => r,
        Err(e) => return refuse(e.to_string()),
    };
    let ready = enforced.map_or_else(|| "R".to_owned(), |e| format!("{}R", e.encode()));
    if status.write_all(ready.as_bytes()).is_err() {
        return Err(()); // the parent is gone already
    }
    // `status` stays open until the process exits: its EOF tells the parent we died.
    let end = runner.run();
    drop(status);
    Ok(end)
}

/// Exits the process when the parent's end of the lifeline closes (the parent died).
fn watch_parent(lifeline: OwnedFd) {
    let spawned = std::thread::Builder::new().name("ringpipe-lifeline".into()).spawn(move || {
        let mut lifeline = File::from(lifeline);
        let mut buf = [0u8; 64];
        // Blocks with no CPU cost; returns 0 (EOF) or an error once the parent is gone.
        while matches!(lifeline.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(exit::ORPHANED);
    });
    if spawned.is_err() {
        std::process::exit(exit::SETUP);
    }
}
