//! Issue 4's benchmarks: the master-worker pool on tiny tasks, and a CPU-bound stage
//! on replicas, each against its peers measured in the same run (the ratio is the
//! figure that counts on a noisy VM).
//!
//! group `pool_tiny` (20,000 tasks of 64 bytes that do no work, 2 workers):
//! - `ringpipe_pool`: [`Pool`] over shared-memory rings, results in task order;
//! - `rayon`: the same tasks on a 2-thread rayon pool (copy in, copy out);
//! - `ipc_channel`: the MPI master-worker pattern by hand over ipc-channel: 2 child processes,
//!   32 tasks out per worker (the pool's default window of 64), the next task to
//!   whichever worker answered.
//!
//! group `replicas_cpu` (16 frames of 1 MiB of compressible text, zstd level 3):
//! - `ringpipe/1`, `ringpipe/2`: a process stage with 1 or 2 replicas;
//! - `rayon/1`, `rayon/2`: `par_iter` on a rayon pool of 1 or 2 threads.
//!
//! Run: `cargo bench --bench pool`. Child processes re-execute this binary: `main`
//! calls the hooks first.

use std::process::{Child, Command};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use rayon::prelude::*;
use ringpipe::{register_stage, stage_fn, BoxError, Frame, Pipeline, Pool, StageSpec};

const TASKS: usize = 20_000;
const TASK_BYTES: usize = 64;
const WORKERS: usize = 2;
/// Tasks out per worker in the ipc-channel pool: the same window as the pool's default.
const DEPTH: usize = 32;
const FRAMES: usize = 16;
const FRAME: usize = 1 << 20;
const IPC_WORKER: &str = "RINGPIPE_BENCH_IPC_WORKER";

register_stage!("bench.pool.noop", |_: &[u8]| Ok(stage_fn(|_f: &mut Frame<'_>| Ok(()))));

register_stage!("bench.pool.zstd3", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.replace(|src, dst| zstd::bulk::compress_to_buffer(src, dst, 3).map_err(BoxError::from))?;
    Ok(())
})));

