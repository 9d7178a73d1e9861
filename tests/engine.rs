//! Integration tests of the engine with real worker processes.

use std::time::Duration;

use ringpipe::{register_stage, stage_fn, BoxError, Frame, Pipeline, StageSpec};

ringpipe::worker_test_entry!();

register_stage!(T_UPPER, "t.upper", |_: &[u8]| Ok::<_, BoxError>(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut().make_ascii_uppercase();
    Ok(())
})));

#[test]
fn process_stage_round_trip() {
    let p = Pipeline::builder().stage(StageSpec::process("t.upper")).build().unwrap();
    let out = p.submit(b"hello").unwrap().wait().unwrap();
    assert_eq!(&out[..], b"HELLO");
    drop(out);
    let report = p.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    let _ = Duration::ZERO;
}
