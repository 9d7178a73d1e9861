//! Integration tests of the engine core with real worker processes (issue 2's points).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use ringpipe::{
    register, register_stage, stage_fn, BoxError, BuildError, Frame, ItemError, Pipeline, Pool, Registered,
    Stage, StageOutcome, StageSpec, SubmitError, TrySubmitError,
};

mod common;

use common::{alive, kill9};

ringpipe::worker_test_entry!();

register_stage!("t.upper", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut().make_ascii_uppercase();
    Ok(())
})));

// Appends the worker's pid (4 bytes) to the frame.
register_stage!("t.pid", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let n = f.len();
    f.set_len(n + 4)?;
    f.bytes_mut()[n..].copy_from_slice(&std::process::id().to_le_bytes());
    Ok(())
})));

// Adds the parameter byte to every byte; rejects parameters that are not one byte.
register_stage!("t.add", |p: &[u8]| {
    let [k] = *p else { return Err(format!("t.add needs exactly 1 parameter byte, got {}", p.len()).into()) };
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        f.bytes_mut().iter_mut().for_each(|b| *b = b.wrapping_add(k));
        Ok(())
    }))
});

// Fails items starting with `E`, panics on items starting with `P`.
register_stage!("t.picky", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    match f.bytes().first() {
        Some(b'E') => Err("items starting with E are refused".into()),
        Some(b'P') => panic!("told to panic"),
        _ => {
            f.bytes_mut().reverse();
            Ok(())
        }
    }
})));

// Only wants items whose first byte is even; counts the determiner's calls in byte 1.
register_stage!("t.even", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut()[0] = b'Y'; // odd: the next t.even declines it
    Ok(())
})
.with_determiner(|f: &mut Frame<'_>| {
    let b = f.bytes_mut();
    b[1] += 1;
    b[0] % 2 == 0
})));

// Replaces the frame by its bytes reversed and doubled (a new frame, no allocation).
register_stage!("t.double", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.replace(|old, new| {
        let n = old.len();
        if 2 * n > new.len() {
            return Err::<usize, BoxError>("frame too small to double".into());
        }
        for (i, b) in old.iter().rev().enumerate() {
            new[i] = *b;
            new[n + i] = *b;
        }
        Ok(2 * n)
    })
})));

// Sleeps the number of milliseconds in the parameter bytes (u32 LE) per item.
register_stage!("t.sleep", |p: &[u8]| {
    let ms = u32::from_le_bytes(p.try_into().map_err(|_| "t.sleep needs 4 parameter bytes")?);
    Ok(stage_fn(move |_f: &mut Frame<'_>| {
        std::thread::sleep(Duration::from_millis(ms.into()));
        Ok(())
    }))
});

// Marks that it holds the item (tag `t.hold-<first byte>`), then sleeps 200 ms.
register_stage!("t.hold", |_: &[u8]| {
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        common::mark(&format!("t.hold-{}", f.bytes()[0]));
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }))
});

fn one(stage: StageSpec) -> Pipeline {
    Pipeline::builder().stage(stage).build().unwrap()
}

/// A typed stage: XORs every byte with its key.
struct Xor(u8);

impl Stage for Xor {
    fn process(&mut self, f: &mut Frame<'_>) -> Result<(), BoxError> {
        f.bytes_mut().iter_mut().for_each(|b| *b ^= self.0);
        Ok(())
    }
}

impl Registered for Xor {
    const NAME: &'static str = "t.xor";
    type Params = u8;
    fn from_params(key: u8) -> Result<Self, BoxError> {
        match key {
            0 => Err("a key of 0 changes nothing".into()),
            k => Ok(Xor(k)),
        }
    }
}

register!(Xor);

#[test]
fn typed_stages_run_in_processes_threads_and_pools() {
    let p = Pipeline::builder()
        .stage(StageSpec::process::<Xor>(0x20).replicas(2))
        .stage(StageSpec::thread::<Xor>(0x01))
        .build()
        .unwrap();
    assert_eq!(&p.submit(b"abc").unwrap().wait().unwrap()[..], b"@CB");
    graceful(p);
    let pool = Pool::builder::<Xor>(0x20).workers(2).build().unwrap();
    let out: Vec<Vec<u8>> = pool.map([b"ab", b"CD"]).map(|r| r.unwrap().to_vec()).collect();
    assert_eq!(out, [b"AB".to_vec(), b"cd".to_vec()]);
    assert!(pool.shutdown().was_graceful());
    // Bad typed parameters are the stage's own error, at build.
    let err = Pipeline::builder().stage(StageSpec::process::<Xor>(0)).build().unwrap_err();
    assert!(matches!(&err, BuildError::StageInit { message, .. } if message.contains("key of 0")), "{err}");
    // Bytes the typed parameters cannot come from are refused too (the dynamic form).
    let err =
        Pipeline::builder().stage(StageSpec::process_named("t.xor").params(vec![1, 2])).build().unwrap_err();
    assert!(
        matches!(&err, BuildError::StageInit { message, .. } if message.contains("1 parameter bytes")),
        "{err}"
    );
}

