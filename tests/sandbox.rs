//! Sandboxed process stages (issue 16), with real worker processes: each forbidden act
//! kills only its worker, the item fails naming the limit, nothing happens outside, a
//! replacement serves the next item, and a poison item is quarantined after two deaths.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use ringpipe::{
    consumer_fn, producer_fn, register_stage, stage_fn, BuildError, ConsumerSpec, Frame, ItemError, Landlock,
    PairSpec, Pipeline, Pool, ProducerSpec, Sandbox, StageSpec, Violation,
};

ringpipe::worker_test_entry!();

/// Item: `[command, argument...]`; the argument is a path, an address or a size.
const ECHO: u8 = b'e';
const READ: u8 = b'r';
const WRITE: u8 = b'w';
const CONNECT: u8 = b'c';
const FORK: u8 = b'f';
const EXEC: u8 = b'x';
const ALLOC: u8 = b'a';
const UNLINK: u8 = b'u';
const PANIC: u8 = b'p';

register_stage!("sb.try", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let (command, arg) = f.bytes().split_first().ok_or("empty item")?;
    let arg = String::from_utf8_lossy(arg).into_owned();
    match *command {
        ECHO => {}
        READ => {
            let bytes = std::fs::read(&arg)?;
            f.set_len(bytes.len().min(f.capacity()))?;
        }
        WRITE => std::fs::write(&arg, b"escaped")?,
        UNLINK => std::fs::remove_file(&arg)?,
        PANIC => panic!("{arg}"),
        CONNECT => drop(TcpStream::connect(&arg)?),
        FORK => {
            // SAFETY: the child only exits; nothing runs between fork and _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: exiting the child at once, without running destructors.
                unsafe { libc::_exit(0) };
            }
            return Err(format!("fork returned {pid}").into());
        }
        EXEC => {
            let err = std::os::unix::process::CommandExt::exec(&mut std::process::Command::new(&arg));
            return Err(err.into());
        }
        ALLOC => {
            let n: usize = arg.parse()?;
            let mut v = vec![0u8; n];
            v[n - 1] = 1; // touch it
            f.bytes_mut()[0] = v[n / 2];
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
})));

fn item(command: u8, arg: &str) -> Vec<u8> {
    let mut v = vec![command];
    v.extend_from_slice(arg.as_bytes());
    v
}

fn sandboxed(sandbox: Sandbox) -> Pipeline {
    let stage = StageSpec::process_named("sb.try").sandbox(sandbox);
    Pipeline::builder().stage(stage).build().expect("a sandboxed stage builds")
}

/// Runs `input`, expecting it to fail with `violation`; then checks a replacement
/// serves the next item.
fn expect_violation(p: &Pipeline, input: &[u8], violation: Violation) {
    let restarts = p.restarts();
    let err = p.submit(input).unwrap().wait().expect_err("the violation fails the item");
    let failure = err.stage_failure().unwrap_or_else(|| panic!("a stage failure: {err}"));
    assert_eq!(failure.violation, Some(violation), "{failure}");
    assert!(failure.worker_died.is_some(), "{failure}");
    assert!(failure.message.contains(&violation.to_string()), "{}", failure.message);
    assert_eq!(p.restarts(), restarts + 1, "one death, one restart");
    let out = p.submit(&item(ECHO, "after")).unwrap().wait().expect("the replacement serves");
    assert_eq!(&out[..], b"eafter");
}

/// Shuts `report`'s pipeline down and checks it: not broken, and exactly `deaths`
/// workers ended otherwise than by a clean exit (the ones the sandbox killed).
fn check_shutdown(report: ringpipe::ShutdownReport, deaths: usize) {
    assert_eq!(report.failure, None);
    let unclean = report.workers.iter().filter(|w| !w.status.is_some_and(|s| s.success())).count();
    assert_eq!(unclean, deaths, "{:?}", report.workers);
}

/// True if this kernel has seccomp filters (`/proc/self/status` has the field): the
/// tests of forbidden system calls need it; without it the report says so (checked in
/// `the_report_says_what_this_kernel_enforced`) and they have nothing to check.
fn seccomp_here() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp:"))
}

