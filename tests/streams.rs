//! Producer/consumer pairs streaming through a byte ring in the shared segment
//! (issue 3): every placement, byte-exact long streams, explicit end of stream, and
//! what each half sees when the other fails or dies.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{
    consumer_fn, producer_fn, register_stage, stage_fn, BoxError, BuildError, Frame, ItemError, Pipeline,
    Stage, StageOutcome, StageSpec,
};

mod common;

use common::kill9;

ringpipe::worker_test_entry!();

const NEVER: u64 = u64::MAX;

/// One streaming job: what the producer streams and how, what each half saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Job {
    /// Bytes to stream.
    total: u64,
    /// Bytes per write (or per chunk request).
    write: u32,
    /// 0: `io::Write`/`io::Read`; 1: the chunk API.
    chunks: u32,
    /// The producer returns an error after this many bytes.
    fail_after: u64,
    /// The consumer stops after this many bytes: with an error, or with `Ok` if
    /// `stop_ok` is set.
    stop_after: u64,
    stop_ok: u32,
    /// Microseconds the producer sleeps after each write (kill tests).
    pace_us: u32,
    /// Producer: bytes written and their hash (reach the item by `merge_producer`).
    sent: u64,
    sent_hash: [u8; 32],
    /// Consumer: bytes read, their hash, whether it saw end-of-file, the error kind it
    /// got (`io::ErrorKind` as text, first 24 bytes).
    got: u64,
    got_hash: [u8; 32],
    eof: u32,
    merged: u32,
    got_error: [u8; 24],
}

impl Job {
    fn new(total: u64, write: u32, chunks: bool) -> Self {
        Self {
            total,
            write,
            chunks: chunks.into(),
            fail_after: NEVER,
            stop_after: NEVER,
            ..Zeroable::zeroed()
        }
    }
    fn got_error(&self) -> String {
        String::from_utf8_lossy(&self.got_error).trim_end_matches('\0').to_owned()
    }
}

/// The stream's contents: position `i` holds `pattern()[i % len]`. The odd length
/// makes every write and every ring wrap start at a different phase.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..(1 << 20) + 13)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

fn produce(job: &mut Job, out: &mut StreamWriter) -> Result<(), BoxError> {
    let p = pattern();
    let mut hash = blake3::Hasher::new();
    let mut sent = 0u64;
    while sent < job.total {
        if sent >= job.fail_after {
            return Err(format!("producer gave up after {sent} bytes").into());
        }
        let at = (sent % p.len() as u64) as usize;
        let want = (job.write as u64).min(job.total - sent).min((p.len() - at) as u64) as usize;
        let n = if job.chunks == 1 {
            let mut chunk = out.write_chunk(want)?;
            let n = chunk.len();
            chunk.copy_from_slice(&p[at..at + n]);
            chunk.commit(n);
            n
        } else {
            out.write_all(&p[at..at + want])?;
            want
        };
        hash.update(&p[at..at + n]);
        sent += n as u64;
        if job.pace_us > 0 {
            if sent == n as u64 {
                common::mark(&format!("s.produce-{}", job.stop_ok));
            }
            std::thread::sleep(Duration::from_micros(job.pace_us.into()));
        }
    }
    job.sent = sent;
    job.sent_hash = *hash.finalize().as_bytes();
    Ok(())
}

fn consume(job: &mut Job, input: &mut StreamReader) -> Result<(), BoxError> {
    let mut hash = blake3::Hasher::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; job.write.max(1) as usize];
    let result = loop {
        if got >= job.stop_after {
            break if job.stop_ok == 1 { Ok(()) } else { Err(format!("consumer gave up after {got} bytes")) };
        }
        let n = if job.chunks == 1 {
            match input.read_chunk() {
                Ok(chunk) => {
                    hash.update(chunk);
                    chunk.len()
                }
                Err(e) => break Err(std::io::Error::from(e).kind().to_string()),
            }
        } else {
            match input.read(&mut buf) {
                Ok(n) => {
                    hash.update(&buf[..n]);
                    n
                }
                Err(e) => break Err(e.kind().to_string()),
            }
        };
        if job.chunks == 1 {
            input.consume(n);
        }
        if job.pace_us > 0 && got == 0 && n > 0 {
            common::mark(&format!("s.consume-{}", job.stop_ok));
        }
        if n == 0 {
            job.eof = 1;
            break Ok(());
        }
        got += n as u64;
    };
    job.got = got;
    job.got_hash = *hash.finalize().as_bytes();
    if let Err(e) = &result {
        let n = e.len().min(job.got_error.len());
        job.got_error[..n].copy_from_slice(&e.as_bytes()[..n]);
    }
    result.map_err(Into::into)
}