fn graceful(p: Pipeline) {
    let report = p.shutdown();
    assert!(report.was_graceful(), "{report:?}");
}

// 2. Shared segment, 6. process stages: the item really visits another process.
#[test]
fn process_stage_runs_in_another_process() {
    let p = one(StageSpec::process_named("t.pid"));
    let out = p.submit(b"x").unwrap().wait().unwrap();
    let pid = u32::from_le_bytes(out[1..5].try_into().unwrap());
    assert_ne!(pid, std::process::id());
    assert!(p.worker_pids().iter().any(|&(s, w)| s == 0 && w == pid));
    drop(out);
    graceful(p);
}

// 7. Thread stages: the same registered stage switched to a thread with one word.
#[test]
fn same_stage_as_thread_runs_in_the_parent() {
    let p = one(StageSpec::thread_named("t.pid"));
    let out = p.submit(b"x").unwrap().wait().unwrap();
    assert_eq!(u32::from_le_bytes(out[1..5].try_into().unwrap()), std::process::id());
    assert!(p.worker_pids().is_empty());
    drop(out);
    graceful(p);
}

// 7. Thread stages may use rayon inside, on their own pool.
#[test]
fn thread_stage_uses_its_own_rayon_pool() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let stage = stage_fn(move |f: &mut Frame<'_>| {
        use rayon::prelude::*;
        pool.install(|| f.bytes_mut().par_chunks_mut(1024).for_each(|c| c.make_ascii_uppercase()));
        Ok(())
    });
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.add").params([1]))
        .stage(StageSpec::with_stage("rayon-upper", stage))
        .build()
        .unwrap();
    let input: Vec<u8> = (0..50_000).map(|i| b'a' + (i % 25) as u8).collect();
    let out = p.submit(&input).unwrap().wait().unwrap();
    let expect: Vec<u8> = input.iter().map(|b| (b + 1).to_ascii_uppercase()).collect();
    assert_eq!(&out[..], &expect[..]);
    drop(out);
    graceful(p);
}

// 6. Parameters travel to the worker as bytes.
#[test]
fn params_reach_process_and_thread_stages() {
    for spec in [StageSpec::process_named("t.add").params([3]), StageSpec::thread_named("t.add").params([3])]
    {
        let p = one(spec);
        let out = p.submit(b"abc").unwrap().wait().unwrap();
        assert_eq!(&out[..], b"def");
        drop(out);
        graceful(p);
    }
}

// 5. Frames: fill in place with a typed header, zero-length frames, length changes,
// replacement by a new frame, and the result read in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Head {
    id: u64,
    value: u32,
    _pad: u32,
}

#[test]
fn frames_typed_in_place_zero_length_and_replaced() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.double"))
        .stage(StageSpec::with_stage(
            "bump",
            stage_fn(|f: &mut Frame<'_>| {
                if f.len() >= 16 {
                    f.header_mut::<Head>()?.value += 1;
                }
                Ok(())
            }),
        ))
        .frame_capacity(256)
        .build()
        .unwrap();
    // Filled in place through the guard, with a Pod header at the start.
    let mut frame = p.alloc(16).unwrap();
    let (head, _) = frame.split::<Head>().unwrap();
    *head = Head { id: 7, value: 41, _pad: 0 };
    let out = frame.submit().unwrap().wait().unwrap();
    assert_eq!(out.len(), 32, "t.double replaced the frame by one twice as long");
    drop(out);
    // Zero-length frames work.
    let out = p.submit(b"").unwrap().wait().unwrap();
    assert!(out.is_empty());
    drop(out);
    // A replacement that does not fit fails the item, and nothing else.
    let big = vec![1u8; 200];
    let out = p.submit(&big).unwrap().wait().or_else(ItemError::into_output).unwrap();
    assert_eq!(out.failure().unwrap().message, "frame too small to double");
    assert_eq!(&out[..], &big[..], "a failed replacement leaves the frame as it was");
    drop(out);
    graceful(p);
}

