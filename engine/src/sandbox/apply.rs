//! The worker's side: apply a [`Sandbox`] to this process, still single-threaded.

use std::sync::atomic::{AtomicI32, Ordering};

use landlock::{
    Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI,
};
use rustix::process::{setrlimit, Resource, Rlimit};

use super::{filter, Enforced, Landlock, Sandbox};

/// Applies `sandbox` to the calling process and returns what was enforced. Call it
/// before any thread starts (Landlock and the resource limits then hold for every
/// thread the worker makes, and the seccomp filter is synchronised to all anyway).
///
/// Landlock and seccomp are best effort: a kernel without them (or a container that
/// forbids them) gives a worker without them, and the report says so. An error means
/// a resource limit or no_new_privs, which every Linux kernel has, was refused: the
/// worker must not go on.
///
/// `report_fd` is where the `SIGSYS` handler writes `V<number>\n` when a forbidden
/// system call traps (the worker's status pipe).
pub(crate) fn apply(sandbox: &Sandbox, report_fd: i32) -> Result<Enforced, String> {
    let limit = |resource, what: &str, value: u64| {
        setrlimit(resource, Rlimit { current: Some(value), maximum: Some(value) })
            .map_err(|e| format!("cannot set the sandbox's {what} limit: {e}"))
    };
    limit(Resource::Core, "core dump", 0)?;
    limit(Resource::Fsize, "file size", sandbox.file_size)?;
    if let Some(cap) = sandbox.memory {
        limit(Resource::Data, "memory", cap)?;
    }
    let landlock = if sandbox.landlock { landlock() } else { Landlock::Off };
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    // Last of the limits: creating the Landlock ruleset needed a descriptor.
    limit(Resource::Nofile, "open files", 0)?;
    let no_new_privs = rustix::thread::no_new_privs().unwrap_or(false);
    let seccomp = sandbox.seccomp && report_forbidden_calls(report_fd).is_ok() && filter::install().is_ok();
    Ok(Enforced { landlock, seccomp, no_new_privs })
}

/// The Landlock ABI at which everything the sandbox asks for is known.
const FULL_ABI: ABI = ABI::V6;

/// Forbids every filesystem access, TCP bind and connect, and signals and abstract
/// Unix sockets outside this process, as far as this kernel's Landlock knows them.
fn landlock() -> Landlock {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI::V5))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI::V4)))
        .and_then(|r| r.scope(Scope::from_all(FULL_ABI)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self());
    let Ok(status) = status else { return Landlock::Unavailable };
    let LandlockStatus::Available { effective_abi, .. } = status.landlock else {
        return Landlock::Unavailable;
    };
    let abi = effective_abi as u8;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Landlock::Full { abi },
        RulesetStatus::PartiallyEnforced => Landlock::Partial { abi },
        RulesetStatus::NotEnforced => Landlock::Unavailable,
    }
}

/// Where [`on_sigsys`] reports (set once, before the handler is installed).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Installs [`on_sigsys`] for the first `SIGSYS`, resetting to the default action as
/// it runs (`SA_RESETHAND`).
fn report_forbidden_calls(report_fd: i32) -> std::io::Result<()> {
    REPORT_FD.store(report_fd, Ordering::Relaxed);
    // SAFETY: a zeroed `sigaction` is a valid value (no flags, empty mask, default
    // action) before its fields are set; `on_sigsys` has the SA_SIGINFO signature.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Byte offset of `si_syscall` in a `SIGSYS` `siginfo_t` (Linux, 64-bit: signo,
/// errno, code, padding, then the `_sigsys` union member: call address, syscall).
const SI_SYSCALL_OFFSET: usize = 24;

/// The trap of a forbidden system call: tell the parent which call it was, then die
/// of `SIGSYS` (the action is back to default, and the signal raised here is delivered
/// the moment the handler returns). Only async-signal-safe calls, all on the allow-list.
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose `si_syscall` lies at
    // this offset on the 64-bit Linux ABIs ringpipe builds for.
    let number = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>().read_unaligned() };
    let mut line = [0u8; 16];
    line[0] = b'V';
    let mut digits = [0u8; 10];
    let mut n = number.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        line[1 + i] = digits[len - 1 - i];
    }
    line[1 + len] = b'\n';
    // SAFETY: write, getpid, gettid and tgkill are async-signal-safe raw system calls
    // on a stack buffer and our own process.
    unsafe {
        libc::write(REPORT_FD.load(Ordering::Relaxed), line.as_ptr().cast(), len + 2);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGSYS);
    }
}
