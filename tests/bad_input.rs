//! Bad input (issue 5): every public size, count, name and duration tried with zero,
//! the maximum, one past it and nonsense. Each gets a typed error, and nothing that was
//! already in the pipeline is lost. (Replica counts, pair declarations and stage
//! timeouts have their own tests in `replicas.rs`, `streams.rs` and `faults.rs`.)

use std::time::Duration;

use ringpipe::{
    register_stage, stage_fn, BuildError, Frame, ItemError, LayoutError, Pipeline, Pool, StageSpec,
    SubmitError, MAX_FRAME_CAPACITY, MAX_SLOTS, MAX_STAGES, MAX_WORKERS,
};

ringpipe::worker_test_entry!();

register_stage!("b.echo", |_: &[u8]| Ok(stage_fn(|_f: &mut Frame<'_>| Ok(()))));

fn echo() -> StageSpec {
    StageSpec::process_named("b.echo")
}

fn out_of_range(r: Result<Pipeline, BuildError>, field: &str) {
    match r {
        Err(BuildError::Config(LayoutError::OutOfRange { what, .. })) => {
            assert!(what.contains(field), "{what}")
        }
        Err(e) => panic!("{field}: expected OutOfRange, got {e}"),
        Ok(_) => panic!("{field}: expected OutOfRange, it built"),
    }
}

#[test]
fn max_in_flight_zero_past_the_maximum_and_nonsense() {
    for n in [0, MAX_SLOTS, MAX_SLOTS + 1, usize::MAX] {
        out_of_range(Pipeline::builder().stage(echo()).max_in_flight(n).build(), "max_in_flight");
    }
    // The largest that fits next to the stage's spare frame, with tiny frames.
    let p = Pipeline::builder().stage(echo()).max_in_flight(MAX_SLOTS - 1).frame_capacity(8).build().unwrap();
    assert_eq!(p.max_in_flight(), MAX_SLOTS - 1);
    assert_eq!(&p.submit(b"x").unwrap().wait().unwrap()[..], b"x");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn frame_capacity_zero_past_the_maximum_and_nonsense() {
    // Zero-byte frames are legal: empty items pass, anything longer is refused.
    let p = Pipeline::builder().stage(echo()).frame_capacity(0).build().unwrap();
    assert_eq!(p.submit(b"").unwrap().wait().unwrap().len(), 0);
    assert_eq!(p.submit(b"x").unwrap_err(), SubmitError::TooLarge { requested: 1, capacity: 0 });
    assert!(p.shutdown().was_graceful());
    for bytes in [MAX_FRAME_CAPACITY + 1, usize::MAX] {
        out_of_range(Pipeline::builder().stage(echo()).frame_capacity(bytes).build(), "capacity");
    }
    // The maximum frame size is accepted; a segment too large for the machine is a
    // typed error that says how much was asked, not a SIGBUS later.
    match Pipeline::builder().stage(echo()).frame_capacity(MAX_FRAME_CAPACITY).max_in_flight(1 << 12).build()
    {
        Err(BuildError::Segment(e)) => assert!(e.to_string().contains("byte shared segment"), "{e}"),
        Err(e) => panic!("expected a segment error, got {e}"),
        Ok(_) => panic!("4 TiB of frames cannot be allocated here"),
    }
}

#[test]
fn submitted_and_allocated_lengths_past_the_frame_are_refused() {
    let p = Pipeline::builder().stage(echo()).frame_capacity(64).build().unwrap();
    let kept = p.submit(b"kept").unwrap();
    for len in [65, usize::MAX] {
        assert!(matches!(p.alloc(len), Err(SubmitError::TooLarge { capacity: 64, .. })));
        assert!(matches!(p.try_alloc(len), Err(SubmitError::TooLarge { capacity: 64, .. })));
    }
    assert!(p.alloc(0).is_ok() && p.alloc(64).is_ok());
    assert_eq!(&kept.wait().unwrap()[..], b"kept", "what was in flight is not lost");
    assert!(p.shutdown().was_graceful());
}

#[test]
fn stage_names_empty_huge_and_nonsense_are_unknown_stages() {
    for name in [String::new(), "x".repeat(1 << 20), "b.echo\0".into(), "B.ECHO".into(), " b.echo".into()] {
        for spec in [StageSpec::process_named(&name), StageSpec::thread_named(&name)] {
            match Pipeline::builder().stage(spec).build() {
                Err(BuildError::UnknownStage { stage: 0, name: n }) => assert_eq!(n, name),
                Err(e) => panic!("expected UnknownStage, got {e}"),
                Ok(_) => panic!("{name:?} is not registered"),
            }
        }
        assert!(matches!(
            Pool::builder_named(&name).workers(1).build(),
            Err(BuildError::UnknownStage { .. })
        ));
    }
}

#[test]
fn stage_counts_zero_the_maximum_and_past_it() {
    assert!(matches!(Pipeline::builder().build(), Err(BuildError::NoStages)));
    let p = Pipeline::builder()
        .stages((0..MAX_STAGES).map(|_| StageSpec::thread_named("b.echo")))
        .build()
        .unwrap();
    assert_eq!(&p.submit(b"through 256 stages").unwrap().wait().unwrap()[..], b"through 256 stages");
    assert!(p.shutdown().was_graceful());
    let too_many =
        Pipeline::builder().stages((0..=MAX_STAGES).map(|_| StageSpec::thread_named("b.echo"))).build();
    assert!(matches!(too_many, Err(BuildError::Config(_))));
}

#[test]
fn durations_zero_and_huge() {
    // No worker can report ready in no time: a typed error, and no worker is left.
    match Pipeline::builder().stage(echo()).startup_timeout(Duration::ZERO).build() {
        Err(BuildError::StartTimeout { stage: 0 }) => {}
        Err(e) => panic!("expected StartTimeout, got {e}"),
        Ok(_) => panic!("expected StartTimeout, it built"),
    }
    let p = Pipeline::builder().stage(echo()).startup_timeout(Duration::MAX).build().unwrap();
    let mut t = p.submit(b"slow?").unwrap();
    match t.wait_timeout(Duration::ZERO) {
        Ok(out) => assert_eq!(&out[..], b"slow?"),
        Err(ItemError::TimedOut) => assert_eq!(&t.wait_timeout(Duration::MAX).unwrap()[..], b"slow?"),
        Err(e) => panic!("expected TimedOut, got {e}"),
    }
    assert!(p.shutdown_timeout(Duration::MAX).was_graceful());
    let p = Pipeline::builder().stage(echo()).build().unwrap();
    let report = p.shutdown_timeout(Duration::ZERO);
    assert!(report.failure.is_none(), "nothing in flight, nothing aborted: {:?}", report.failure);
}

#[test]
fn pool_counts_zero_past_the_maximum_and_nonsense() {
    for n in [0, MAX_WORKERS + 1, usize::MAX] {
        assert!(
            matches!(Pool::builder_named("b.echo").workers(n).build(), Err(BuildError::Config(_))),
            "{n}"
        );
    }
    for n in [0, MAX_SLOTS + 1, usize::MAX] {
        let r = Pool::builder_named("b.echo").workers(1).max_in_flight(n).build();
        assert!(matches!(r, Err(BuildError::Config(_))), "{n}");
    }
    for bytes in [MAX_FRAME_CAPACITY + 1, usize::MAX] {
        let r = Pool::builder_named("b.echo").workers(1).frame_capacity(bytes).build();
        assert!(matches!(r, Err(BuildError::Config(_))), "{bytes}");
    }
}