#[test]
fn growing_past_capacity_fails_the_item_with_a_typed_message() {
    let p = Pipeline::builder()
        .stage(StageSpec::with_stage(
            "grow",
            stage_fn(|f: &mut Frame<'_>| {
                let cap = f.capacity();
                f.set_len(cap + 1)?;
                Ok(())
            }),
        ))
        .frame_capacity(64)
        .build()
        .unwrap();
    let out = p.submit(b"abc").unwrap().wait().or_else(ItemError::into_output).unwrap();
    let failure = out.failure().unwrap();
    assert!(failure.message.contains("does not fit the frame capacity of 64"), "{failure}");
    drop(out);
    graceful(p);
}

// 8. Determiner: may read and change the frame; unwanted items move on untouched.
#[test]
fn determiner_skips_and_may_change_the_frame() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.even"))
        .stage(StageSpec::thread_named("t.even"))
        .build()
        .unwrap();
    let wanted = p.submit(&[2, 0, 9]).unwrap();
    let skipped = p.submit(&[3, 0, 9]).unwrap();
    let w = wanted.wait().unwrap();
    // Stage 0 wanted it and wrote 'Y' (odd), so stage 1 declined it; both counted.
    assert_eq!(&w[..], &[b'Y', 2, 9]);
    assert!(w.stage_ran(0) && !w.stage_ran(1));
    let s = skipped.wait().unwrap();
    assert_eq!(&s[..], &[3, 2, 9]);
    assert!(!s.stage_ran(0) && !s.stage_ran(1));
    drop((w, s));
    graceful(p);
}

// 10. Errors: recorded with stage index, name and message; later stages skip the
// item; panics are caught; the worker keeps serving; callbacks see it all.
#[test]
fn errors_and_panics_fail_only_their_item() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.picky"))
        .stage(StageSpec::process_named("t.pid").on_complete(move |e| {
            let outcome = match e.outcome {
                StageOutcome::Ran => "ran".to_string(),
                StageOutcome::Skipped => "skipped".into(),
                StageOutcome::Failed(m) => format!("failed: {m}"),
                StageOutcome::NotReached => "not reached".into(),
            };
            ev.lock().unwrap().push((e.stage, e.name.to_string(), outcome));
        }))
        .build()
        .unwrap();
    let before = p.worker_pids();
    let e = p.submit(b"Eabc").unwrap().wait();
    assert!(matches!(e, Err(ItemError::Stage { .. })), "a stage failure is an error");
    let e = e.or_else(ItemError::into_output).unwrap();
    let f = e.failure().expect("E items fail");
    assert_eq!((f.stage, f.name.as_str()), (0, "t.picky"));
    assert_eq!(f.message, "items starting with E are refused");
    assert!(e.stage_ran(0) && !e.stage_ran(1), "later stages do not run a failed item");
    assert_eq!(&e[..], b"Eabc");

    let pn = p.submit(b"Pxyz").unwrap().wait().or_else(ItemError::into_output).unwrap();
    let f = pn.failure().expect("P items panic");
    assert_eq!(f.stage, 0);
    assert!(f.message.contains("told to panic"), "{f}");
    assert!(f.to_string().starts_with("stage 0 (`t.picky`) failed:"));
    drop(pn);

    let ok = p.submit(b"abc").unwrap().wait().unwrap();
    assert_eq!(&ok[..3], b"cba");
    drop(ok);
    assert_eq!(p.worker_pids(), before, "the worker survived the panic and kept serving");
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev,
        vec![
            (1, "t.pid".to_string(), "not reached".to_string()),
            (1, "t.pid".to_string(), "not reached".to_string()),
            (1, "t.pid".to_string(), "ran".to_string()),
        ]
    );
    graceful(p);
}

// 9. Submit and results: wait, try_wait, is_finished, Future, batch, completions, map.
#[test]
fn drop_stops_workers() {
    let p = one(StageSpec::process_named("t.upper"));
    let pids = p.worker_pids();
    let t = p.submit(b"x").unwrap();
    drop(p);
    assert_eq!(&t.wait().unwrap()[..], b"X", "results outlive the pipeline");
    for (_, pid) in pids {
        assert!(!alive(pid), "worker {pid} still running after drop");
    }
}

