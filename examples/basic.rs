//! `atbu.mp_pipeline`'s "Basic/Simple Pipeline Example": one work item through three process
//! stages. Each stage gets the parent's pid as its parameter bytes and refuses to run
//! in the parent; the item's fields are a `bytemuck::Pod` struct read and written in
//! place in shared memory.
//!
//! Run with `cargo run --example basic`.

use bytemuck::{Pod, Zeroable};
use ringpipe::{register_stage, stage_fn, BoxError, Frame, ItemError, Pipeline, StageSpec};

/// The work item (`wi.user_obj` in `atbu.mp_pipeline`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BasicItem {
    value: u64,
    field1: [u8; 64],
    field2: [u8; 128],
    parent: [u8; 64],
}

fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    dst[..s.len()].copy_from_slice(s.as_bytes());
}

fn get(src: &[u8]) -> &str {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    std::str::from_utf8(&src[..end]).unwrap_or("<not utf-8>")
}

/// Builds a stage that checks it is not running in the parent (`params` = its pid).
fn in_worker(params: &[u8], work: fn(&mut BasicItem)) -> Result<impl ringpipe::Stage, BoxError> {
    let parent_pid = u32::from_le_bytes(params.try_into().map_err(|_| "expected the parent pid as 4 bytes")?);
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        if std::process::id() == parent_pid {
            return Err("a process stage ran in the parent".into());
        }
        work(f.header_mut::<BasicItem>()?);
        Ok(())
    }))
}

register_stage!("int_stage0", |p: &[u8]| in_worker(p, |wi| wi.value = 100));
register_stage!("int_stage1", |p: &[u8]| in_worker(p, |wi| {
    wi.value *= 2;
    put(&mut wi.field1, "stage1");
}));
register_stage!("int_stage2", |p: &[u8]| in_worker(p, |wi| {
    wi.value *= 2;
    let text = format!("stage2: got this from parent: {}", get(&wi.parent));
    put(&mut wi.field2, &text);
}));

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let pid = std::process::id().to_le_bytes();
    let sp = Pipeline::builder()
        .stage(StageSpec::process_named("int_stage0").params(pid))
        .stage(StageSpec::process_named("int_stage1").params(pid))
        .stage(StageSpec::process_named("int_stage2").params(pid))
        .build()?;

    let mut frame = sp.alloc(std::mem::size_of::<BasicItem>())?;
    let (wi, _) = frame.split::<BasicItem>()?;
    *wi = BasicItem::zeroed();
    put(&mut wi.parent, "This is from parent");
    match frame.submit()?.wait() {
        Ok(r_wi) => {
            let wi: &BasicItem = r_wi.header()?;
            assert_eq!(get(&wi.parent), "This is from parent"); // should not change
            assert_eq!(wi.value, 400);
            println!("Work item completed successfully:");
            println!("  wi.user_obj[0]={}", wi.value);
            println!("  wi.user_obj[1]={}", get(&wi.field1));
            println!("  wi.user_obj[2]={}", get(&wi.field2));
        }
        Err(ItemError::Stage { failure: ex, .. }) => {
            println!("Something did not go as planned:");
            println!(" ex={ex}");
        }
        Err(e) => return Err(e.into()),
    }
    let report = sp.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    Ok(())
}
