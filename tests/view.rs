//! Watching a pipeline from another process (`ringpipe::view`): a viewer sees the
//! stage names and counts that grow; it cannot write; another user is refused; a
//! pipeline killed with `kill -9` leaves nothing behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringpipe::view::{self, Target, View, ViewError};
use ringpipe::{register_stage, stage_fn, Frame, Pipeline, StageSpec};

ringpipe::worker_test_entry!();

register_stage!("view.upper", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut().make_ascii_uppercase();
    Ok(())
})));

/// Set in a helper's environment: the target it attaches to, as `pid/socket`.
const TARGET_ENV: &str = "RINGPIPE_TEST_VIEW_TARGET";

fn observable() -> Pipeline {
    Pipeline::builder()
        .stage(StageSpec::process_named("view.upper").replicas(2))
        .stage(StageSpec::with_stage("view.count", stage_fn(|_f| Ok(()))))
        .frame_capacity(4096)
        .observable(true)
        .build()
        .unwrap()
}

/// The region's descriptor, taken from the socket as a viewer gets it.
fn receive_region(target: &Target) -> std::os::fd::OwnedFd {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
        target.socket.as_bytes(),
    )
    .unwrap();
    let s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(&s, &mut [std::io::IoSliceMut::new(&mut byte)], &mut control, RecvFlags::empty())
        .unwrap();
    let fd = control.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    fd.expect("the region's descriptor")
}

/// `p`'s entry in the list of observable pipelines.
fn target_of(p: &Pipeline) -> Target {
    let socket = p.observed_at().expect("built observable");
    view::list().unwrap().into_iter().find(|t| t.socket == socket).expect("the pipeline is listed")
}

/// Waits, without a fixed sleep, until `check` holds on a fresh snapshot (the region
/// is refreshed four times a second).
fn until(view: &View, what: &str, check: impl Fn(&view::Snapshot) -> bool) -> view::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snap = view.snapshot().unwrap();
        if check(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "{what}: {snap:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_viewer_sees_the_stages_and_counts_that_grow_and_cannot_write() {
    let p = observable();
    let target = &target_of(&p);
    assert_eq!(target.pid, std::process::id());
    let view = View::attach(target).unwrap();
    for _ in 0..100 {
        assert_eq!(&p.submit(b"abc").unwrap().wait().unwrap()[..], b"ABC");
    }
    let first = until(&view, "100 items counted", |s| s.stages[1].items >= 100);
    assert_eq!(first.pid, std::process::id());
    let names: Vec<&str> = first.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["view.upper", "view.count"]);
    assert_eq!(
        (first.stages[0].replicas, first.stages[0].on_thread, first.stages[1].on_thread),
        (2, false, true)
    );
    assert_eq!(first.stages[0].pids.len(), 2, "both workers' pids");
    assert_eq!(first.stages[0].bytes_in, 300);
    for _ in 0..100 {
        assert_eq!(&p.submit(b"abc").unwrap().wait().unwrap()[..], b"ABC");
    }
    until(&view, "the counts grow", |s| s.stages[0].items >= 200 && s.stages[1].items >= 200);

    // What a viewer receives can be read, never written or mapped writable.
    let fd = receive_region(target);
    let mut word = [0u8; 8];
    assert_eq!(rustix::io::pread(&fd, &mut word, 0).unwrap(), 8);
    assert_eq!(&word, b"RPVIEW01");
    assert!(rustix::io::pwrite(&fd, b"X", 0).is_err(), "written");
    // SAFETY: a mapping request the kernel must refuse; nothing is mapped on failure.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
        )
    };
    assert_eq!(mapped, libc::MAP_FAILED, "mapped writable");
    drop(view);
    assert!(p.shutdown().was_graceful());
    assert!(
        view::list().unwrap().iter().all(|t| t.socket != target.socket),
        "the socket is gone after shutdown"
    );
}

#[test]
fn a_viewer_killed_or_dropped_changes_nothing() {
    let p = observable();
    let target = target_of(&p);
    for _ in 0..5 {
        let v = View::attach(&target).unwrap();
        v.snapshot().unwrap();
    }
    // A viewer that connects and goes away at once, without reading.
    let s = std::os::unix::net::UnixStream::connect_addr(
        &<std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            target.socket.as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    drop(s);
    for _ in 0..50 {
        assert_eq!(&p.submit(b"x").unwrap().wait().unwrap()[..], b"X");
    }
    assert!(p.shutdown().was_graceful());
}

/// Helper run in a child process (see the tests below): attaches to the target in
/// its environment and prints what happened.
#[test]
fn helper_attach_and_report() {
    let Ok(t) = std::env::var(TARGET_ENV) else { return };
    let (pid, socket) = t.split_once(' ').unwrap();
    let target = Target { pid: pid.parse().unwrap(), socket: socket.to_owned() };
    match View::attach(&target).and_then(|v| v.snapshot()) {
        Ok(s) => println!("VIEW ok {}", s.stages.len()),
        Err(ViewError::Refused) => println!("VIEW refused"),
        Err(e) => println!("VIEW error {e}"),
    }
}

/// Helper run in a child process: builds an observable pipeline, says so, and waits
/// to be killed.
#[test]
fn helper_observable_until_killed() {
    if std::env::var_os("RINGPIPE_TEST_VIEW_HOLD").is_none() {
        return;
    }
    let p = observable();
    assert_eq!(&p.submit(b"a").unwrap().wait().unwrap()[..], b"A");
    println!("HOLDING");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop(p);
}

fn helper(name: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([name, "--exact", "--nocapture", "--test-threads=1", "-q"]);
    c
}

#[test]
fn another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running a viewer as another user needs root");
        return;
    }
    let p = observable();
    let target = target_of(&p);
    let arg = format!("{} {}", target.pid, target.socket);
    let run = |uid: Option<u32>| {
        let mut c = helper("helper_attach_and_report");
        c.env(TARGET_ENV, &arg).stderr(Stdio::inherit());
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut c, uid);
            std::os::unix::process::CommandExt::gid(&mut c, uid);
        }
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert!(run(None).contains("VIEW ok 2"), "the same user may watch");
    assert!(run(Some(65534)).contains("VIEW refused"), "nobody may not");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_pipeline_killed_leaves_nothing_behind() {
    let mut child = helper("helper_observable_until_killed")
        .env("RINGPIPE_TEST_VIEW_HOLD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Its output goes on being read (a closed pipe would break its workers' output).
    let (tx, rx) = std::sync::mpsc::channel();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(out).map_while(Result::ok) {
            if line.contains("HOLDING") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120)).expect("the child built its pipeline");
    let pid = child.id();
    let listed = || view::list().unwrap().into_iter().filter(|t| t.pid == pid).count();
    assert_eq!(listed(), 1, "the child's pipeline is listed");
    let target = view::list().unwrap().into_iter().find(|t| t.pid == pid).unwrap();
    View::attach(&target).unwrap().snapshot().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The socket is abstract: it went with the process; there is no file to remove.
    assert_eq!(listed(), 0, "nothing of it is listed");
    assert!(matches!(View::attach(&target), Err(ViewError::Connect(_))));
}