struct JobProducer;
impl Stage for JobProducer {
    fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> {
        Err("s.produce only works as a producer half".into())
    }
    fn produce(&mut self, frame: &mut Frame<'_>, out: &mut StreamWriter) -> Result<(), BoxError> {
        produce(frame.header_mut::<Job>()?, out)
    }
}

struct JobConsumer;
impl Stage for JobConsumer {
    fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> {
        Err("s.consume only works as a consumer half".into())
    }
    fn consume(&mut self, frame: &mut Frame<'_>, input: &mut StreamReader) -> Result<(), BoxError> {
        consume(frame.header_mut::<Job>()?, input)
    }
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        let theirs: &Job = bytemuck::try_from_bytes(&producer[..std::mem::size_of::<Job>()])
            .map_err(|e| format!("producer frame: {e}"))?;
        let job = frame.header_mut::<Job>()?;
        job.sent = theirs.sent;
        job.sent_hash = theirs.sent_hash;
        job.merged = 1;
        Ok(())
    }
}

register_stage!("s.produce", |_: &[u8]| Ok(JobProducer));
register_stage!("s.consume", |_: &[u8]| Ok(JobConsumer));

// Tags the item so a test can tell a stage ran: appends the parameter byte.
register_stage!("s.mark", |p: &[u8]| {
    let mark = *p.first().ok_or("s.mark needs one byte")?;
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        let n = f.len();
        f.set_len(n + 1)?;
        f.bytes_mut()[n] = mark;
        Ok(())
    }))
});

fn spec(name: &str, process: bool) -> StageSpec {
    if process {
        StageSpec::process_named(name)
    } else {
        StageSpec::thread_named(name)
    }
}

fn pair(producer_process: bool, consumer_process: bool, ring: usize) -> Pipeline {
    Pipeline::builder()
        .stage(spec("s.produce", producer_process).stream_capacity(ring))
        .stage(spec("s.consume", consumer_process))
        .max_in_flight(8)
        .build()
        .unwrap()
}

fn run(p: &Pipeline, job: Job) -> (Job, Option<ringpipe::StageFailure>) {
    let out = p.submit(bytemuck::bytes_of(&job)).unwrap().wait().or_else(ItemError::into_output).unwrap();
    (*out.header::<Job>().unwrap(), out.failure())
}

fn expect_exact(job: &Job, total: u64) {
    let mut h = blake3::Hasher::new();
    let p = pattern();
    let mut left = total;
    while left > 0 {
        let n = left.min(p.len() as u64) as usize;
        h.update(&p[..n]);
        left -= n as u64;
    }
    let want = *h.finalize().as_bytes();
    assert_eq!((job.sent, job.got, job.eof, job.merged), (total, total, 1, 1), "{job:?}");
    assert_eq!(job.sent_hash, want, "producer hashed something else");
    assert_eq!(job.got_hash, want, "consumer read something else than was written");
}

/// Points 1, 2, 3, 6: all four placements, both interfaces, results from both halves,
/// streams much longer than the ring, and the ring reused item after item.
#[test]
fn every_placement_streams_byte_exact_with_both_interfaces() {
    for (pp, cp) in [(true, true), (false, true), (true, false), (false, false)] {
        let p = pair(pp, cp, 4096);
        for (i, chunks) in [false, true, false, true].into_iter().enumerate() {
            let total = 100_000 + i as u64 * 7_919;
            let (job, failure) = run(&p, Job::new(total, 1000 + i as u32, chunks));
            assert!(failure.is_none(), "{pp}/{cp}: {failure:?}");
            expect_exact(&job, total);
        }
        assert!(p.shutdown().was_graceful());
    }
}

/// Many items in flight queue behind the pair; the ring is reused, results stay exact.
#[test]
fn many_items_reuse_one_ring() {
    let p = pair(true, true, 1024);
    let jobs: Vec<Job> = (0..64).map(|i| Job::new(5_000 + i * 37, 300, i % 2 == 1)).collect();
    for (i, out) in p.map(jobs.iter().map(bytemuck::bytes_of)).enumerate() {
        let out = out.unwrap();
        expect_exact(out.header::<Job>().unwrap(), 5_000 + i as u64 * 37);
    }
    assert!(p.shutdown().was_graceful());
}

