//! The master-worker pool (issue 4, first part): order, dead workers, bad input.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ringpipe::{register_stage, stage_fn, BuildError, Frame, ItemError, Pool};

mod common;

use common::kill9;

ringpipe::worker_test_entry!();

// Task: [index: u64, sleep_us: u64, fail: u64]; result: the index doubled in word 0.
register_stage!("p.task", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let words: &mut [u64] = bytemuck::try_cast_slice_mut(f.bytes_mut()).map_err(|e| format!("{e}"))?;
    std::thread::sleep(Duration::from_micros(words[1]));
    if words[2] == 1 {
        return Err(format!("task {} refused", words[0]).into());
    }
    words[0] *= 2;
    Ok(())
})));

fn task(i: u64, sleep_us: u64) -> [u64; 3] {
    [i, sleep_us, 0]
}

fn jitter(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 3_000
}

#[test]
fn ordered_map_yields_task_order_despite_random_times() {
    let pool = Pool::builder_named("p.task").workers(3).build().unwrap();
    let mut next = 0;
    for r in pool.map((0..300).map(|i| task(i, jitter(i)))) {
        let r = r.unwrap();
        assert_eq!(r.index(), next);
        assert_eq!(r.cast_slice::<u64>().unwrap()[0], 2 * next);
        next += 1;
    }
    assert_eq!(next, 300);
    // A pool is a pipeline of one replicated stage: its statistics come with it.
    let stats = pool.stats();
    assert_eq!((stats.stages.len(), stats.stages[0].replicas, stats.stages[0].items), (1, 3, 300), "{stats}");
    let report = pool.shutdown();
    assert_eq!(report.workers.len(), 3);
    assert!(report.was_graceful(), "{report:?}");
}

