//! The seccomp allow-list of a sandboxed worker: what the stage loop, the allocator and
//! the worker's lifeline thread need, and nothing that reaches outside the process.
//!
//! - descriptors: `read`, `write` and `close` on what it has (no call makes a new one:
//!   no `open*`, `socket`, `pipe`, `dup`, and `RLIMIT_NOFILE` is 0 besides);
//! - memory: `mmap` and `mprotect` without `PROT_EXEC`, `munmap`, `mremap`, `madvise`,
//!   `brk`;
//! - waiting and time: `futex`, `sched_yield`, `nanosleep`, the clocks;
//! - threads: `clone` with `CLONE_THREAD` only (no `fork`), and `clone3` answers
//!   `ENOSYS` (its flags are behind a pointer, out of a filter's sight), so the C
//!   library falls back to `clone`; `set_robust_list`, `rseq`, naming the thread;
//! - signals to itself (`abort`), signal masks and handlers, exit;
//! - reading its own state: `getpid`, `gettid`, `getrandom`, `fstat` of a descriptor,
//!   `fcntl` queries, `prlimit64` that sets nothing, `sched_getaffinity`.
//!
//! Anything else (`execve`, `fork`, `socket`, `connect`, `openat`, `kill`, `ptrace`,
//! `setrlimit`...) is stopped before it runs and raises `SIGSYS` (`SECCOMP_RET_TRAP`):
//! the worker's handler ([`super::apply`]) tells the parent which call it was and the
//! process dies of the signal. The handler is installed once, resetting itself as it
//! runs, and `rt_sigaction` on `SIGSYS` is not allowed, so a stage cannot replace it.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};

/// Installs the allow-list on every thread of the calling process.
pub(crate) fn install() -> Result<(), String> {
    let failed = |e: seccompiler::Error| format!("cannot install the seccomp filter: {e}");
    // The `clone3` filter first: installing a filter sets no_new_privs with `prctl`,
    // which the allow-list does not allow.
    for program in programs().map_err(failed)?.into_iter().rev() {
        seccompiler::apply_filter_all_threads(&program).map_err(failed)?;
    }
    Ok(())
}

/// The allow-list, and the filter that answers `clone3` with `ENOSYS`. The kernel runs
/// both and takes the stricter answer.
fn programs() -> Result<[BpfProgram; 2], seccompiler::Error> {
    let arch = std::env::consts::ARCH.try_into()?;
    let allow = SeccompFilter::new(allowed()?, SeccompAction::Trap, SeccompAction::Allow, arch)?;
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let no_clone3 =
        SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)?;
    Ok([allow.try_into()?, no_clone3.try_into()?])
}

/// System call → the rules of which one must hold (none: always allowed).
fn allowed() -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let pid = std::process::id();
    // `arg & mask == value`.
    let masked = |arg, len, mask: u64, value: u64| Cond::new(arg, len, Op::MaskedEq(mask), value);
    let equal = |arg, len, value: u64| Cond::new(arg, len, Op::Eq, value);
    let rule = |conditions: Vec<Result<Cond, BackendError>>| {
        SeccompRule::new(conditions.into_iter().collect::<Result<_, _>>()?)
    };
    let no_exec = || rule(vec![masked(2, Len::Dword, libc::PROT_EXEC as u64, 0)]);
    let empty_path =
        |arg| rule(vec![masked(arg, Len::Dword, libc::AT_EMPTY_PATH as u64, libc::AT_EMPTY_PATH as u64)]);

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getrandom,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_restart_syscall,
        libc::SYS_sched_getaffinity,
        libc::SYS_fstat,
        libc::SYS_clone3,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    rules.insert(
        libc::SYS_rt_sigaction,
        vec![rule(vec![Cond::new(0, Len::Dword, Op::Ne, libc::SIGSYS as u64)])?],
    );
    rules.insert(libc::SYS_mmap, vec![no_exec()?]);
    rules.insert(libc::SYS_mprotect, vec![no_exec()?]);
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![masked(0, Len::Qword, libc::CLONE_THREAD as u64, libc::CLONE_THREAD as u64)])?],
    );
    rules.insert(libc::SYS_prctl, vec![rule(vec![equal(0, Len::Dword, libc::PR_SET_NAME as u64)])?]);
    rules.insert(libc::SYS_tgkill, vec![rule(vec![equal(0, Len::Dword, u64::from(pid))])?]);
    rules.insert(libc::SYS_newfstatat, vec![empty_path(3)?]);
    rules.insert(libc::SYS_statx, vec![empty_path(2)?]);
    rules.insert(
        libc::SYS_fcntl,
        [libc::F_GETFD, libc::F_GETFL, libc::F_GET_SEALS]
            .into_iter()
            .map(|cmd| rule(vec![equal(1, Len::Dword, cmd as u64)]))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(libc::SYS_prlimit64, vec![rule(vec![equal(0, Len::Dword, 0), equal(2, Len::Qword, 0)])?]);
    Ok(rules)
}