/// Point 5 and "done when": a multi-GiB stream through a 64 KiB ring, byte-exact
/// (hashes compared), between two processes, through each interface.
#[test]
fn multi_gib_stream_through_a_small_ring_is_byte_exact() {
    let p = pair(true, true, 64 << 10);
    let gib = 1u64 << 30;
    let (job, failure) = run(&p, Job::new(2 * gib, 65_521, false));
    assert!(failure.is_none(), "{failure:?}");
    expect_exact(&job, 2 * gib);
    let (job, failure) = run(&p, Job::new(gib + 12_345, 65_521, true));
    assert!(failure.is_none(), "{failure:?}");
    expect_exact(&job, gib + 12_345);
    assert!(p.shutdown().was_graceful());
}

/// Point 4: a producer that fails mid-stream never looks like a complete stream: the
/// consumer's read is an error, and the item fails with the producer's message.
#[test]
fn producer_failure_is_an_error_for_the_consumer_not_eof() {
    for (pp, cp) in [(true, true), (false, false)] {
        let p = pair(pp, cp, 4096);
        let mut job = Job::new(1 << 20, 1000, false);
        job.fail_after = 50_000;
        let (out, failure) = run(&p, job);
        let failure = failure.expect("the item fails");
        assert_eq!(failure.stage, 0, "{failure}");
        assert!(failure.message.contains("producer gave up"), "{failure}");
        assert_eq!(out.eof, 0, "the consumer must not see end-of-file");
        assert_eq!(out.got_error(), ErrorKind::ConnectionAborted.to_string());
        assert!(out.got >= 50_000 && out.got < 1 << 20);
        // The pair goes on with the next item.
        let (job, failure) = run(&p, Job::new(10_000, 999, true));
        assert!(failure.is_none());
        expect_exact(&job, 10_000);
        assert!(p.shutdown().was_graceful());
    }
}

/// Point 4: a panicking producer is a failure too, both in a process and a thread.
#[test]
fn producer_panic_fails_the_stream() {
    for process in [true, false] {
        let p = Pipeline::builder()
            .stage(if process {
                StageSpec::process_named("s.panicky").pipe_with_next()
            } else {
                StageSpec::with_stage(
                    "s.panicky",
                    producer_fn(|_f: &mut Frame<'_>, out: &mut StreamWriter| {
                        out.write_all(b"some bytes")?;
                        panic!("producer exploded")
                    }),
                )
                .pipe_with_next()
            })
            .stage(StageSpec::process_named("s.consume"))
            .build()
            .unwrap();
        let (out, failure) = run(&p, Job::new(0, 10, false));
        let failure = failure.unwrap();
        assert_eq!(failure.stage, 0);
        assert!(failure.message.contains("producer exploded"), "{failure}");
        assert_eq!((out.eof, out.got), (0, 10));
        assert_eq!(out.got_error(), ErrorKind::ConnectionAborted.to_string());
        assert!(p.shutdown().was_graceful());
    }
}

register_stage!("s.panicky", |_: &[u8]| Ok(producer_fn(|_f: &mut Frame<'_>, out: &mut StreamWriter| {
    out.write_all(b"some bytes")?;
    panic!("producer exploded")
})));

/// Point 4: a consumer that fails stops the producer's writes with an error at once
/// (the ring is full, so without it the producer would wait forever); the item
/// fails with the consumer's message, not the producer's consequence of it.
#[test]
fn consumer_failure_stops_the_producer() {
    let seen: Arc<Mutex<Option<(u64, std::io::ErrorKind)>>> = Arc::default();
    let s = seen.clone();
    let p = Pipeline::builder()
        .stage(
            StageSpec::with_stage(
                "writer",
                producer_fn(move |_f: &mut Frame<'_>, out: &mut StreamWriter| {
                    let mut sent = 0u64;
                    loop {
                        if let Err(e) = out.write_all(&[7u8; 4096]) {
                            *s.lock().unwrap() = Some((sent, e.kind()));
                            return Err(e.into());
                        }
                        sent += 4096;
                    }
                }),
            )
            .stream_capacity(8192),
        )
        .stage(StageSpec::process_named("s.consume"))
        .build()
        .unwrap();
    let mut job = Job::new(0, 1000, false);
    job.stop_after = 20_000;
    let (_, failure) = run(&p, job);
    let failure = failure.unwrap();
    assert_eq!(failure.stage, 1, "{failure}");
    assert!(failure.message.contains("consumer gave up"), "{failure}");
    let (sent, kind) = seen.lock().unwrap().expect("the producer saw an error");
    assert_eq!(kind, ErrorKind::BrokenPipe);
    assert!((20_000..20_000 + 8192 + 4096).contains(&sent), "{sent}");
    assert!(p.shutdown().was_graceful());
}

