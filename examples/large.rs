//! `atbu.mp_pipeline`'s "Large Pipeline Example": 100 process stages, each with a determiner
//! that flips a flag in the item and says no to every other request, so the item is
//! processed by 50 of them and moves past the other 50 without its bytes moving.
//!
//! Run with `cargo run --example large`.

use bytemuck::{Pod, Zeroable};
use ringpipe::{register_stage, stage_fn, Frame, ItemError, Pipeline, StageSpec};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LargeItem {
    is_ok: u32,
    num: u32,
    pid: u32,
}

register_stage!("large_stage", |_: &[u8]| {
    Ok(stage_fn(|f: &mut Frame<'_>| {
        f.header_mut::<LargeItem>()?.num += 1;
        Ok(())
    })
    .with_determiner(|f: &mut Frame<'_>| {
        // Example of a stage rejecting its chance to run the item:
        // say "no" to every other request.
        let Ok(item) = f.header_mut::<LargeItem>() else { return false };
        item.is_ok ^= 1;
        item.is_ok == 0
    }))
});

fn py_bool(b: u32) -> &'static str {
    if b != 0 {
        "True"
    } else {
        "False"
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let stages = 100;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mpp = Pipeline::builder()
        .max_in_flight(cpus.min(15))
        .stages((0..stages).map(|_| StageSpec::process_named("large_stage")))
        .build()?;
    println!("Pipeline has {} stages.", mpp.num_stages());
    let item = LargeItem { is_ok: 1, num: 0, pid: std::process::id() };
    match mpp.submit(bytemuck::bytes_of(&item))?.wait() {
        Ok(r_wi) => {
            let r: &LargeItem = r_wi.header()?;
            assert_eq!(r.is_ok, 1);
            assert_eq!(r.num, 50);
            println!("Work item completed successfully:");
            println!("  r_wi.is_ok={}", py_bool(r.is_ok));
            println!("  r_wi.pid={}", r.pid);
            println!("  r_wi.num={}", r.num);
        }
        Err(ItemError::Stage { failure: ex, .. }) => {
            println!("Something did not go as planned:");
            println!(" ex={ex}");
        }
        Err(e) => return Err(e.into()),
    }
    let report = mpp.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    Ok(())
}