/// The name of system call `number` on this architecture, for the calls a stage is
/// likely to try (the ones the allow-list leaves out that reach outside the process).
pub(crate) fn syscall_name(number: u32) -> Option<&'static str> {
    macro_rules! table {
        ($($name:ident),* $(,)?) => {
            [$((libc::$name, &stringify!($name)[4..])),*]
        };
    }
    #[cfg(target_arch = "x86_64")]
    let legacy = table![
        SYS_open,
        SYS_creat,
        SYS_fork,
        SYS_vfork,
        SYS_unlink,
        SYS_mkdir,
        SYS_rmdir,
        SYS_rename,
        SYS_link,
        SYS_symlink,
        SYS_chmod,
        SYS_chown,
        SYS_access,
        SYS_stat,
        SYS_lstat,
        SYS_dup2,
        SYS_pipe,
        SYS_poll,
        SYS_select,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let legacy: [(libc::c_long, &str); 0] = [];
    let common = table![
        SYS_openat,
        SYS_openat2,
        SYS_socket,
        SYS_socketpair,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept,
        SYS_accept4,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_execve,
        SYS_execveat,
        SYS_clone,
        SYS_kill,
        SYS_tkill,
        SYS_ptrace,
        SYS_unlinkat,
        SYS_mkdirat,
        SYS_renameat,
        SYS_renameat2,
        SYS_linkat,
        SYS_symlinkat,
        SYS_fchmod,
        SYS_fchmodat,
        SYS_fchown,
        SYS_fchownat,
        SYS_truncate,
        SYS_ftruncate,
        SYS_chdir,
        SYS_fchdir,
        SYS_chroot,
        SYS_mount,
        SYS_umount2,
        SYS_ioctl,
        SYS_dup,
        SYS_dup3,
        SYS_pipe2,
        SYS_memfd_create,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_inotify_init1,
        SYS_setrlimit,
        SYS_prlimit64,
        SYS_prctl,
        SYS_setuid,
        SYS_setgid,
        SYS_mmap,
        SYS_mprotect,
        SYS_rt_sigaction,
        SYS_fcntl,
        SYS_newfstatat,
        SYS_statx,
        SYS_getdents64,
        SYS_readlinkat,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_lseek,
        SYS_pread64,
        SYS_pwrite64,
        SYS_sendfile,
        SYS_splice,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_pidfd_open,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_seccomp,
        SYS_unshare,
        SYS_setns,
    ];
    legacy.into_iter().chain(common).find(|&(nr, _)| nr == i64::from(number)).map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filters_compile_on_this_architecture() {
        let [allow, no_clone3] = super::programs().expect("compiles");
        assert!(allow.len() > 40 && !no_clone3.is_empty());
    }

    #[test]
    fn forbidden_calls_have_names() {
        assert_eq!(super::syscall_name(libc::SYS_openat as u32), Some("openat"));
        assert_eq!(super::syscall_name(libc::SYS_execve as u32), Some("execve"));
        assert_eq!(super::syscall_name(u32::MAX), None);
    }
}