/// A consumer that returns `Ok` before end-of-file leaves bytes unread: the producer's
/// write fails, and so does the item (with the producer's error), so nothing claims
/// a complete transfer.
#[test]
fn consumer_stopping_early_fails_the_item() {
    let p = pair(true, true, 4096);
    let mut job = Job::new(1 << 20, 1000, false);
    job.stop_after = 10_000;
    job.stop_ok = 1;
    let (_, failure) = run(&p, job);
    let failure = failure.unwrap();
    assert_eq!(failure.stage, 0, "{failure}");
    assert!(failure.message.contains("consumer stopped reading"), "{failure}");
    assert!(p.shutdown().was_graceful());
}

/// Bad input: an empty stream is a clean end at once; a zero-length write and a
/// chunk larger than the ring are handled; writing after finishing and reading after
/// closing are typed errors. Nothing panics or hangs.
#[test]
fn empty_streams_and_misuse_are_handled() {
    let produced: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumed: Arc<Mutex<Vec<String>>> = Arc::default();
    let (o, q) = (produced.clone(), consumed.clone());
    let p = Pipeline::builder()
        .stage(
            StageSpec::with_stage(
                "misuser",
                producer_fn(move |f: &mut Frame<'_>, out: &mut StreamWriter| {
                    let mut log = o.lock().unwrap();
                    log.push(format!("zero write: {:?}", out.write(&[]).map_err(|e| e.kind())));
                    let big = out.write_chunk(1 << 20)?.len();
                    log.push(format!("chunk of 1 MiB asked, {big} lent"));
                    if f.bytes() == b"empty" {
                        return Ok(());
                    }
                    out.write_all(b"abc")?;
                    out.finish()?;
                    log.push(format!("write after finish: {:?}", out.write(b"x").map_err(|e| e.kind())));
                    Ok(())
                }),
            )
            .stream_capacity(100),
        )
        .stage(StageSpec::with_stage(
            "reader",
            consumer_fn(move |f: &mut Frame<'_>, input: &mut StreamReader| {
                let mut all = Vec::new();
                input.read_to_end(&mut all)?;
                input.close();
                let again = input.read(&mut [0u8; 4]).map_err(|e| e.kind());
                q.lock().unwrap().push(format!("read {all:?}, after close: {again:?}"));
                f.set_len(all.len())?;
                f.bytes_mut().copy_from_slice(&all);
                Ok(())
            }),
        ))
        .build()
        .unwrap();
    let out = p.submit(b"empty").unwrap().wait().unwrap();
    assert_eq!(&out[..], b"");
    drop(out);
    let out = p.submit(b"full!").unwrap().wait().unwrap();
    assert_eq!(&out[..], b"abc");
    drop(out);
    let broken = format!("Err({:?})", ErrorKind::BrokenPipe);
    assert_eq!(
        *produced.lock().unwrap(),
        [
            "zero write: Ok(0)".to_owned(),
            "chunk of 1 MiB asked, 100 lent".into(),
            "zero write: Ok(0)".into(),
            "chunk of 1 MiB asked, 100 lent".into(),
            format!("write after finish: {broken}"),
        ]
    );
    assert_eq!(
        *consumed.lock().unwrap(),
        [format!("read [], after close: {broken}"), format!("read [97, 98, 99], after close: {broken}")]
    );
    assert!(p.shutdown().was_graceful());
}