// Bad input: each gets a typed error that says what to do.
#[test]
fn bad_input_gets_typed_errors() {
    let err = Pipeline::builder().stage(StageSpec::process_named("no.such.stage")).build().unwrap_err();
    assert!(matches!(&err, BuildError::UnknownStage { stage: 0, name } if name == "no.such.stage"), "{err}");
    assert!(err.to_string().contains("register_stage!"));
    let err = Pipeline::builder().stage(StageSpec::thread_named("no.such.stage")).build().unwrap_err();
    assert!(matches!(err, BuildError::UnknownStage { .. }));

    for spec in [StageSpec::process_named("t.add").params([1, 2]), StageSpec::thread_named("t.add")] {
        let err = Pipeline::builder().stage(spec).build().unwrap_err();
        match &err {
            BuildError::StageInit { stage: 0, name, message } => {
                assert_eq!(name, "t.add");
                assert!(message.contains("needs exactly 1 parameter byte"), "{message}");
            }
            other => panic!("expected StageInit, got {other:?}"),
        }
    }
    assert!(matches!(Pipeline::builder().build().unwrap_err(), BuildError::NoStages));
    let err =
        Pipeline::builder().stage(StageSpec::thread_named("t.upper")).max_in_flight(0).build().unwrap_err();
    assert!(matches!(err, BuildError::Config(_)), "{err}");
    let err = Pipeline::builder()
        .stage(StageSpec::thread_named("t.upper"))
        .frame_capacity(ringpipe::MAX_FRAME_CAPACITY + 1)
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::Config(_)), "{err}");
    let too_many = (0..ringpipe::MAX_STAGES + 1).map(|_| StageSpec::thread_named("t.upper"));
    assert!(matches!(Pipeline::builder().stages(too_many).build().unwrap_err(), BuildError::Config(_)));

    let p =
        Pipeline::builder().stage(StageSpec::process_named("t.upper")).frame_capacity(100).build().unwrap();
    let big = vec![0u8; 101];
    assert_eq!(p.submit(&big).unwrap_err(), SubmitError::TooLarge { requested: 101, capacity: 100 });
    assert!(p.alloc(101).is_err());
    assert!(matches!(p.try_submit(&big[..]), Err(TrySubmitError::Failed(SubmitError::TooLarge { .. }, _))));
    let mut results = p.map([vec![1u8; 10], big.clone()]);
    assert!(results.next().unwrap().is_ok());
    assert!(matches!(
        results.next(),
        Some(Err(ItemError::TooLarge { index: 1, requested: 101, capacity: 100 }))
    ));
    assert!(results.next().is_none(), "the inputs after it go on (there are none)");
    drop(results);
    // Nothing was lost: the pipeline still works.
    assert_eq!(&p.submit(&[b'a'; 100]).unwrap().wait().unwrap()[..], &[b'A'; 100][..]);
    graceful(p);
}

// A dead worker is an error for the item it held, never a hang; its replacement
// takes the rest.
#[test]
fn a_killed_worker_is_restarted_and_only_its_item_fails() {
    let marks = common::Marks::new();
    let p = Pipeline::builder().stage(StageSpec::process_named("t.hold")).max_in_flight(4).build().unwrap();
    let (_, pid) = p.worker_pids()[0];
    let tickets: Vec<_> = (0..3u8).map(|i| p.submit(&[i]).unwrap()).collect();
    marks.wait("t.hold-0");
    assert!(kill9(pid));
    let outs: Vec<_> = tickets
        .into_iter()
        .map(|t| t.wait().or_else(ItemError::into_output).expect("the pipeline goes on"))
        .collect();
    let f = outs[0].failure().expect("the item the dead worker held fails");
    assert_eq!((f.stage, f.name.as_str(), f.worker_died), (0, "t.hold", Some(pid)));
    assert!(f.message.contains("SIGKILL"), "{}", f.message);
    for (i, out) in outs.iter().enumerate().skip(1) {
        assert!(out.failure().is_none(), "item {i} did not fail");
        assert_eq!(&out[..], &[i as u8], "and went through the replacement");
    }
    assert_eq!(p.restarts(), 1);
    let (_, next) = p.worker_pids()[0];
    assert_ne!(next, pid);
    assert_eq!(&p.submit(b"x").unwrap().wait().unwrap()[..], b"x");
    drop(outs);
    let report = p.shutdown();
    assert!(!report.was_graceful(), "a worker died");
    assert!(report.failure.is_none(), "but the pipeline did not break: {:?}", report.failure);
}

// 11. Workers notice a dead parent and exit, leaving nothing on disk: see
// `busy_workers_exit_when_the_parent_is_killed_and_leave_nothing` in tests/faults.rs.
