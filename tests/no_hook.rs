//! A test binary that forgot `ringpipe::worker_test_entry!()`: building a pipeline
//! with a process stage must fail with a clear error, not hang.

use ringpipe::{register_stage, stage_fn, BuildError, Frame, Pipeline, StageSpec};

register_stage!("nohook.noop", |_: &[u8]| Ok(stage_fn(|_f: &mut Frame<'_>| Ok(()))));

#[test]
fn forgotten_hook_is_a_build_error() {
    let start = std::time::Instant::now();
    let err = Pipeline::builder().stage(StageSpec::process_named("nohook.noop")).build().unwrap_err();
    assert!(matches!(err, BuildError::HookMissing { stage: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("worker_hook()"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    // Thread stages need no hook.
    let p = Pipeline::builder().stage(StageSpec::thread_named("nohook.noop")).build().unwrap();
    assert!(p.shutdown().was_graceful());

    // A process that was started as a worker but did not run the hook must not start
    // pipelines of its own (that would spawn workers recursively).
    // (The variable ringpipe sets in the workers it starts.)
    std::env::set_var("RINGPIPE_WORKER", "0");
    let err = Pipeline::builder().stage(StageSpec::thread_named("nohook.noop")).build().unwrap_err();
    std::env::remove_var("RINGPIPE_WORKER");
    assert!(matches!(err, BuildError::InsideWorker), "{err:?}");
}
