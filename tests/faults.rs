//! Faults (issue 5): workers that die at any point, hang, or lose their parent;
//! shutdown under load. Every item resolves exactly once and no frame leaks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpipe::{
    register_stage, stage_fn, BuildError, EngineFailure, Frame, ItemError, Output, Pipeline, StageSpec,
    MAX_STAGE_TIMEOUT,
};

mod common;

use common::{alive, check_after_kills, kill9, Killer, Marks, HANG as HANG_BOUND};

ringpipe::worker_test_entry!();

/// Item: `[command, index (u64 LE)...]`. `f.act` obeys the command and appends its pid.
const OK: u8 = b'k';
const ABORT: u8 = b'a';
const SEGV: u8 = b'v';
const HANG: u8 = b'h';
/// Sleep 1 ms, so that kills find it busy.
const NAP: u8 = b'n';

register_stage!("f.act", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    match f.bytes().first() {
        Some(&ABORT) => std::process::abort(),
        Some(&SEGV) => {
            // A real fault (a SIGSEGV sent with kill is caught and ignored by std's
            // stack-overflow handler). Address 16 is never mapped.
            // SAFETY: none; the point is to crash the worker.
            unsafe { (16usize as *mut u8).write_volatile(1) };
            unreachable!("writing to address 16 faults");
        }
        Some(&HANG) => {
            common::mark(&format!("hang-{}", index_of(f.bytes())));
            std::thread::sleep(Duration::from_secs(3600))
        }
        Some(&NAP) => std::thread::sleep(Duration::from_millis(1)),
        _ => {}
    }
    let n = f.len();
    f.set_len(n + 4)?;
    f.bytes_mut()[n..].copy_from_slice(&std::process::id().to_le_bytes());
    Ok(())
})));

// Adds one to every byte after the command: cheap work for the soak.
register_stage!("f.bump", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut()[9..].iter_mut().for_each(|b| *b = b.wrapping_add(1));
    Ok(())
})));

fn item(command: u8, index: u64) -> Vec<u8> {
    let mut v = vec![command];
    v.extend_from_slice(&index.to_le_bytes());
    v
}

fn index_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[1..9].try_into().unwrap())
}