/// The violation of system call `number`, as the worker reports it.
fn forbidden(number: libc::c_long) -> Violation {
    Violation::Syscall { number: Some(number as u32) }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringpipe-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn opening_a_file_kills_the_worker_and_reads_nothing() {
    if !seccomp_here() {
        return;
    }
    let secret = temp("secret");
    std::fs::write(&secret, b"top secret").unwrap();
    let p = sandboxed(Sandbox::strict());
    expect_violation(&p, &item(READ, secret.to_str().unwrap()), forbidden(libc::SYS_openat));
    check_shutdown(p.shutdown(), 1);
    std::fs::remove_file(secret).unwrap();
}

#[test]
fn writing_a_file_kills_the_worker_and_creates_nothing() {
    if !seccomp_here() {
        return;
    }
    let path = temp("escaped");
    let p = sandboxed(Sandbox::strict());
    expect_violation(&p, &item(WRITE, path.to_str().unwrap()), forbidden(libc::SYS_openat));
    assert!(!path.exists(), "the file was not created");
    check_shutdown(p.shutdown(), 1);
}

#[test]
fn connecting_a_socket_kills_the_worker_and_connects_nothing() {
    if !seccomp_here() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let p = sandboxed(Sandbox::strict());
    expect_violation(
        &p,
        &item(CONNECT, &listener.local_addr().unwrap().to_string()),
        forbidden(libc::SYS_socket),
    );
    let accepted = listener.accept().map(|_| ()).map_err(|e| e.kind());
    assert_eq!(accepted, Err(std::io::ErrorKind::WouldBlock), "no connection was made");
    check_shutdown(p.shutdown(), 1);
}

#[test]
fn fork_and_exec_kill_the_worker_before_a_process_appears() {
    if !seccomp_here() {
        return;
    }
    let p = sandboxed(Sandbox::strict());
    // Had fork or exec run, the item would have ended otherwise: `fork returned`, an
    // exec error, or a worker that exits 0 as `/bin/true`.
    expect_violation(&p, &item(FORK, ""), forbidden(libc::SYS_clone));
    expect_violation(&p, &item(EXEC, "/bin/true"), forbidden(libc::SYS_execve));
    check_shutdown(p.shutdown(), 2);
}

#[test]
fn allocating_past_the_memory_cap_kills_only_the_worker() {
    let cap = 64 << 20;
    let p = sandboxed(Sandbox::strict().memory_cap(cap));
    let ok = p.submit(&item(ALLOC, &(8 << 20).to_string())).unwrap().wait().expect("8 MiB fits");
    drop(ok);
    expect_violation(&p, &item(ALLOC, &(256 << 20).to_string()), Violation::MemoryCap { cap });
    check_shutdown(p.shutdown(), 1);
}

#[test]
fn a_poison_item_is_quarantined_after_two_deaths() {
    if !seccomp_here() {
        return;
    }
    let pool =
        Pool::builder_named("sb.try").workers(1).retry_once(true).sandbox(Sandbox::strict()).build().unwrap();
    let inputs = [item(ECHO, "a"), item(FORK, ""), item(ECHO, "b")];
    let results: Vec<_> = pool.map(inputs.iter()).collect();
    assert_eq!(&results[0].as_ref().unwrap()[..], b"ea");
    assert_eq!(&results[2].as_ref().unwrap()[..], b"eb");
    match &results[1] {
        Err(ItemError::Poison { failure, output }) => {
            assert_eq!(failure.violation, Some(forbidden(libc::SYS_clone)));
            assert_eq!(output.index(), 1, "tagged with its input position");
        }
        other => panic!("expected poison, got {other:?}"),
    }
    assert_eq!(pool.restarts(), 2, "two deaths, and no third run");
    drop(results);
    check_shutdown(pool.shutdown(), 2);
}

#[test]
fn a_panic_in_a_sandboxed_stage_fails_the_item_and_the_worker_lives() {
    // With RUST_BACKTRACE set here, the worker would read its executable to print a
    // backtrace; a sandboxed worker does not inherit it.
    let p = sandboxed(Sandbox::strict());
    let err = p.submit(&item(PANIC, "boom")).unwrap().wait().expect_err("the panic fails the item");
    let failure = err.stage_failure().expect("a stage failure");
    assert!(failure.message.contains("boom"), "{}", failure.message);
    assert_eq!((failure.worker_died, failure.violation), (None, None));
    let out = p.submit(&item(ECHO, "on")).unwrap().wait().expect("the same worker serves");
    assert_eq!(&out[..], b"eon");
    assert_eq!(p.restarts(), 0);
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_thread_stage_cannot_be_sandboxed() {
    let stage = StageSpec::thread_named("sb.try").sandbox(Sandbox::strict());
    match Pipeline::builder().stage(stage).build() {
        Err(BuildError::SandboxOnThread { stage: 0, name }) => assert_eq!(name, "sb.try"),
        other => panic!("expected SandboxOnThread, got {:?}", other.err()),
    }
}

/// This kernel's Landlock ABI, asked directly (`landlock_create_ruleset` with the
/// version flag), or `None` without Landlock.
fn kernel_landlock_abi() -> Option<u8> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a null attribute pointer and size 0 with the version flag only asks for
    // the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi as u8)
}

#[test]
fn the_report_says_what_this_kernel_enforced() {
    let p = sandboxed(Sandbox::strict().memory_cap(32 << 20));
    let reports = p.sandbox_reports();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!((r.stage, r.name.as_str()), (0, "sb.try"));
    assert_eq!(r.seccomp, seccomp_here());
    assert!(r.no_new_privs && r.no_new_files && r.no_core_dumps);
    assert_eq!((r.memory_cap, r.file_size_limit), (Some(32 << 20), 0));
    match (kernel_landlock_abi(), r.landlock) {
        (Some(kernel), Landlock::Full { abi }) => assert!(kernel >= 6 && abi >= 6 && abi <= kernel),
        (Some(kernel), Landlock::Partial { abi }) => assert!(kernel < 6 && abi == kernel),
        (None, Landlock::Unavailable) => {}
        (kernel, got) => panic!("kernel Landlock ABI {kernel:?}, report says {got:?}"),
    }
    println!("{r}");
    assert!(p.shutdown().was_graceful());

    // Refusing instead: builds where the report is complete, fails typed where not.
    let required = StageSpec::process_named("sb.try").sandbox(Sandbox::strict().require_full());
    match (r.is_complete(), Pipeline::builder().stage(required).build()) {
        (true, Ok(p)) => assert!(p.shutdown().was_graceful()),
        (false, Err(BuildError::SandboxIncomplete { missing, .. })) => assert!(!missing.is_empty()),
        (complete, other) => panic!("complete: {complete}, build: {:?}", other.err()),
    }
}

/// Without the seccomp allow-list, Landlock still denies the filesystem: an unlink (a
/// call that needs no new descriptor, so `RLIMIT_NOFILE` does not stop it first) fails
/// with a plain error, and the worker lives.
#[test]
fn landlock_alone_denies_the_filesystem_with_an_error_not_a_kill() {
    if kernel_landlock_abi().is_none() {
        return; // nothing to check on a kernel without Landlock
    }
    let kept = temp("landlocked");
    std::fs::write(&kept, b"keep me").unwrap();
    let p = sandboxed(Sandbox::strict().without_seccomp());
    let err = p.submit(&item(UNLINK, kept.to_str().unwrap())).unwrap().wait().expect_err("denied");
    let failure = err.stage_failure().expect("the stage's own error");
    assert_eq!((failure.worker_died, failure.violation), (None, None), "{failure}");
    assert!(failure.message.contains("Permission denied"), "{}", failure.message);
    assert!(kept.exists(), "the file is still there");
    assert_eq!(p.restarts(), 0);
    assert!(p.shutdown().was_graceful());
    std::fs::remove_file(kept).unwrap();
}

// A pair whose halves stream through the byte ring: the producer writes as many
// 1 KiB blocks as the item's first byte says, the consumer counts them.
register_stage!(producer: "sb.produce", |_: &[u8]| Ok(producer_fn(
    |f: &mut Frame<'_>, w: &mut ringpipe::stream::StreamWriter| {
        for _ in 0..f.bytes()[0] {
            std::io::Write::write_all(w, &[7u8; 1024])?;
        }
        Ok(())
    }
)));
register_stage!(consumer: "sb.consume", |_: &[u8]| Ok(consumer_fn(
    |f: &mut Frame<'_>, r: &mut ringpipe::stream::StreamReader| {
        let mut all = Vec::new();
        std::io::Read::read_to_end(r, &mut all)?;
        f.set_len(8)?;
        f.bytes_mut().copy_from_slice(&(all.len() as u64).to_le_bytes());
        Ok(())
    }
)));

#[test]
fn both_halves_of_a_pair_stream_in_their_sandboxes() {
    let pair = PairSpec::new(
        ProducerSpec::process_named("sb.produce").sandbox(Sandbox::strict()),
        ConsumerSpec::process_named("sb.consume").sandbox(Sandbox::strict().memory_cap(64 << 20)),
    )
    .stream_capacity(16 << 10);
    let p = Pipeline::builder().pair(pair).build().unwrap();
    assert_eq!(p.sandbox_reports().len(), 2, "one report per half");
    for blocks in [0u8, 1, 200] {
        let out = p.submit(&[blocks]).unwrap().wait().unwrap();
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), u64::from(blocks) * 1024);
    }
    assert_eq!(p.restarts(), 0);
    assert!(p.shutdown().was_graceful());
}