fn main() {
    ringpipe::worker_hook();
    if let Ok(name) = std::env::var(IPC_WORKER) {
        ipc_worker(&name);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    pool_tiny(&mut c);
    replicas_cpu(&mut c);
    c.final_summary();
}

fn tasks() -> Vec<[u8; TASK_BYTES]> {
    (0..TASKS).map(|i| [i as u8; TASK_BYTES]).collect()
}

fn pool_tiny(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_tiny");
    g.throughput(Throughput::Elements(TASKS as u64));
    let tasks = tasks();

    let pool = Pool::builder_named("bench.pool.noop").workers(WORKERS).build().unwrap();
    assert_eq!(WORKERS * DEPTH, ringpipe::DEFAULT_POOL_WINDOW, "both pools keep as many tasks out");
    g.bench_function(BenchmarkId::from_parameter("ringpipe_pool"), |b| {
        b.iter(|| {
            let mut n = 0;
            for r in pool.map(tasks.iter()) {
                let r = r.unwrap();
                assert_eq!(r.index(), n);
                n += 1;
            }
            assert_eq!(n as usize, TASKS);
        })
    });
    pool.shutdown();

    let threads = rayon::ThreadPoolBuilder::new().num_threads(WORKERS).build().unwrap();
    g.bench_function(BenchmarkId::from_parameter("rayon"), |b| {
        b.iter(|| {
            let out: Vec<Vec<u8>> = threads.install(|| tasks.par_iter().map(|t| t.to_vec()).collect());
            assert_eq!(out.len(), TASKS);
        })
    });

    let mut ipc = IpcPool::start(WORKERS);
    g.bench_function(BenchmarkId::from_parameter("ipc_channel"), |b| b.iter(|| ipc.run(&tasks)));
    ipc.stop();
    g.finish();
}

/// The MPI master-worker pool's pattern by hand: a task channel to each worker, one shared
/// result channel back; results carry the task index and the worker.
struct IpcPool {
    to_workers: Vec<IpcBytesSender>,
    results: IpcBytesReceiver,
    children: Vec<Child>,
}

impl IpcPool {
    fn start(workers: usize) -> Self {
        let (results_tx, results) = ipc::bytes_channel().unwrap();
        let mut to_workers = Vec::new();
        let mut children = Vec::new();
        for w in 0..workers {
            type Hello = (IpcBytesSender, IpcSender<(IpcBytesSender, u8)>);
            let (server, name) = IpcOneShotServer::<Hello>::new().unwrap();
            children
                .push(Command::new(std::env::current_exe().unwrap()).env(IPC_WORKER, name).spawn().unwrap());
            let (_, (tasks_tx, results_back)) = server.accept().unwrap();
            results_back.send((results_tx.clone(), w as u8)).unwrap();
            to_workers.push(tasks_tx);
        }
        Self { to_workers, results, children }
    }

    fn send(&self, worker: usize, index: usize, task: &[u8]) {
        let mut msg = Vec::with_capacity(8 + task.len());
        msg.extend_from_slice(&(index as u64).to_le_bytes());
        msg.extend_from_slice(task);
        self.to_workers[worker].send(&msg).unwrap();
    }

    fn run(&mut self, tasks: &[[u8; TASK_BYTES]]) {
        let mut next = 0;
        for w in 0..self.to_workers.len() {
            for _ in 0..DEPTH {
                if next < tasks.len() {
                    self.send(w, next, &tasks[next]);
                    next += 1;
                }
            }
        }
        let mut results = vec![None; tasks.len()];
        for _ in 0..tasks.len() {
            let r = self.results.recv().unwrap();
            let index = u64::from_le_bytes(r[..8].try_into().unwrap()) as usize;
            let worker = r[8] as usize;
            results[index] = Some(r);
            if next < tasks.len() {
                self.send(worker, next, &tasks[next]);
                next += 1;
            }
        }
        assert!(results.iter().all(Option::is_some));
    }

    fn stop(self) {
        drop(self.to_workers);
        for mut c in self.children {
            let _ = c.wait();
        }
    }
}

/// An ipc-channel worker: echoes each task back tagged with its worker number.
fn ipc_worker(name: &str) {
    let (tasks_tx, tasks) = ipc::bytes_channel().unwrap();
    let (back_tx, back) = ipc::channel::<(IpcBytesSender, u8)>().unwrap();
    IpcSender::connect(name.to_owned()).unwrap().send((tasks_tx, back_tx)).unwrap();
    let (results, me) = back.recv().unwrap();
    while let Ok(task) = tasks.recv() {
        let mut r = Vec::with_capacity(task.len() + 1);
        r.extend_from_slice(&task[..8]);
        r.push(me);
        r.extend_from_slice(&task[8..]);
        if results.send(&r).is_err() {
            break;
        }
    }
}

/// Compressible text: words drawn from a small vocabulary (zstd-3 gets about 3x).
fn text_frames() -> Vec<Vec<u8>> {
    const WORDS: [&str; 16] = [
        "ring",
        "buffer",
        "stage",
        "frame",
        "worker",
        "process",
        "shared",
        "memory",
        "backup",
        "chunk",
        "compress",
        "encrypt",
        "pipeline",
        "replica",
        "order",
        "throughput",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..FRAMES)
        .map(|_| {
            let mut f = Vec::with_capacity(FRAME + 16);
            while f.len() < FRAME {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                f.extend_from_slice(WORDS[(state % 16) as usize].as_bytes());
                f.push(if state % 11 == 0 { b'\n' } else { b' ' });
            }
            f.truncate(FRAME);
            f
        })
        .collect()
}

fn replicas_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("replicas_cpu");
    g.throughput(Throughput::Bytes((FRAMES * FRAME) as u64));
    let frames = text_frames();
    let compressed: usize = frames.iter().map(|f| zstd::bulk::compress(f, 3).unwrap().len()).sum();
    assert!(compressed < FRAMES * FRAME / 2, "the text compresses");

    for replicas in [1, 2] {
        let p = Pipeline::builder()
            .stage(StageSpec::process_named("bench.pool.zstd3").replicas(replicas))
            .frame_capacity(zstd::zstd_safe::compress_bound(FRAME))
            .max_in_flight(4 * replicas)
            .build()
            .unwrap();
        g.bench_function(BenchmarkId::new("ringpipe", replicas), |b| {
            b.iter(|| {
                let out: usize = p.map(frames.iter()).map(|o| o.unwrap().len()).sum();
                assert_eq!(out, compressed);
            })
        });
        assert!(p.shutdown().was_graceful());
    }

    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        g.bench_function(BenchmarkId::new("rayon", threads), |b| {
            b.iter(|| {
                let out: usize = pool
                    .install(|| frames.par_iter().map(|f| zstd::bulk::compress(f, 3).unwrap().len()).sum());
                assert_eq!(out, compressed);
            })
        });
    }
    g.finish();
}