/// Runs `items` through a one-stage `f.act` pipeline; returns the outputs in order.
fn run_one(p: &Pipeline, items: Vec<Vec<u8>>) -> Vec<Output> {
    let n = items.len() as u64;
    let outs: Vec<Output> =
        p.map(items).map(|r| r.or_else(ItemError::into_output).expect("the pipeline goes on")).collect();
    assert_eq!(outs.iter().map(|o| index_of(o)).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    outs
}

#[test]
fn a_worker_that_aborts_or_segfaults_fails_only_its_item_and_is_restarted() {
    for (command, signal) in [(ABORT, "SIGABRT"), (SEGV, "SIGSEGV")] {
        let p =
            Pipeline::builder().stage(StageSpec::process_named("f.act")).max_in_flight(64).build().unwrap();
        let (_, pid) = p.worker_pids()[0];
        let items = (0..40).map(|i| item(if i == 17 { command } else { OK }, i)).collect();
        let outs = run_one(&p, items);
        for (i, out) in outs.iter().enumerate() {
            match out.failure() {
                Some(f) => {
                    assert_eq!(i, 17, "only the item in hand fails: {f}");
                    assert_eq!((f.stage, f.name.as_str(), f.worker_died), (0, "f.act", Some(pid)));
                    assert!(f.message.contains(signal), "{}", f.message);
                    assert_eq!(f.timed_out, None);
                }
                None => assert_ne!(i, 17),
            }
        }
        assert_eq!(p.restarts(), 1);
        drop(outs);
        assert_eq!(p.free_frames(), 64, "no frame leaked");
        assert!(p.shutdown().failure.is_none());
    }
}

#[test]
fn a_worker_killed_while_idle_is_restarted_before_it_is_needed() {
    let p = Pipeline::builder().stage(StageSpec::process_named("f.act")).max_in_flight(16).build().unwrap();
    let (_, pid) = p.worker_pids()[0];
    assert!(kill9(pid));
    common::await_restarts(&p, 1);
    let outs = run_one(&p, (0..10).map(|i| item(OK, i)).collect());
    assert!(outs.iter().all(|o| o.failure().is_none()), "no item was in hand");
    assert_ne!(p.worker_pids()[0].1, pid);
    drop(outs);
    assert!(p.shutdown().failure.is_none());
}

/// The supervisor wakes on the status pipe's hang-up, not on a poll: the item the
/// dead worker held fails without anything else happening (about a millisecond on an
/// idle machine; the bound only tells a prompt notice from none before shutdown).
#[test]
fn a_dead_worker_is_noticed_at_once() {
    let marks = Marks::new();
    let p = Pipeline::builder().stage(StageSpec::process_named("f.act")).max_in_flight(4).build().unwrap();
    let (_, pid) = p.worker_pids()[0];
    let ticket = p.submit(&item(HANG, 0)).unwrap();
    marks.wait("hang-0"); // the worker holds the item
    let killed = Instant::now();
    assert!(kill9(pid));
    let result = ticket.wait();
    let noticed = killed.elapsed();
    assert!(
        matches!(&result, Err(ItemError::Stage { failure, .. }) if failure.worker_died == Some(pid)),
        "{result:?}"
    );
    assert!(noticed < Duration::from_secs(5), "took {noticed:?}");
    drop(result);
    p.shutdown();
}

/// Two single stages batching their publishes, 200,000 small items, a worker of
/// either stage killed every 20 ms: every item comes back once and in order, and only
/// worker deaths fail items, one per kill at most.
#[test]
fn killing_batching_workers_mid_stream_loses_and_duplicates_nothing() {
    let p = Arc::new(
        Pipeline::builder()
            .stage(StageSpec::process_named("f.act"))
            .stage(StageSpec::process_named("f.bump"))
            .max_in_flight(256)
            .build()
            .unwrap(),
    );
    let killer = Killer::every(&p, Duration::from_millis(20));
    let n = 200_000u64;
    let mut died = 0;
    for (i, out) in p.map((0..n).map(|i| item(OK, i))).enumerate() {
        let out = out.or_else(ItemError::into_output).expect("the pipeline goes on");
        assert_eq!(index_of(&out), i as u64, "in order, none lost, none twice");
        match out.failure() {
            Some(f) => {
                assert!(f.worker_died.is_some(), "only deaths fail items: {f}");
                died += 1;
            }
            None => assert!(out.stage_ran(0) && out.stage_ran(1), "both stages ran on item {i}"),
        }
    }
    check_after_kills(p, killer.stop(), died, 256);
}

#[test]
fn an_item_that_runs_past_the_timeout_fails_and_its_worker_is_restarted() {
    let timeout = Duration::from_millis(200);
    let p = Pipeline::builder().stage(StageSpec::process_named("f.act").timeout(timeout)).build().unwrap();
    let (_, pid) = p.worker_pids()[0];
    let start = Instant::now();
    let outs = run_one(&p, (0..6).map(|i| item(if i == 2 { HANG } else { NAP }, i)).collect());
    // The hung item sleeps an hour: coming back at all is the timeout's work.
    assert!(start.elapsed() < HANG_BOUND, "took {:?}", start.elapsed());
    for (i, out) in outs.iter().enumerate() {
        match out.failure() {
            Some(f) => {
                assert_eq!(i, 2, "{f}");
                assert_eq!((f.timed_out, f.worker_died), (Some(timeout), Some(pid)));
                assert!(f.message.contains("timed out"), "{}", f.message);
            }
            None => assert_ne!(i, 2),
        }
    }
    assert_eq!(p.restarts(), 1);
    drop(outs);
    assert!(p.shutdown().failure.is_none());
}

/// The stage after replicas puts their items back in order, holding early ones off
/// their rings: killed again and again, its replacement picks up what it held and
/// the order, and nothing is lost or comes out twice.
#[test]
fn killing_the_stage_that_reorders_replicas_loses_and_duplicates_nothing() {
    let p = Arc::new(
        Pipeline::builder()
            .stage(StageSpec::process_named("f.bump").replicas(3))
            .stage(StageSpec::process_named("f.act"))
            .max_in_flight(256)
            .build()
            .unwrap(),
    );
    let killer = Killer::every_in_stage(&p, Duration::from_millis(15), 1);
    let n = 400_000u64;
    let mut died = 0;
    for (i, out) in p.map((0..n).map(|i| item(OK, i))).enumerate() {
        let out = out.or_else(ItemError::into_output).expect("the pipeline goes on");
        assert_eq!(index_of(&out), i as u64, "in order, none lost, none twice");
        match out.failure() {
            Some(f) => {
                assert_eq!((f.stage, f.name.as_str()), (1, "f.act"), "{f}");
                assert!(f.worker_died.is_some(), "only deaths fail items: {f}");
                died += 1;
            }
            None => assert!(out.stage_ran(0) && out.stage_ran(1), "both stages ran on item {i}"),
        }
    }
    let kills = killer.stop();
    eprintln!("{n} items, {kills} kills of the reordering stage, {died} failed by a death");
    check_after_kills(p, kills, died, 256);
}

/// A reordering stage can time out too: the hung item fails, the rest go on in order.
#[test]
fn a_reordering_stage_that_hangs_times_out() {
    let timeout = Duration::from_millis(200);
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("f.bump").replicas(2))
        .stage(StageSpec::process_named("f.act").timeout(timeout))
        .build()
        .unwrap();
    let items = (0..40).map(|i| item(if i == 7 { HANG } else { NAP }, i)).collect::<Vec<_>>();
    let outs: Vec<Output> =
        p.map(items).map(|r| r.or_else(ItemError::into_output).expect("the pipeline goes on")).collect();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(index_of(out), i as u64);
        match out.failure() {
            Some(f) => assert_eq!((i, f.stage, f.timed_out), (7, 1, Some(timeout)), "{f}"),
            None => assert_ne!(i, 7),
        }
    }
    drop(outs);
    assert!(p.shutdown().failure.is_none());
}

