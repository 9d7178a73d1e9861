//! The soak (issue 5): items through three stages of two replicas each while a thread
//! kills a random worker every 50 ms. At the end every item is accounted for
//! (completed, or failed by a worker's death), none twice, and no frame leaked.
//!
//! `RINGPIPE_SOAK_ITEMS` (default 1,000,000) and `RINGPIPE_SOAK_SECS` (default 30: no
//! new items after that long) size it; the figures are printed:
//!
//! ```text
//! RINGPIPE_SOAK_SECS=600 cargo test --release --test soak -- --nocapture
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpipe::{register_stage, stage_fn, Frame, ItemError, Pipeline, StageSpec};

mod common;

use common::{await_restarts, Killer};

ringpipe::worker_test_entry!();

// Item: [index: u64, visits: u64]; each stage adds one visit.
register_stage!("s.visit", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let visits = u64::from_le_bytes(f.bytes()[8..16].try_into()?);
    f.bytes_mut()[8..16].copy_from_slice(&(visits + 1).to_le_bytes());
    Ok(())
})));

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn soak_with_a_worker_killed_every_50_ms() {
    let items = knob("RINGPIPE_SOAK_ITEMS", 1_000_000);
    let budget = Duration::from_secs(knob("RINGPIPE_SOAK_SECS", 30));
    let in_flight = 512;
    let p = Arc::new(
        Pipeline::builder()
            .stages((0..3).map(|_| StageSpec::process_named("s.visit").replicas(2)))
            .max_in_flight(in_flight)
            .build()
            .unwrap(),
    );
    let killer = Killer::every(&p, Duration::from_millis(50));
    let start = Instant::now();
    let inputs = (0..items)
        .take_while(|_| start.elapsed() < budget)
        .map(|i| bytemuck::cast::<[u64; 2], [u8; 16]>([i, 0]));
    let (mut completed, mut died, mut next) = (0u64, 0u64, 0u64);
    for out in p.map(inputs) {
        let out = out.or_else(ItemError::into_output).expect("the pipeline never breaks");
        let [index, visits]: [u64; 2] = bytemuck::pod_read_unaligned(&out[..16]);
        assert_eq!(index, next, "every item once, in order");
        next += 1;
        match out.failure() {
            None => {
                assert_eq!(visits, 3, "item {index} went through every stage once");
                completed += 1;
            }
            Some(f) => {
                assert!(f.worker_died.is_some(), "only worker deaths fail items: {f}");
                died += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let kills = killer.stop();
    let p = Arc::into_inner(p).unwrap();
    await_restarts(&p, kills);
    let leaked = in_flight - p.free_frames();
    println!(
        "soak: {next} items in {elapsed:.1?} ({:.0} items/s), {kills} kills, {} restarts, \
         {completed} completed, {died} failed by a worker's death, 0 duplicates, {leaked} leaked frames",
        next as f64 / elapsed.as_secs_f64(),
        p.restarts(),
    );
    assert_eq!(completed + died, next, "every item accounted for");
    assert!(died as usize <= kills, "at most one failure per kill");
    assert!(kills >= 5 || elapsed < Duration::from_millis(300), "{kills} kills in {elapsed:?}");
    assert_eq!(leaked, 0, "no frame leaked");
    let report = p.shutdown();
    assert!(report.failure.is_none(), "{:?}", report.failure);
}