/// The producer's determiner decides for the pair: a declined item skips both halves,
/// and an item an earlier stage failed passes through the pair untouched.
#[test]
fn declined_and_failed_items_pass_the_pair_untouched() {
    let events: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let ev = events.clone();
    let ev2 = events.clone();
    let p = Pipeline::builder()
        .stage(StageSpec::with_stage(
            "gate",
            stage_fn(
                |f: &mut Frame<'_>| if f.bytes() == b"fail" { Err("gate refused".into()) } else { Ok(()) },
            ),
        ))
        .stage(
            StageSpec::with_stage(
                "producer",
                producer_fn(|f: &mut Frame<'_>, out: &mut StreamWriter| Ok(out.write_all(f.bytes())?))
                    .with_determiner(|f: &mut Frame<'_>| f.bytes() != b"skip"),
            )
            .pipe_with_next()
            .on_complete(move |e| ev.lock().unwrap().push((e.stage, format!("{:?}", e.outcome)))),
        )
        .stage(
            StageSpec::process_named("s.mark")
                .params(vec![b'!'])
                .on_complete(move |e| ev2.lock().unwrap().push((e.stage, format!("{:?}", e.outcome)))),
        )
        .build();
    // s.mark as a consumer does not implement `consume`: its default says so.
    let p = p.unwrap();
    let out = p.submit(b"skip").unwrap().wait().unwrap();
    assert_eq!(&out[..], b"skip", "neither half touched it");
    assert!(!out.stage_ran(1) && !out.stage_ran(2));
    drop(out);
    let out = p.submit(b"fail").unwrap().wait().or_else(ItemError::into_output).unwrap();
    assert_eq!(out.failure().unwrap().stage, 0);
    assert_eq!(&out[..], b"fail");
    drop(out);
    let out = p.submit(b"go").unwrap().wait().or_else(ItemError::into_output).unwrap();
    let failure = out.failure().unwrap();
    assert_eq!(failure.stage, 2);
    assert!(failure.message.contains("does not implement Stage::consume"), "{failure}");
    drop(out);
    let events = events.lock().unwrap().clone();
    assert_eq!(events[0], (1, "Skipped".into()));
    assert_eq!(events[1], (2, "Skipped".into()));
    assert_eq!(events[2], (1, "NotReached".into()));
    assert_eq!(events[3], (2, "NotReached".into()));
    assert_eq!(events[4], (1, "Ran".into()));
    assert!(events[5].1.starts_with("Failed"), "{events:?}");
    assert!(p.shutdown().was_graceful());
}

/// Misdeclared pairs are refused at build with a typed error.
#[test]
fn bad_pair_declarations_are_typed_errors() {
    let last = Pipeline::builder().stage(StageSpec::thread_named("s.produce").pipe_with_next()).build();
    assert!(matches!(last, Err(BuildError::BadPair { stage: 0, .. })), "{last:?}");
    let chained = Pipeline::builder()
        .stage(StageSpec::thread_named("s.produce").pipe_with_next())
        .stage(StageSpec::thread_named("s.consume").pipe_with_next())
        .stage(StageSpec::thread_named("s.consume"))
        .build();
    assert!(matches!(chained, Err(BuildError::BadPair { stage: 1, .. })), "{chained:?}");
    for capacity in [0, (1 << 30) + 1, usize::MAX] {
        let r = Pipeline::builder()
            .stage(StageSpec::thread_named("s.produce").stream_capacity(capacity))
            .stage(StageSpec::thread_named("s.consume"))
            .build();
        assert!(matches!(r, Err(BuildError::BadPair { stage: 0, .. })), "{capacity}: {r:?}");
    }
    // A one-byte ring is legal, if slow.
    let p = pair(false, false, 1);
    let (job, failure) = run(&p, Job::new(3_000, 7, true));
    assert!(failure.is_none());
    expect_exact(&job, 3_000);
    assert!(p.shutdown().was_graceful());
}

fn worker_of(p: &Pipeline, stage: usize) -> u32 {
    p.worker_pids().into_iter().find(|&(s, _)| s == stage).unwrap().1
}

/// Waits up to 5 s for `seen` to be set; panics otherwise (a hang is the bug).
fn await_seen<T: Clone>(seen: &Mutex<Option<T>>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = seen.lock().unwrap().clone() {
            return v;
        }
        assert!(Instant::now() < deadline, "the surviving half never saw an error");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The failure of an item whose pair half `stage` (worker `pid`) was SIGKILLed.
fn expect_killed(failure: Option<ringpipe::StageFailure>, stage: usize, pid: u32) {
    let f = failure.expect("the item in the pair fails");
    assert_eq!((f.stage, f.worker_died), (stage, Some(pid)), "{f}");
    assert!(f.message.contains("SIGKILL") || f.message.contains("signal: 9"), "{}", f.message);
}

/// Faults: the producer's process is SIGKILLed mid-stream; the consumer (a thread)
/// reads an error (not end-of-file) within a second, the item fails naming the dead
/// producer, and its replacement streams the next item.
#[test]
fn killing_the_producer_mid_stream_fails_the_item_and_the_pair_goes_on() {
    let progress = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Option<(Instant, ErrorKind)>>> = Arc::default();
    let (pr, s) = (progress.clone(), seen.clone());
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("s.produce").stream_capacity(4096))
        .stage(StageSpec::with_stage(
            "watcher",
            consumer_fn(move |_f: &mut Frame<'_>, input: &mut StreamReader| {
                let mut buf = [0u8; 1024];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => pr.fetch_add(n as u64, Ordering::Relaxed),
                        Err(e) => {
                            *s.lock().unwrap() = Some((Instant::now(), e.kind()));
                            return Err(e.into());
                        }
                    };
                }
            }),
        ))
        .build()
        .unwrap();
    let mut job = Job::new(NEVER, 1000, false);
    job.pace_us = 200;
    let ticket = p.submit(bytemuck::bytes_of(&job)).unwrap();
    while progress.load(Ordering::Relaxed) < 20_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = worker_of(&p, 0);
    let killed = Instant::now();
    kill9(pid);
    let (when, kind) = await_seen(&seen);
    assert_eq!(kind, ErrorKind::ConnectionAborted, "a cut stream is an error, not end-of-file");
    // Within milliseconds on an idle machine; the bound tells a prompt error from a hang.
    assert!(when - killed < Duration::from_secs(10), "took {:?}", when - killed);
    expect_killed(ticket.wait().or_else(ItemError::into_output).unwrap().failure(), 0, pid);
    common::await_restarts(&p, 1);
    let before = progress.load(Ordering::Relaxed);
    let (_, failure) = run(&p, Job::new(100_000, 1000, false));
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(progress.load(Ordering::Relaxed) - before, 100_000, "the replacement producer streamed it");
    // Not graceful: the killed worker's exit status is in the report.
    assert!(p.shutdown().failure.is_none());
}

