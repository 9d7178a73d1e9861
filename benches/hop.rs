//! Issue 2's benchmarks: one hop through a no-op stage and back, against peers
//! measured in the same run (the ratio is the figure that counts on a noisy VM).
//!
//! - `hop_64B`, `hop_1MiB`: N frames round trip, pipelined, the submitter writing each
//!   payload once: `ringpipe_process`, `ringpipe_thread`, `crossbeam_threads` (two
//!   bounded channels and an echo thread), `ipc_channel` (an echo child process).
//! - `pingpong`: one 64-byte item at a time: `ringpipe_process` vs `unix_socket`
//!   (a socketpair to an echo child process).
//! - `worker_startup`: build and shut down a pipeline of one process stage, `plain`
//!   vs `sandboxed` (`Sandbox::strict()`): the sandbox's start-up cost.
//! - `hop_*/ringpipe_process_sandboxed`: the process hop with the worker sandboxed.
//! - `stages_100`: the `large` example's pipeline (100 process stages, every other
//!   one skipping) vs `stages_1`.
//!
//! Run: `cargo bench --bench hop`. Peers that need a child process re-execute this
//! binary, exactly as ringpipe workers do: `main` calls the hooks first.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use criterion::{BenchmarkId, Criterion, Throughput};
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use ringpipe::{register_stage, stage_fn, Frame, Pipeline, Sandbox, StageSpec};

register_stage!("bench.noop", |_: &[u8]| Ok(stage_fn(|_f: &mut Frame<'_>| Ok(()))));

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Flip {
    is_ok: u32,
    num: u32,
}

register_stage!("bench.flip", |_: &[u8]| {
    Ok(stage_fn(|f: &mut Frame<'_>| {
        f.header_mut::<Flip>()?.num += 1;
        Ok(())
    })
    .with_determiner(|f: &mut Frame<'_>| {
        let Ok(item) = f.header_mut::<Flip>() else { return false };
        item.is_ok ^= 1;
        item.is_ok == 0
    }))
});

const IPC_ECHO: &str = "RINGPIPE_BENCH_IPC_ECHO";
const SOCKET_ECHO: &str = "RINGPIPE_BENCH_SOCKET_ECHO";
const WINDOW: usize = 64;

fn main() {
    ringpipe::worker_hook();
    if let Ok(name) = std::env::var(IPC_ECHO) {
        ipc_echo_child(&name);
        return;
    }
    if std::env::var_os(SOCKET_ECHO).is_some() {
        socket_echo_child();
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    hop(&mut c, "hop_64B", 64, 20_000);
    hop(&mut c, "hop_1MiB", 1 << 20, 64);
    pingpong(&mut c);
    worker_startup(&mut c);
    stages_100(&mut c);
    c.final_summary();
}

/// Building a pipeline of one process stage (start the worker, wait for it to say
/// ready) and shutting it down: plain, and in `Sandbox::strict()` (the worker then
/// also sets its limits, Landlock and the seccomp filter before it says ready).
fn worker_startup(c: &mut Criterion) {
    let mut g = c.benchmark_group("worker_startup");
    for (id, sandbox) in [("plain", None), ("sandboxed", Some(Sandbox::strict()))] {
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let mut stage = StageSpec::process_named("bench.noop");
                if let Some(s) = &sandbox {
                    stage = stage.sandbox(s.clone());
                }
                let p = Pipeline::builder().stage(stage).build().unwrap();
                assert!(p.shutdown().was_graceful());
            })
        });
    }
    g.finish();
}

