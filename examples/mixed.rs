//! `atbu.mp_pipeline`'s "Mixed Pipeline Example": 10 process stages alternating with 10 thread
//! stages. Process stages refuse to run in the parent's pid; thread stages (plain
//! closures) refuse to run anywhere else, so the item only completes if each kind
//! ran where it should.
//!
//! Run with `cargo run --example mixed`.

use bytemuck::{Pod, Zeroable};
use ringpipe::{register_stage, stage_fn, BoxError, Frame, ItemError, Pipeline, StageSpec};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MixedItem {
    is_ok: u32,
    num: u32,
    pid: u32,
}

register_stage!("mixed_subprocess", |_: &[u8]| {
    Ok(stage_fn(|f: &mut Frame<'_>| {
        let item = f.header_mut::<MixedItem>()?;
        if item.pid == std::process::id() {
            return Err("the subprocess stage ran in the parent's process".into());
        }
        item.num += 1;
        Ok(())
    }))
});

fn perform_thread_stage_work(f: &mut Frame<'_>) -> Result<(), BoxError> {
    let item = f.header_mut::<MixedItem>()?;
    if item.pid != std::process::id() {
        return Err("the thread stage ran outside the parent's process".into());
    }
    item.num += 1;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = Pipeline::builder().max_in_flight(cpus.min(15));
    for _ in 0..10 {
        builder = builder.stage(StageSpec::process_named("mixed_subprocess")).stage(StageSpec::with_stage(
            "thread_stage",
            stage_fn(perform_thread_stage_work).with_determiner(|_: &mut Frame<'_>| true),
        ));
    }
    let mpp = builder.build()?;
    println!("Pipeline has {} stages.", mpp.num_stages());
    let item = MixedItem { is_ok: 1, num: 0, pid: std::process::id() };
    match mpp.submit(bytemuck::bytes_of(&item))?.wait() {
        Ok(r_wi) => {
            let r: &MixedItem = r_wi.header()?;
            assert_eq!(r.num, 20);
            assert_eq!(r.pid, std::process::id());
            println!("Work item completed successfully:");
            println!("  r_wi.num={}", r.num);
            println!("  r_wi.pid={}", r.pid);
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
