//! The pool across hosts against what it is built on, in one run (`benches/cluster.sh`
//! sets up two emulated hosts and runs every mode under `mpiexec`):
//!
//! - `raw N`: rsmpi point-to-point, rank 0 sends N messages of 1 MiB to rank 1 (the
//!   wire's ceiling between the same two ranks);
//! - `pool N`: `ClusterPool` with N tasks of 1 MiB, each answered with 8 bytes, every
//!   task crossing to the other host (`master_works(false)`);
//! - `tiny N`: N tasks of 64 bytes echoed back, tasks per second.
//!
//! Each prints one line `MODE value unit` on rank 0.

use std::time::Instant;

use mpi::point_to_point::{Destination, Source};
use mpi::topology::Communicator;
use ringpipe::cluster::{Cluster, ClusterPool};
use ringpipe::{register_stage, stage_fn, Frame};

// Answers a task with its length and a checksum of every 4096th byte (8 bytes).
register_stage!("bench.cluster.sum", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let sum: u32 = f.bytes().iter().step_by(4096).map(|&b| u32::from(b)).sum();
    let n = f.len() as u32;
    f.set_len(8)?;
    f.bytes_mut()[..4].copy_from_slice(&n.to_le_bytes());
    f.bytes_mut()[4..].copy_from_slice(&sum.to_le_bytes());
    Ok(())
})));

register_stage!("bench.cluster.echo", |_: &[u8]| Ok(stage_fn(|_f: &mut Frame<'_>| Ok(()))));

const MIB: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let (Some(mode), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse::<usize>().ok())) else {
        println!("usage (under mpiexec -n 2): cluster raw|pool|tiny N; see benches/cluster.sh");
        return Ok(());
    };
    let cluster = Cluster::init()?;
    match mode.as_str() {
        "raw" => raw(&cluster, n),
        "pool" => pool(&cluster, "bench.cluster.sum", MIB, n, MIB + 4096),
        "tiny" => pool(&cluster, "bench.cluster.echo", 64, n, 4096),
        other => Err(format!("unknown mode {other}").into()),
    }
}

fn raw(cluster: &Cluster, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let world = cluster.world();
    let msg = vec![7u8; MIB];
    if cluster.rank() == 0 {
        let started = Instant::now();
        for _ in 0..n {
            world.process_at_rank(1).send(&msg[..]);
        }
        let (_ack, _) = world.process_at_rank(1).receive::<u64>();
        let secs = started.elapsed().as_secs_f64();
        println!("raw {:.1} MB/s", (n * MIB) as f64 / secs / 1e6);
    } else if cluster.rank() == 1 {
        let mut buf = vec![0u8; MIB];
        for _ in 0..n {
            world.process_at_rank(0).receive_into(&mut buf[..]);
        }
        world.process_at_rank(0).send(&(n as u64));
    }
    Ok(())
}

fn pool(
    cluster: &Cluster,
    task: &str,
    size: usize,
    n: usize,
    frame: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = ClusterPool::builder_named(task)
        .workers_per_host(2)
        .frame_capacity(frame)
        .batch(if size >= MIB { 4 } else { 256 })
        .master_works(false)
        .build(cluster)?;
    if !cluster.is_master() {
        return Ok(pool.serve()?);
    }
    let data = vec![7u8; size];
    let started = Instant::now();
    let mut count = 0;
    for r in pool.map_unordered(std::iter::repeat_n(&data[..], n)) {
        r?;
        count += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(count, n);
    if size >= MIB {
        println!("pool {:.1} MB/s", (n * size) as f64 / secs / 1e6);
    } else {
        println!("tiny {:.0} tasks/s", n as f64 / secs);
    }
    pool.shutdown();
    Ok(())
}