/// Faults: the consumer's process is SIGKILLed while the producer (a thread) is
/// blocked on a full ring; the producer's write fails within a second, the item fails
/// naming the dead consumer, and its replacement reads the next item's stream.
#[test]
fn killing_the_consumer_mid_stream_fails_the_item_and_the_pair_goes_on() {
    let progress = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Option<(Instant, ErrorKind)>>> = Arc::default();
    let (pr, s) = (progress.clone(), seen.clone());
    let p = Pipeline::builder()
        .stage(
            StageSpec::with_stage(
                "flood",
                producer_fn(move |f: &mut Frame<'_>, out: &mut StreamWriter| {
                    let total = f.header::<Job>()?.total;
                    let mut sent = 0;
                    while sent < total {
                        match out.write(&pattern()[..1000.min((total - sent) as usize)]) {
                            Ok(n) => {
                                sent += n as u64;
                                pr.fetch_add(n as u64, Ordering::Relaxed)
                            }
                            Err(e) => {
                                *s.lock().unwrap() = Some((Instant::now(), e.kind()));
                                return Err(e.into());
                            }
                        };
                    }
                    Ok(())
                }),
            )
            .stream_capacity(4096),
        )
        .stage(StageSpec::process_named("s.consume"))
        .build()
        .unwrap();
    // The consumer reads slowly: a byte at a time.
    let ticket = p.submit(bytemuck::bytes_of(&Job::new(NEVER, 1, false))).unwrap();
    while progress.load(Ordering::Relaxed) < 20_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = worker_of(&p, 1);
    let killed = Instant::now();
    kill9(pid);
    let (when, kind) = await_seen(&seen);
    assert_eq!(kind, ErrorKind::BrokenPipe);
    // Within milliseconds on an idle machine; the bound tells a prompt error from a hang.
    assert!(when - killed < Duration::from_secs(10), "took {:?}", when - killed);
    expect_killed(ticket.wait().or_else(ItemError::into_output).unwrap().failure(), 1, pid);
    common::await_restarts(&p, 1);
    let (job, failure) = run(&p, Job::new(100_000, 1000, false));
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!((job.got, job.eof), (100_000, 1), "the replacement consumer read it all");
    assert!(p.shutdown().failure.is_none());
}

