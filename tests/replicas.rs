//! Replicated stages (issue 4): fan-out to the least loaded replica, order restored
//! (or not) behind it, more replicas than cores, bad declarations.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringpipe::{register_stage, stage_fn, BuildError, Frame, ItemError, Pipeline, StageSpec};

mod common;

ringpipe::worker_test_entry!();

/// `sleep_us` that means: mark `r.hold-<index>`, then wait to be released.
const HOLD: u64 = u64::MAX;

// Item: [index: u64, sleep_us: u64]; the stage sleeps (or holds, see `HOLD`), then
// appends its pid (u64).
register_stage!("r.work", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let words: &[u64] = bytemuck::try_cast_slice(&f.bytes()[..16]).map_err(|e| format!("{e}"))?;
    if words[1] == HOLD {
        let tag = format!("r.hold-{}", words[0]);
        common::mark(&tag);
        common::await_release(&tag);
    } else {
        std::thread::sleep(Duration::from_micros(words[1]));
    }
    let n = f.len();
    f.set_len(n + 8)?;
    f.bytes_mut()[n..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    Ok(())
})));

// Fails items whose index is a multiple of 7.
register_stage!("r.picky", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    match index_of(f.bytes()) % 7 {
        0 => Err("multiples of 7 are refused".into()),
        _ => Ok(()),
    }
})));

fn item(i: u64, sleep_us: u64) -> [u8; 16] {
    bytemuck::cast([i, sleep_us])
}

fn index_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// Random-looking 0..2 ms.
fn jitter(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 2_000
}

/// A thread stage that records the order in which items reach it.
fn recorder(seen: &Arc<Mutex<Vec<u64>>>) -> StageSpec {
    let seen = seen.clone();
    StageSpec::with_stage(
        "record",
        stage_fn(move |f: &mut Frame<'_>| {
            seen.lock().unwrap().push(index_of(f.bytes()));
            Ok(())
        }),
    )
}

fn pids_in(outputs: &[Vec<u8>]) -> HashSet<u64> {
    outputs.iter().map(|o| u64::from_le_bytes(o[16..24].try_into().unwrap())).collect()
}

#[test]
fn ordered_replicas_hand_items_on_in_submission_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("r.work").replicas(3))
        .stage(recorder(&seen))
        .max_in_flight(24)
        .build()
        .unwrap();
    assert_eq!(p.worker_pids().len(), 3);
    let outputs: Vec<Vec<u8>> =
        p.map((0..300).map(|i| item(i, jitter(i)))).map(|o| o.unwrap().to_vec()).collect();
    let indices: Vec<u64> = outputs.iter().map(|o| index_of(o)).collect();
    assert_eq!(indices, (0..300).collect::<Vec<_>>());
    assert_eq!(*seen.lock().unwrap(), (0..300).collect::<Vec<_>>(), "the stage after saw them in order");
    assert_eq!(pids_in(&outputs).len(), 3, "every replica worked");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn unordered_replicas_hand_items_on_as_they_finish() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("r.work").replicas(3).unordered())
        .stage(recorder(&seen))
        .max_in_flight(24)
        .build()
        .unwrap();
    let indices: Vec<u64> =
        p.map((0..300).map(|i| item(i, jitter(i)))).map(|o| index_of(&o.unwrap())).collect();
    assert_eq!(indices, (0..300).collect::<Vec<_>>(), "map still yields in input order");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>().len(), 300, "each item once");
    assert_ne!(seen, (0..300).collect::<Vec<_>>(), "random times must reorder some items");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_replicated_last_stage_completes_items_in_order() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let p = Pipeline::builder()
        .stage(
            StageSpec::process_named("r.work")
                .replicas(4)
                .on_complete(move |e| ev.lock().unwrap().push(index_of(e.bytes))),
        )
        .max_in_flight(200)
        .build()
        .unwrap();
    let n = p.submit_batch((0..200).map(|i| item(i, jitter(i)))).unwrap();
    assert_eq!(n, 200);
    let order: Vec<u64> = p.completions().map(|o| index_of(&o.unwrap())).collect();
    assert_eq!(order, (0..200).collect::<Vec<_>>(), "completions come in submission order");
    assert_eq!(*events.lock().unwrap(), order, "callbacks too");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn replicated_stages_next_to_each_other_restore_order_after_both() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("r.work").replicas(2))
        .stage(StageSpec::thread_named("r.picky").replicas(3))
        .stage(recorder(&seen))
        .build()
        .unwrap();
    for (i, out) in p.map((0..200).map(|i| item(i, jitter(i) / 4))).enumerate() {
        let out = out.or_else(ItemError::into_output).unwrap();
        assert_eq!(index_of(&out), i as u64);
        if i % 7 == 0 {
            let failure = out.failure().expect("refused");
            assert_eq!((failure.stage, failure.name.as_str()), (1, "r.picky"), "the stage, not the replica");
            assert!(!out.stage_ran(2));
        } else {
            assert!(out.failure().is_none() && out.stage_ran(0) && out.stage_ran(1) && out.stage_ran(2));
        }
    }
    assert_eq!(*seen.lock().unwrap(), (0..200).filter(|i| i % 7 != 0).collect::<Vec<_>>());
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_slow_item_does_not_hold_up_the_other_replicas() {
    // Item 0 holds one replica until the test releases it. The replica working on it
    // counts it as queued, so the 40 quick items after it all go to the other one and
    // come back while item 0 is still held (unordered: in order, they would be
    // processed just as fast but handed on after item 0).
    let marks = common::Marks::new();
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("r.work").replicas(2).unordered())
        .build()
        .unwrap();
    let slow = p.submit(&item(0, HOLD)).unwrap();
    marks.wait("r.hold-0");
    let mut pids = HashSet::new();
    for i in 1..41 {
        let out = p.submit(&item(i, 1_000)).unwrap().wait().unwrap();
        pids.insert(u64::from_le_bytes(out[16..24].try_into().unwrap()));
    }
    assert!(!slow.is_finished(), "the quick items did not wait behind the slow one");
    marks.release("r.hold-0");
    let slow = slow.wait().unwrap();
    assert_eq!(pids.len(), 1, "all quick items went to the free replica");
    assert!(!pids.contains(&u64::from_le_bytes(slow[16..24].try_into().unwrap())));
    drop(slow);
    assert!(p.shutdown().was_graceful());
}