#[test]
fn unordered_map_yields_each_index_once_and_uses_every_worker() {
    let pool = Pool::builder_named("p.task").workers(3).max_in_flight(3).build().unwrap();
    let mut seen = HashSet::new();
    let mut workers = HashSet::new();
    let mut out_of_order = false;
    let mut last = None;
    for r in pool.map_unordered((0..200).map(|i| task(i, jitter(i)))) {
        let r = r.unwrap();
        assert!(seen.insert(r.index()), "index {} twice", r.index());
        workers.insert(r.ran_on().expect("a worker ran it").replica);
        out_of_order |= last.is_some_and(|l| r.index() < l);
        last = Some(r.index());
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(workers.len(), 3);
    assert!(out_of_order, "random task times should reorder completions");
}

#[test]
fn more_workers_than_cores_still_work() {
    let pool = Pool::builder_named("p.task").workers(8).build().unwrap();
    let n =
        pool.map((0..400).map(|i| task(i, 0))).filter(|r| r.as_ref().is_ok_and(|o| o.index() < 400)).count();
    assert_eq!(n, 400);
    assert_eq!(pool.shutdown().workers.len(), 8);
}

#[test]
fn task_errors_and_oversized_tasks_fail_only_themselves() {
    let pool = Pool::builder_named("p.task").workers(2).frame_capacity(64).build().unwrap();
    let tasks: Vec<Vec<u64>> =
        (0..20).map(|i| if i == 7 { vec![0; 20] } else { vec![i, 0, u64::from(i == 3)] }).collect();
    let mut count = 0;
    for (i, r) in pool.map(tasks.iter()).enumerate() {
        count += 1;
        match (i, &r) {
            (3, Err(ItemError::Stage { failure, output })) => {
                assert!(failure.message.contains("refused"), "{failure}");
                assert_eq!(output.index(), 3);
            }
            (7, Err(ItemError::TooLarge { index: 7, requested: 160, capacity: 64 })) => {}
            (_, Ok(out)) => assert_eq!(out.cast_slice::<u64>().unwrap()[0], 2 * i as u64),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(count, 20);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    assert!(matches!(Pool::builder_named("p.task").workers(0).build(), Err(BuildError::Config(_))));
    assert!(matches!(Pool::builder_named("p.task").workers(100_000).build(), Err(BuildError::Config(_))));
    assert!(matches!(Pool::builder_named("p.task").max_in_flight(0).build(), Err(BuildError::Config(_))));
    assert!(matches!(
        Pool::builder_named("no.such.task").workers(1).build(),
        Err(BuildError::UnknownStage { .. })
    ));
}

#[test]
fn holding_every_result_is_reported_not_a_deadlock() {
    let pool = Pool::builder_named("p.task").workers(1).max_in_flight(2).build().unwrap();
    let all: Vec<_> = pool.map((0..10).map(|i| task(i, 0))).collect();
    assert_eq!(all.len(), 3);
    assert!(matches!(all[2], Err(ItemError::Saturated)));
    drop(all);
    // The pool goes on once the results are dropped.
    assert_eq!(pool.map((0..10).map(|i| task(i, 0))).filter(|r| r.is_ok()).count(), 10);
}

/// A worker SIGKILLed while holding a task: it is replaced, the task it held fails
/// naming its index and the signal, every other task completes exactly once.
#[test]
fn a_killed_worker_is_replaced_and_only_its_task_fails() {
    for retry in [false, true] {
        let pool =
            Pool::builder_named("p.task").workers(2).max_in_flight(8).retry_once(retry).build().unwrap();
        let victim = pool.worker_pids()[0];
        let mut seen = HashSet::new();
        let mut died = Vec::new();
        let started = Instant::now();
        let mut killed = false;
        for r in pool.map_unordered((0..200).map(|i| task(i, 2_000))) {
            if !killed && started.elapsed() > Duration::from_millis(50) {
                killed = kill9(victim);
                assert!(killed);
            }
            match r {
                Ok(out) => assert!(seen.insert(out.index()), "index {} twice", out.index()),
                Err(ItemError::Stage { failure, output }) => {
                    assert_eq!(failure.worker_died, Some(victim));
                    assert!(failure.message.contains("SIGKILL"), "{failure}");
                    assert!(!seen.contains(&output.index()));
                    died.push(output.index());
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(killed);
        if retry {
            assert!(died.is_empty(), "retried: {died:?}");
            assert_eq!(seen.len(), 200);
        } else {
            // It held one task, or none if it died between two.
            assert!(died.len() <= 1, "{died:?}");
            assert_eq!(seen.len() + died.len(), 200);
        }
        // The last results may come out before the replacement is counted.
        let deadline = Instant::now() + common::HANG;
        while pool.restarts() == 0 {
            assert!(Instant::now() < deadline, "the dead worker was not replaced");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pool.restarts(), 1);
        assert_ne!(pool.worker_pids()[0], victim);
        let report = pool.shutdown();
        assert!(report.workers.iter().all(|w| !w.killed), "{report:?}");
        assert!(report.failure.is_none(), "{report:?}");
    }
}

/// A map dropped with tasks still out takes them back, so the next map starts clean
/// (no stale task is mistaken for one of its own).
#[test]
fn dropping_a_map_midway_leaves_the_pool_ready() {
    let pool = Pool::builder_named("p.task").workers(2).max_in_flight(8).build().unwrap();
    let first: Vec<u64> =
        pool.map((0..100).map(|i| task(i, 500))).take(3).map(|r| r.unwrap().index()).collect();
    assert_eq!(first, [0, 1, 2]);
    let mut next = 0;
    for r in pool.map((0..50).map(|i| task(i, 0))) {
        let r = r.unwrap();
        assert_eq!((r.index(), r.cast_slice::<u64>().unwrap()[0]), (next, 2 * next));
        next += 1;
    }
    assert_eq!(next, 50);
    assert_eq!(pool.free_frames(), 8, "the dropped map's tasks gave their frames back");
}

#[test]
fn results_stay_readable_after_the_pool_is_gone() {
    let pool = Pool::builder_named("p.task").workers(2).build().unwrap();
    let results: Vec<_> = pool.map((0..20).map(|i| task(i, 0))).map(|r| r.unwrap()).collect();
    let report = pool.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    // The frames live in the segment, which each result keeps mapped.
    for (i, r) in results.iter().enumerate() {
        assert_eq!((r.index(), r.cast_slice::<u64>().unwrap()[0]), (i as u64, 2 * i as u64));
    }
    drop(results); // returns the frames to a free list nobody uses any more: no panic
}
