//! The MPI master-worker pool, across hosts: tasks are arrays of `f64`, each doubled
//! after a random sleep, by whichever host has room; the output says which host and
//! which worker process did which task, and every index comes back exactly once.
//!
//! ```text
//! cargo run --release --features mpi --example mpi_pool                 # one host, no mpiexec
//! mpiexec -n 3 target/release/examples/mpi_pool                         # three ranks, one machine
//! mpiexec -f hostfile -n 3 target/release/examples/mpi_pool [TASKS]     # a cluster
//! ... mpi_pool 1000 --task-ms 5 --resume done.bin   # record finished tasks; a rerun skips them
//! ... mpi_pool --pid-dir DIR                        # each rank writes its pid to DIR/rank-N
//! ... mpi_pool --host-timeout-ms 2000               # a host silent this long is lost
//! ... mpi_pool --pad-kib 96                         # tasks this much larger (zeros after the values)
//! ... mpi_pool --abandon 3                          # first a map of other tasks, dropped after 3 results
//! ```
//!
//! A task lost with its host (see `ClusterPool::host_timeout`) is reported by index,
//! and the job ends with an error once the others are done: a rerun with `--resume`
//! does the lost ones.
//!
//! Rank 0 is the master (its host works too); every other rank leads the worker
//! processes of its host. See `ringpipe::cluster` and the README's "Across hosts".

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringpipe::cluster::{Cluster, ClusterError, ClusterPool};
use ringpipe::{register, BoxError, Frame, Registered, Stage};

/// Values per task.
const VALUES: usize = 4;

/// Doubles every `f64` of the task after sleeping 0 to 3 ms (plus its parameter, in
/// milliseconds), then appends the pid of the worker process that did it.
struct Double {
    extra: Duration,
}

impl Stage for Double {
    fn process(&mut self, f: &mut Frame<'_>) -> Result<(), BoxError> {
        let n = f.len();
        if n % 8 != 0 {
            return Err(format!("a task is whole f64s; got {n} bytes").into());
        }
        let values: &mut [f64] = bytemuck::try_cast_slice_mut(f.bytes_mut())
            .map_err(|e| format!("task bytes are not aligned f64s: {e}"))?;
        // A sleep that differs per task, so that hosts finish out of order.
        let seed = values.first().map_or(0, |v| v.to_bits());
        let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
        std::thread::sleep(Duration::from_micros(x * 3) + self.extra);
        for v in values.iter_mut() {
            *v *= 2.0;
        }
        f.set_len(n + 4)?;
        f.bytes_mut()[n..].copy_from_slice(&std::process::id().to_le_bytes());
        Ok(())
    }
}

impl Registered for Double {
    const NAME: &'static str = "mpi_pool.double";
    /// Extra milliseconds per task.
    type Params = u64;
    fn from_params(ms: u64) -> Result<Self, BoxError> {
        Ok(Double { extra: Duration::from_millis(ms) })
    }
}

register!(Double);

/// `[TASKS] [--task-ms MS] [--resume FILE] [--pid-dir DIR] [--host-timeout-ms MS]
/// [--pad-kib N] [--abandon K]`, the same on every rank.
struct Args {
    tasks: usize,
    /// Zero `f64`s after each task's values: tasks of 64 KiB or more cross hosts on
    /// their own, straight from the master's memory.
    pad: usize,
    task_ms: u64,
    resume: Option<PathBuf>,
    /// Each rank writes its pid to `DIR/rank-N` (tests kill a host by it).
    pid_dir: Option<PathBuf>,
    host_timeout: Option<Duration>,
    /// Before the real run, a map of the same tasks negated is dropped after this many
    /// results, as a `?` on a failed task would drop it: none of its results may turn
    /// up in the real run (whose every result is checked against its own task).
    abandon: Option<usize>,
}