#[test]
fn more_replicas_than_cores_work_and_park_when_idle() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("r.work").replicas(4 * cores))
        .stage(StageSpec::process_named("r.work").replicas_per_core())
        .build()
        .unwrap();
    assert_eq!(p.worker_pids().len(), 5 * cores);
    let mut count = 0;
    for (i, out) in p.map((0..2_000).map(|i| item(i, 0))).enumerate() {
        assert_eq!(index_of(&out.unwrap()), i as u64);
        count += 1;
    }
    assert_eq!(count, 2_000);
    std::thread::sleep(Duration::from_millis(100)); // past every spin budget
    let ticks = || p.worker_pids().iter().map(|(_, pid)| cpu_ticks(*pid)).sum::<u64>();
    let before = ticks();
    std::thread::sleep(Duration::from_millis(1_000));
    let used = ticks() - before;
    // A replica spinning instead of parking would burn ~100 ticks (10 ms each) here.
    assert!(used <= 5, "idle replicas used {used} ticks of CPU");
    assert!(p.shutdown().was_graceful());
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

#[test]
fn bad_replica_counts_are_typed_errors() {
    let build = |stages: Vec<StageSpec>| Pipeline::builder().stages(stages).build();
    let bad = |r: Result<Pipeline, BuildError>, stage: usize| match r {
        Err(BuildError::BadReplicas { stage: s, reason }) => {
            assert_eq!(s, stage, "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected BadReplicas for stage {stage}, got {other:?}"),
    };
    bad(build(vec![StageSpec::process_named("r.work").replicas(0)]), 0);
    bad(build(vec![StageSpec::process_named("r.work"), StageSpec::process_named("r.work").replicas(65)]), 1);
    bad(build(vec![StageSpec::with_stage("one", stage_fn(|_f| Ok(()))).replicas(2)]), 0);
    // A pair's halves have no `replicas` to call: that mistake cannot be written.
    // 5 stages of 64 replicas: more runners than a segment describes.
    let many = (0..5).map(|_| StageSpec::process_named("r.work").replicas(64)).collect();
    assert!(matches!(build(many), Err(BuildError::Config(_))));
    // The largest count works.
    let p = build(vec![StageSpec::thread_named("r.picky").replicas(64)]).unwrap();
    assert!(p.submit(&item(1, 0)).unwrap().wait().is_ok());
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_killed_replica_is_restarted_and_only_its_item_fails() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("r.work").replicas(2))
        .stage(StageSpec::thread_named("r.picky"))
        .max_in_flight(16)
        .build()
        .unwrap();
    let before: HashSet<u32> = p.worker_pids().iter().map(|&(_, pid)| pid).collect();
    let victim = p.worker_pids()[0].1;
    let mut seen = HashSet::new();
    let mut died = Vec::new();
    for (i, out) in p.map((0..400).map(|i| item(i, 500))).enumerate() {
        if i == 100 {
            assert!(common::kill9(victim));
        }
        let out = out.or_else(ItemError::into_output).unwrap();
        let index = index_of(&out);
        assert_eq!(index, i as u64, "order kept across the restart");
        assert!(seen.insert(index), "item {index} came back twice");
        match out.failure() {
            Some(f) if f.worker_died.is_some() => {
                assert_eq!((f.stage, f.worker_died), (0, Some(victim)));
                assert!(f.message.contains("SIGKILL"), "{}", f.message);
                died.push(index);
            }
            Some(f) => assert_eq!(f.stage, 1, "{f}"),
            None => assert!(index % 7 != 0),
        }
    }
    assert_eq!(seen.len(), 400, "no item lost");
    assert!(died.len() <= 1, "only the item the dead replica held fails: {died:?}");
    common::await_restarts(&p, 1); // the last items may come out before it is counted
    assert_eq!(p.restarts(), 1);
    let after: HashSet<u32> = p.worker_pids().iter().map(|&(_, pid)| pid).collect();
    assert_eq!(after.len(), 2);
    assert!(!after.contains(&victim) && after.intersection(&before).count() == 1, "{before:?} -> {after:?}");
    // The pipeline goes on with the replacement.
    let out = p.submit(&item(7_000, 0)).unwrap().wait().or_else(ItemError::into_output).unwrap(); // r.picky refuses 7,000
    assert_eq!(index_of(&out), 7_000);
    drop(out);
    let report = p.shutdown();
    assert!(!report.was_graceful(), "a worker died");
    assert!(report.failure.is_none(), "but the pipeline did not break: {:?}", report.failure);
}
