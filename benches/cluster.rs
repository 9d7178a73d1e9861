//! The pool across hosts against what it is built on, in one run (`benches/cluster.sh`
//! sets up two emulated hosts and runs every mode under `mpiexec`):
//!
//! - `raw N`: rsmpi point-to-point, rank 0 sends N messages of 1 MiB to rank 1 (the
//!   wire's ceiling between the same two ranks);
//! - `pool N`: `ClusterPool` with N tasks of 1 MiB, each answered with 8 bytes, every
//!   task crossing to the other host (`master_works(false)`);
//! - `tiny N`: N tasks of 64 bytes echoed back, tasks per second.
//! - `zstd N [CORE]`: N tasks of 1 MiB of text, each compressed with zstd level 3
//!   (answered with the compressed length), one worker per host and the master's host
//!   working too; each rank pins itself and its workers to core `rank`, or `CORE`
//!   (`sched_setaffinity`, inherited by the workers it starts). Run on one host, then
//!   on two: the scaling; and as two one-host jobs at once on cores 0 and 1, the most
//!   two cores give with nothing crossing between them.
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

// Compresses the task with zstd level 3; answers with the compressed length (8 bytes).
register_stage!("bench.cluster.zstd", |_: &[u8]| {
    let mut ctx = zstd::bulk::Compressor::new(3)?;
    let mut out = Vec::new();
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        out.resize(zstd::zstd_safe::compress_bound(f.len()), 0);
        let n = ctx.compress_to_buffer(f.bytes(), &mut out[..])? as u64;
        f.set_len(8)?;
        f.bytes_mut().copy_from_slice(&n.to_le_bytes());
        Ok(())
    }))
});

const MIB: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let (Some(mode), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse::<usize>().ok())) else {
        println!("usage (under mpiexec -n 2): cluster raw|pool|tiny|zstd N; see benches/cluster.sh");
        return Ok(());
    };
    let cluster = Cluster::init()?;
    if mode == "zstd" {
        let core = args.get(2).and_then(|c| c.parse().ok());
        pin_to_core(core.unwrap_or(cluster.rank() as usize))?;
    }
    match mode.as_str() {
        "raw" => raw(&cluster, n),
        "pool" => pool(&cluster, "bench.cluster.sum", MIB, n, MIB + 4096),
        "tiny" => pool(&cluster, "bench.cluster.echo", 64, n, 4096),
        "zstd" => scaling(&cluster, n),
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

/// Pins this process (and the workers it will start) to core `core`.
fn pin_to_core(core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it, and
    // sched_setaffinity reads it for this process (pid 0).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Seconds since the epoch: comparable between processes, unlike an `Instant`.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Text that zstd-3 compresses about 3x, like source code or logs.
fn text(n: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "pipeline ",
        "stage ",
        "ring ",
        "frame ",
        "worker ",
        "replica ",
        "host ",
        "rank ",
        "chunk ",
        "zstd ",
        "seal ",
        "index ",
        "task ",
        "result ",
        "batch ",
        "credit\n",
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        if x % 7 == 0 {
            v.extend_from_slice(format!("{} ", x % 100_000).as_bytes());
        }
    }
    v.truncate(n);
    v
}

/// zstd-3 on 1 MiB text tasks, one worker per host, every host working (the master's
/// too): MB/s of input compressed.
fn scaling(cluster: &Cluster, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let pool = ClusterPool::builder_named("bench.cluster.zstd")
        .workers_per_host(1)
        .frame_capacity(MIB + 4096)
        .batch(2)
        .master_works(true)
        .build(cluster)?;
    if !cluster.is_master() {
        return Ok(pool.serve()?);
    }
    let data = text(MIB);
    let (from, started) = (unix_seconds(), Instant::now());
    let mut by_rank = vec![0usize; cluster.size() as usize];
    for r in pool.map_unordered(std::iter::repeat_n(&data[..], n)) {
        by_rank[r?.rank() as usize] += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(by_rank.iter().sum::<usize>(), n);
    // The wall-clock span too: two jobs run at once are timed together, from the first
    // start to the last end (each one's own rate would count the time it ran alone).
    println!(
        "zstd {:.1} MB/s (tasks per rank {by_rank:?}) from {from:.6} to {:.6}",
        (n * MIB) as f64 / secs / 1e6,
        from + secs
    );
    pool.shutdown();
    Ok(())
}