/// Faults: both halves in processes; killing either one mid-stream fails that item
/// within a second, the dead half is restarted, and the next item streams byte-exact.
#[test]
fn killing_either_process_of_a_process_pair_fails_one_item_and_recovers() {
    for victim in [0, 1] {
        let marks = common::Marks::new();
        let p = pair(true, true, 4096);
        let mut job = Job::new(NEVER, 1000, false);
        job.pace_us = 100;
        job.stop_ok = 1_000 + victim as u32; // a tag for the marks (unused while `stop_after` is NEVER)
        let mut ticket = p.submit(bytemuck::bytes_of(&job)).unwrap();
        // Both halves are streaming.
        marks.wait(&format!("s.produce-{}", job.stop_ok));
        marks.wait(&format!("s.consume-{}", job.stop_ok));
        assert!(!ticket.is_finished());
        let pid = worker_of(&p, victim);
        assert!(kill9(pid));
        let out =
            ticket.wait_timeout(common::HANG).or_else(ItemError::into_output).expect("the item resolves");
        expect_killed(out.failure(), victim, pid);
        drop(out);
        common::await_restarts(&p, 1);
        let (job, failure) = run(&p, Job::new(300_000, 1000, false));
        assert!(failure.is_none(), "{failure:?}");
        expect_exact(&job, 300_000);
        assert_eq!(p.free_frames(), 8, "no frame leaked");
        assert!(p.shutdown().failure.is_none());
    }
}

/// Faults: a process pair streams thousands of items while either half is killed at
/// random every 20 ms: every item comes out once, in order, byte-exact unless a death
/// failed it, and no frame leaks.
#[test]
fn random_kills_of_a_streaming_pair_lose_and_duplicate_nothing() {
    let p = Arc::new(pair(true, true, 4096));
    let killer = common::Killer::every(&p, Duration::from_millis(20));
    let n = 3_000u64;
    let jobs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut job = Job::new(60_000 + i, 777, i % 2 == 0);
            job.stop_ok = i as u32; // unused while `stop_after` is NEVER: the item's index
            bytemuck::bytes_of(&job).to_vec()
        })
        .collect();
    let mut died = 0;
    for (i, out) in p.map(jobs).enumerate() {
        let out = out.or_else(ItemError::into_output).expect("the pipeline goes on");
        let job = *out.header::<Job>().unwrap();
        assert_eq!(job.stop_ok, i as u32, "in order, none lost, none twice");
        match out.failure() {
            Some(f) => {
                assert!(f.worker_died.is_some(), "only deaths fail items: {f}");
                died += 1;
            }
            None => expect_exact(&job, 60_000 + i as u64),
        }
    }
    let kills = killer.stop();
    eprintln!("{n} items, {kills} kills, {died} failed by a death");
    common::check_after_kills(p, kills, died, 8);
}

/// The shape of `atbu.mp_pipeline`'s dual-stage example, with outcome events: both halves run and the callback sees them.
#[test]
fn both_halves_report_ran() {
    let events: Arc<Mutex<Vec<(usize, StageOutcome<'static>)>>> = Arc::default();
    let (a, b) = (events.clone(), events.clone());
    let keep = |e: &ringpipe::StageEvent<'_>| match e.outcome {
        StageOutcome::Ran => StageOutcome::Ran,
        StageOutcome::Skipped => StageOutcome::Skipped,
        StageOutcome::NotReached => StageOutcome::NotReached,
        StageOutcome::Failed(_) => StageOutcome::Failed("failed"),
    };
    let p = Pipeline::builder()
        .stage(
            StageSpec::process_named("s.produce")
                .pipe_with_next()
                .on_complete(move |e| a.lock().unwrap().push((e.stage, keep(e)))),
        )
        .stage(
            StageSpec::thread_named("s.consume")
                .on_complete(move |e| b.lock().unwrap().push((e.stage, keep(e)))),
        )
        .build()
        .unwrap();
    let (job, failure) = run(&p, Job::new(10, 10, false));
    assert!(failure.is_none());
    expect_exact(&job, 10);
    assert_eq!(*events.lock().unwrap(), vec![(0, StageOutcome::Ran), (1, StageOutcome::Ran)]);
    assert!(p.shutdown().was_graceful());
}
