//! The MPI master-worker pool in Rust: a master hands tasks (arrays of f64) to
//! whichever worker process is free; each worker sleeps a random 0 to 5 ms and
//! returns its array doubled; results come back tagged with the task index. The
//! output shows which worker did which task and that every index came back once.
//!
//! ```text
//! cargo run --example pool
//! ```

use std::time::Duration;

use ringpipe::{register_stage, stage_fn, Frame, Pool};

const TASKS: usize = 20;
const WORKERS: usize = 4;

register_stage!("example.double", |_: &[u8]| {
    let mut seed = u64::from(std::process::id()) | 1;
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 5_000));
        let values: &mut [f64] = bytemuck::try_cast_slice_mut(f.bytes_mut()).map_err(|e| format!("{e}"))?;
        values.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }))
});

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    // One task per worker in flight: the next task goes to whichever worker finishes first.
    let pool = Pool::builder_named("example.double")
        .workers(WORKERS)
        .max_in_flight(WORKERS)
        .observable(true) // `ringpipe-top` can watch it
        .build()?;
    let pids = pool.worker_pids();
    println!("master: {} workers, pids {:?}", pool.workers(), pids);
    let tasks = (0..TASKS).map(|i| [i as f64, i as f64 + 0.5, 100.0 * i as f64]);
    let mut seen = [0u32; TASKS];
    let mut per_worker = [0u32; WORKERS];
    for result in pool.map_unordered(tasks) {
        let result = result?;
        let i = result.index() as usize;
        let values: &[f64] = result.cast_slice()?;
        assert_eq!(values, [2.0 * i as f64, 2.0 * i as f64 + 1.0, 200.0 * i as f64]);
        let worker = result.ran_on().ok_or("a worker ran every task")?;
        println!("task {i:2} done by worker {} (pid {}): {values:?}", worker.replica, worker.pid);
        seen[i] += 1;
        per_worker[worker.replica] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "every index exactly once");
    println!(
        "every one of the {TASKS} task indices came back exactly once; tasks per worker: {per_worker:?}"
    );
    for (w, exit) in pool.shutdown().workers.iter().enumerate() {
        println!(
            "worker {w} (pid {}) stopped: {}",
            exit.pid,
            exit.status.map_or("unknown".into(), |s| s.to_string())
        );
    }
    Ok(())
}