#[test]
fn timeouts_that_cannot_be_honoured_are_typed_errors() {
    let bad = |stages: Vec<StageSpec>| match Pipeline::builder().stages(stages).build() {
        Err(BuildError::BadTimeout { stage, reason }) => (stage, reason),
        Err(e) => panic!("expected BadTimeout, got {e}"),
        Ok(_) => panic!("expected BadTimeout, it built"),
    };
    let timed = |t: Duration| StageSpec::process_named("f.act").timeout(t);
    assert!(bad(vec![timed(Duration::ZERO)]).1.contains("1 ms"));
    assert!(bad(vec![timed(Duration::from_micros(999))]).1.contains("1 ms"));
    assert!(bad(vec![timed(MAX_STAGE_TIMEOUT + Duration::from_millis(1))]).1.contains("1 ms"));
    let thread = StageSpec::thread_named("f.act").timeout(Duration::from_secs(1));
    assert!(bad(vec![thread]).1.contains("thread"));
    // A pair's halves have no `timeout` to call: that mistake cannot be written.
    // The extremes that are allowed build and run.
    for t in [Duration::from_millis(1), MAX_STAGE_TIMEOUT] {
        let p = Pipeline::builder()
            .stage(StageSpec::process_named("f.act").replicas(2).timeout(t))
            .build()
            .unwrap();
        assert!(p.submit(&item(OK, 0)).unwrap().wait().is_ok());
        p.shutdown();
    }
}

#[test]
fn shutdown_with_thousands_in_flight_finishes_them_all() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("f.act").replicas(2))
        .stage(StageSpec::process_named("f.bump"))
        .max_in_flight(4_096)
        .build()
        .unwrap();
    let tickets: Vec<_> = (0..4_000).map(|i| p.submit(&item(OK, i)).unwrap()).collect();
    let report = p.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    for (i, t) in tickets.into_iter().enumerate() {
        let out = t.wait().expect("every item finished");
        assert_eq!((index_of(&out), out.failure()), (i as u64, None));
    }
}

