//! Killing either half of a producer/consumer pair mid-stream: the other half gets an
//! error (never end-of-file), the item fails naming the dead half, the half is
//! replaced, and nothing is lost or duplicated under random kills.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{consumer_fn, producer_fn, ConsumerSpec, Frame, ItemError, PairSpec, Pipeline, ProducerSpec};

mod common;
mod stream_job;

use common::kill9;
use stream_job::{expect_exact, pair, pattern, run, Job, JobConsumer, JobProducer, NEVER};

ringpipe::worker_test_entry!();

fn worker_of(p: &Pipeline, stage: usize) -> u32 {
    p.worker_pids().into_iter().find(|&(s, _)| s == stage).unwrap().1
}

/// Waits for `seen` to be set; panics after [`common::HANG`] (a hang is the bug).
fn await_seen<T: Clone>(seen: &Mutex<Option<T>>) -> T {
    let deadline = Instant::now() + common::HANG;
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
    let watcher = ConsumerSpec::with_consumer(
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
    );
    let p = Pipeline::builder()
        .pair(PairSpec::new(ProducerSpec::process::<JobProducer>(()), watcher).stream_capacity(4096))
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
    let flood = ProducerSpec::with_producer(
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
    );
    let p = Pipeline::builder()
        .pair(PairSpec::new(flood, ConsumerSpec::process::<JobConsumer>(())).stream_capacity(4096))
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
