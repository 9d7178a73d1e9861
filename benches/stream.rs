//! Issue 3's benchmark: a producer/consumer pair streaming 1 GiB from one process to
//! another in 64 KiB writes, against the OS mechanisms measured in the same run (the
//! ratio is the figure that counts on a noisy VM).
//!
//! group `stream_64KiB` (throughput in bytes):
//! - `ringpipe`: a pair of two processes (`PairSpec`), `io::Write` in,
//!   `io::Read` out (a copy on each side, like a pipe).
//! - `ringpipe_chunks`: the same through the chunk API: the producer fills ring memory
//!   from its buffer, the consumer uses the bytes where they lie (one copy in all).
//! - `os_pipe`, `os_pipe_1MiB` (enlarged with `F_SETPIPE_SZ`), `unix_socket` (a
//!   socketpair with 4 MiB buffers): this process writes, a child process reads.
//!
//! Every consumer looks at the last byte of every read, so no variant skips the data
//! entirely; the parent checks the byte count each round.
//!
//! Run: `cargo bench --bench stream`. The child readers re-execute this binary, as
//! ringpipe workers do: `main` calls the hooks first.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use criterion::{BenchmarkId, Criterion, Throughput};
use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{
    register_stage, BoxError, Consumer, ConsumerSpec, Frame, PairSpec, Pipeline, Producer, ProducerSpec,
};

const TOTAL: u64 = 1 << 30;
const WRITE: usize = 64 << 10;
const RING: usize = 1 << 20;
const SINK: &str = "RINGPIPE_BENCH_STREAM_SINK";

/// The one work item: how to stream, and what the consumer counted.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Job {
    total: u64,
    chunks: u32,
    reserved: u32,
    received: u64,
    checksum: u64,
}

struct Source;

impl Producer for Source {
    fn produce(&mut self, frame: &mut Frame<'_>, out: &mut StreamWriter) -> Result<(), BoxError> {
        let job: Job = *frame.header()?;
        let source = vec![0xA5u8; WRITE];
        let mut sent = 0u64;
        while sent < job.total {
            let n = WRITE.min((job.total - sent) as usize);
            if job.chunks == 1 {
                let mut chunk = out.write_chunk(n)?;
                let k = chunk.len();
                chunk.copy_from_slice(&source[..k]);
                chunk.commit(k);
                sent += k as u64;
            } else {
                out.write_all(&source[..n])?;
                sent += n as u64;
            }
        }
        Ok(())
    }
}

struct Sink;

impl Consumer for Sink {
    fn consume(&mut self, frame: &mut Frame<'_>, input: &mut StreamReader) -> Result<(), BoxError> {
        let job: &mut Job = frame.header_mut()?;
        let (mut received, mut checksum) = (0u64, 0u64);
        if job.chunks == 1 {
            loop {
                let chunk = input.read_chunk()?;
                let Some(&last) = chunk.last() else { break };
                checksum += u64::from(last);
                let n = chunk.len();
                input.consume(n);
                received += n as u64;
            }
        } else {
            let mut buf = vec![0u8; WRITE];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                checksum += u64::from(buf[n - 1]);
                received += n as u64;
            }
        }
        job.received = received;
        job.checksum = checksum;
        Ok(())
    }
}

register_stage!(producer: "bench.stream.source", |_: &[u8]| Ok(Source));
register_stage!(consumer: "bench.stream.sink", |_: &[u8]| Ok(Sink));

fn main() {
    ringpipe::worker_hook();
    if std::env::var_os(SINK).is_some() {
        sink_child();
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    stream_64kib(&mut c);
    c.final_summary();
}

fn stream_64kib(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream_64KiB");
    g.throughput(Throughput::Bytes(TOTAL));

    let p = Pipeline::builder()
        .pair(
            PairSpec::new(
                ProducerSpec::process_named("bench.stream.source"),
                ConsumerSpec::process_named("bench.stream.sink"),
            )
            .stream_capacity(RING),
        )
        .max_in_flight(2)
        .build()
        .unwrap();
    for (id, chunks) in [("ringpipe", 0), ("ringpipe_chunks", 1)] {
        let job = Job { total: TOTAL, chunks, ..Zeroable::zeroed() };
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let out = p.submit(bytemuck::bytes_of(&job)).unwrap().wait().unwrap();
                let done: &Job = out.header().unwrap();
                assert_eq!(done.received, TOTAL);
                done.checksum
            })
        });
    }
    assert!(p.shutdown().was_graceful());

    for id in ["os_pipe", "os_pipe_1MiB", "unix_socket"] {
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            let (mut to_child, mut ack, mut child) = match id {
                "unix_socket" => socket_peer(),
                _ => pipe_peer(id == "os_pipe_1MiB"),
            };
            let source = vec![0xA5u8; WRITE];
            b.iter(|| {
                let mut sent = 0u64;
                while sent < TOTAL {
                    to_child.write_all(&source).unwrap();
                    sent += WRITE as u64;
                }
                let mut done = [0u8; 8];
                ack.read_exact(&mut done).unwrap();
                u64::from_le_bytes(done)
            });
            drop((to_child, ack)); // EOF for the child (a socket's ack is the same socket)
            let _ = child.wait();
        });
    }
    g.finish();
}

/// A child reading a pipe; acknowledges each GiB on another pipe.
fn pipe_peer(enlarge: bool) -> (std::fs::File, std::fs::File, Child) {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    if enlarge {
        rustix::pipe::fcntl_setpipe_size(&write, 1 << 20).unwrap();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .env(SINK, "1")
        .stdin(Stdio::from(read))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let ack = std::fs::File::from(OwnedFd::from(child.stdout.take().unwrap()));
    (std::fs::File::from(write), ack, child)
}

/// A child reading one end of a socketpair with 4 MiB buffers, acknowledging on it.
fn socket_peer() -> (std::fs::File, std::fs::File, Child) {
    let (mine, theirs) = UnixStream::pair().unwrap();
    for s in [&mine, &theirs] {
        // Above net.core.wmem_max only with CAP_NET_ADMIN; the plain call is capped.
        if rustix::net::sockopt::set_socket_send_buffer_size_force(s, 4 << 20).is_err() {
            rustix::net::sockopt::set_socket_send_buffer_size(s, 4 << 20).unwrap();
        }
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(s, 4 << 20).is_err() {
            rustix::net::sockopt::set_socket_recv_buffer_size(s, 4 << 20).unwrap();
        }
    }
    let theirs = OwnedFd::from(theirs);
    let out = theirs.try_clone().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(SINK, "1")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::from(out))
        .spawn()
        .unwrap();
    let mine = OwnedFd::from(mine);
    let ack = std::fs::File::from(mine.as_fd().try_clone_to_owned().unwrap());
    (std::fs::File::from(mine), ack, child)
}

/// Reads stdin in 64 KiB reads; after each GiB writes the checksum to stdout.
fn sink_child() {
    let mut input = std::io::stdin().lock();
    let mut ack = std::io::stdout().lock();
    let mut buf = vec![0u8; WRITE];
    loop {
        let (mut received, mut checksum) = (0u64, 0u64);
        while received < TOTAL {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    checksum += u64::from(buf[n - 1]);
                    received += n as u64;
                }
            }
        }
        if ack.write_all(&checksum.to_le_bytes()).and_then(|()| ack.flush()).is_err() {
            return;
        }
    }
}