#[test]
fn aborting_shutdown_fails_every_unfinished_item_with_a_typed_error() {
    let p =
        Pipeline::builder().stage(StageSpec::process_named("f.act")).max_in_flight(4_096).build().unwrap();
    let tickets: Vec<_> = (0..3_000).map(|i| p.submit(&item(NAP, i)).unwrap()).collect();
    let start = Instant::now();
    let report = p.shutdown_timeout(Duration::from_millis(50));
    // Close to 50 ms: the busy worker is killed, not waited for (it used to take the
    // 5 s a worker gets to exit after a graceful shutdown).
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert!(!report.was_graceful());
    assert!(matches!(report.failure, Some(EngineFailure::Aborted)), "{:?}", report.failure);
    let (mut done, mut aborted) = (0, 0);
    for t in tickets {
        match t.wait() {
            Ok(out) => {
                assert!(out.failure().is_none());
                done += 1;
            }
            Err(ItemError::Engine(EngineFailure::Aborted)) => aborted += 1,
            Err(e) => panic!("expected Aborted, got {e}"),
        }
    }
    assert_eq!(done + aborted, 3_000, "every submitted item resolved");
    assert!(aborted > 2_000, "3,000 items of 1 ms cannot finish in 50 ms ({done} did)");
}

/// Workers exit within a second of the parent's `kill -9`, even in the middle of an
/// item, and nothing is left in /dev/shm or /tmp.
#[test]
fn busy_workers_exit_when_the_parent_is_killed_and_leave_nothing() {
    const HELPER: &str = "RINGPIPE_TEST_BUSY_ORPHAN";
    if std::env::var_os(HELPER).is_some() {
        let marks = Marks::new();
        let p = Pipeline::builder()
            .stage(StageSpec::process_named("f.act").replicas(2))
            .stage(StageSpec::process_named("f.act"))
            .build()
            .unwrap();
        let tickets: Vec<_> = (0..4).map(|i| p.submit(&item(HANG, i)).unwrap()).collect();
        // Each replica takes the first item routed to it: items 0 and 1.
        marks.wait("hang-0");
        marks.wait("hang-1");
        let pids: Vec<String> = p.worker_pids().iter().map(|(_, pid)| pid.to_string()).collect();
        println!("pids: {}", pids.join(" "));
        std::thread::sleep(Duration::from_secs(60));
        drop(tickets);
        return;
    }
    let before = (entries("/dev/shm"), entries("/tmp"));
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["busy_workers_exit_when_the_parent_is_killed_and_leave_nothing", "--exact", "--nocapture"])
        .env(HELPER, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(parent.stdout.take().unwrap()));
    let pids: Vec<u32> = loop {
        let line = lines.next().expect("the helper printed its worker pids").unwrap();
        if let Some(rest) = line.strip_prefix("pids: ") {
            break rest.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    };
    assert_eq!(pids.len(), 3);
    kill9(parent.id());
    parent.wait().unwrap();
    common::remove_marks_of(parent.id());
    // They exit within milliseconds on an idle machine; the bound catches a worker
    // that never notices.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "workers {pids:?} outlived their parent by 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((entries("/dev/shm"), entries("/tmp")), before, "nothing may be left behind");
}

/// A dead worker is replaced in place: its pipes close with it, so a pipeline that
/// lost workers holds as many descriptors as one that lost none. Counted in a helper
/// process of its own, where no other test opens descriptors meanwhile.
#[test]
fn replaced_workers_leave_no_descriptor_open() {
    const HELPER: &str = "RINGPIPE_TEST_FD_COUNT";
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    if std::env::var_os(HELPER).is_some() {
        let p = Pipeline::builder().stage(StageSpec::process_named("f.act")).build().unwrap();
        assert!(p.submit(&item(OK, 0)).unwrap().wait().is_ok());
        let before = fds();
        for deaths in 1..=5 {
            assert!(kill9(p.worker_pids()[0].1));
            common::await_restarts(&p, deaths);
        }
        assert!(p.submit(&item(OK, 1)).unwrap().wait().is_ok());
        println!("fds: {before} {}", fds());
        let report = p.shutdown();
        assert_eq!(report.workers.len(), 6, "5 dead, 1 running: {report:?}");
        assert!(!report.was_graceful() && report.failure.is_none());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["replaced_workers_leave_no_descriptor_open", "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("fds: ")).expect("the helper counted");
    let (before, after) = line.split_once(' ').unwrap();
    assert_eq!(before, after, "descriptors before and after 5 worker deaths");
}

/// Names in `dir` that belong to this user (other tests and programs may come and go,
/// but ours must not grow).
fn entries(dir: &str) -> HashSet<std::ffi::OsString> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default()
}