fn args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args {
        tasks: 200,
        pad: 0,
        task_ms: 0,
        resume: None,
        pid_dir: None,
        host_timeout: None,
        abandon: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--abandon" => a.abandon = Some(it.next().ok_or("--abandon takes a number")?.parse()?),
            "--pad-kib" => a.pad = it.next().ok_or("--pad-kib takes a number")?.parse::<usize>()? << 10,
            "--task-ms" => a.task_ms = it.next().ok_or("--task-ms takes a number")?.parse()?,
            "--resume" => a.resume = Some(it.next().ok_or("--resume takes a file")?.into()),
            "--pid-dir" => a.pid_dir = Some(it.next().ok_or("--pid-dir takes a directory")?.into()),
            "--host-timeout-ms" => {
                let ms = it.next().ok_or("--host-timeout-ms takes a number")?.parse()?;
                a.host_timeout = Some(Duration::from_millis(ms));
            }
            n => a.tasks = n.parse().map_err(|_| format!("not a task count: {n}"))?,
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let args = args()?;
    let cluster = Cluster::init()?;
    if let Some(dir) = &args.pid_dir {
        std::fs::write(dir.join(format!("rank-{}", cluster.rank())), std::process::id().to_string())?;
    }
    let mut pool = ClusterPool::builder::<Double>(args.task_ms)
        .workers_per_host(2)
        .batch(8)
        .frame_capacity((VALUES * 8 + args.pad + 4).max(4096));
    if let Some(timeout) = args.host_timeout {
        pool = pool.host_timeout(timeout);
    }
    let pool = pool.build(&cluster)?;
    if !cluster.is_master() {
        return Ok(pool.serve()?);
    }
    let n = args.tasks;
    let tasks: Vec<[f64; VALUES]> =
        (0..n).map(|i| std::array::from_fn(|k| (i * VALUES + k) as f64 + 0.5)).collect();
    // Each task's bytes: its values, then the padding.
    let inputs: Vec<Vec<u8>> =
        tasks.iter().map(|t| [bytemuck::cast_slice::<f64, u8>(t), &vec![0; args.pad]].concat()).collect();
    println!("{} hosts: {}", cluster.size(), pool.hosts().join(", "));
    if let Some(k) = args.abandon {
        let negated: Vec<Vec<u8>> = inputs
            .iter()
            .map(|t| {
                t.chunks_exact(8)
                    .flat_map(|v| (-f64::from_le_bytes(v.try_into().unwrap())).to_le_bytes())
                    .collect()
            })
            .collect();
        let taken = pool.map_unordered(negated.iter().map(|t| &t[..])).take(k).count();
        println!("abandoned a map after {taken} results");
    }
    let started = Instant::now();
    let mut seen = vec![false; n];
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    let inputs = inputs.iter().map(|t| &t[..]);
    let (done_before, results) = match &args.resume {
        Some(record) => {
            let before = std::fs::read(record).unwrap_or_default();
            let before: HashSet<usize> =
                before.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize).collect();
            println!("resuming: {} tasks done before", before.len());
            (before, pool.map_resumable(inputs, record)?)
        }
        None => (HashSet::new(), pool.map(inputs)),
    };
    let mut lost = 0;
    for result in results {
        let out = match result {
            Ok(out) => out,
            Err(e @ ClusterError::HostLost { .. }) => {
                println!("lost {e}");
                lost += 1;
                continue;
            }
            Err(e) => {
                println!("error: {e}"); // printed before MPI may end the process (see below)
                return Err(e.into());
            }
        };
        let i = out.index() as usize;
        let doubled: [f64; VALUES] = out.read().ok_or("a result is shorter than its task")?;
        let pid = u32::from_le_bytes(out[out.len() - 4..].try_into()?);
        assert_eq!(doubled, tasks[i].map(|v| v * 2.0), "task {i}");
        assert!(!std::mem::replace(&mut seen[i], true), "task {i} came back twice");
        *per_host.entry(format!("{} (rank {})", out.host(), out.rank())).or_default() += 1;
        println!(
            "task {i:>4}: {} (rank {}), worker {pid}: {:?} -> {doubled:?}",
            out.host(),
            out.rank(),
            tasks[i]
        );
    }
    let now = seen.iter().filter(|&&s| s).count();
    println!("{now} tasks, each once, in {:.2?}; per host: {per_host:?}", started.elapsed());
    print!("{}", pool.stats());
    pool.shutdown();
    if lost > 0 {
        // Printed here too: with a host lost, MPI may end this process while it
        // finalizes, before `main`'s error is shown.
        let why = format!("{lost} tasks were lost with their host; rerun with --resume to do them");
        println!("{why}");
        return Err(why.into());
    }
    for (i, &s) in seen.iter().enumerate() {
        assert!(s != done_before.contains(&i), "task {i}: done before and now, or neither");
    }
    Ok(())
}