/// N items of `size` bytes through one no-op hop and back, `WINDOW` in flight.
fn hop(c: &mut Criterion, group: &str, size: usize, n: usize) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(n as u64));
    let source: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let capacity = size.max(64);

    for (id, spec) in [
        ("ringpipe_process", StageSpec::process_named("bench.noop")),
        ("ringpipe_process_sandboxed", StageSpec::process_named("bench.noop").sandbox(Sandbox::strict())),
        ("ringpipe_thread", StageSpec::thread_named("bench.noop")),
    ] {
        let p =
            Pipeline::builder().stage(spec).max_in_flight(WINDOW).frame_capacity(capacity).build().unwrap();
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for out in p.map(std::iter::repeat_n(&source[..], n)) {
                    sum += u64::from(out.unwrap()[size - 1]);
                }
                sum
            })
        });
        assert!(p.shutdown().was_graceful());
    }

    g.bench_function(BenchmarkId::from_parameter("crossbeam_threads"), |b| {
        let (to_echo, echo_in) = crossbeam_channel::bounded::<Box<[u8]>>(WINDOW);
        let (echo_out, back) = crossbeam_channel::bounded::<Box<[u8]>>(WINDOW);
        let echo = std::thread::spawn(move || {
            for m in echo_in {
                if echo_out.send(m).is_err() {
                    break;
                }
            }
        });
        let mut pool: Vec<Box<[u8]>> = (0..WINDOW).map(|_| vec![0u8; size].into_boxed_slice()).collect();
        b.iter(|| {
            let (mut sent, mut sum) = (0, 0u64);
            while sent < n.min(WINDOW) {
                let mut m = pool.pop().unwrap();
                m.copy_from_slice(&source);
                to_echo.send(m).unwrap();
                sent += 1;
            }
            for _ in 0..n {
                let m = back.recv().unwrap();
                sum += u64::from(m[size - 1]);
                if sent < n {
                    let mut m = m;
                    m.copy_from_slice(&source);
                    to_echo.send(m).unwrap();
                    sent += 1;
                } else {
                    pool.push(m);
                }
            }
            sum
        });
        drop(to_echo);
        echo.join().unwrap();
    });

    g.bench_function(BenchmarkId::from_parameter("ipc_channel"), |b| {
        let (tx, mut rx, mut child) = ipc_echo_start();
        b.iter(|| {
            let rx = &mut rx; // the receiver is Send but not Sync: lend it to the thread
            std::thread::scope(|s| {
                let receiver = s.spawn(move || {
                    let mut sum = 0u64;
                    for _ in 0..n {
                        let m = rx.recv().unwrap();
                        sum += u64::from(m[size - 1]);
                    }
                    sum
                });
                let mut buf = vec![0u8; size];
                for _ in 0..n {
                    buf.copy_from_slice(&source);
                    tx.send(&buf).unwrap();
                }
                receiver.join().unwrap()
            })
        });
        drop(tx);
        let _ = child.wait();
    });
    g.finish();
}

fn pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("pingpong");
    g.throughput(Throughput::Elements(1));
    let item = [7u8; 64];
    let p =
        Pipeline::builder().stage(StageSpec::process_named("bench.noop")).max_in_flight(4).build().unwrap();
    g.bench_function(BenchmarkId::from_parameter("ringpipe_process"), |b| {
        b.iter(|| p.submit(&item).unwrap().wait().unwrap()[63])
    });
    assert!(p.shutdown().was_graceful());

    g.bench_function(BenchmarkId::from_parameter("unix_socket"), |b| {
        let (mut mine, theirs) = UnixStream::pair().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SOCKET_ECHO, "1")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()
            .unwrap();
        let mut back = [0u8; 64];
        b.iter(|| {
            mine.write_all(&item).unwrap();
            mine.read_exact(&mut back).unwrap();
            back[63]
        });
        drop(mine);
        let _ = child.wait();
    });
    g.finish();
}

fn stages_100(c: &mut Criterion) {
    let mut g = c.benchmark_group("stages_100");
    let n = 2_000;
    g.throughput(Throughput::Elements(n as u64));
    let item = Flip { is_ok: 1, num: 0 };
    for (id, stages) in [("stages_100", 100usize), ("stages_1", 1)] {
        let p = Pipeline::builder()
            .stages((0..stages).map(|_| StageSpec::process_named("bench.flip")))
            .max_in_flight(15)
            .build()
            .unwrap();
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let mut total = 0u64;
                for out in p.map(std::iter::repeat_n(bytemuck::bytes_of(&item), n)) {
                    total += u64::from(out.unwrap().header::<Flip>().unwrap().num);
                }
                assert_eq!(total, (n * stages.div_ceil(2)) as u64);
                total
            })
        });
        assert!(p.shutdown().was_graceful());
    }
    g.finish();
}

fn ipc_echo_start() -> (IpcBytesSender, IpcBytesReceiver, std::process::Child) {
    let (server, name) = IpcOneShotServer::<(IpcBytesSender, IpcBytesReceiver)>::new().unwrap();
    let child = Command::new(std::env::current_exe().unwrap()).env(IPC_ECHO, name).spawn().unwrap();
    let (_, (tx, rx)) = server.accept().unwrap();
    (tx, rx, child)
}

fn ipc_echo_child(name: &str) {
    let (to_child, from_parent) = ipc::bytes_channel().unwrap();
    let (to_parent, from_child) = ipc::bytes_channel().unwrap();
    IpcSender::connect(name.to_owned()).unwrap().send((to_child, from_child)).unwrap();
    while let Ok(m) = from_parent.recv() {
        if to_parent.send(&m).is_err() {
            break;
        }
    }
}

fn socket_echo_child() {
    let mut stdin = std::io::stdin().lock();
    let mut stdout_sock =
        std::fs::File::from(std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned().unwrap());
    let mut buf = [0u8; 64];
    while stdin.read_exact(&mut buf).is_ok() {
        if stdout_sock.write_all(&buf).is_err() {
            break;
        }
    }
}
