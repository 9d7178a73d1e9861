//! Producer/consumer pairs streaming through a byte ring in the shared segment
//! (issue 3): every placement, byte-exact long streams, explicit end of stream, what
//! each half sees when the other fails, and the build errors a pair can still get.
//! Killing either half: `stream_faults.rs`.

use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Mutex};

use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{
    consumer_fn, producer_fn, register_stage, stage_fn, BuildError, ConsumerSpec, Frame, ItemError, PairSpec,
    Pipeline, ProducerSpec, StageKind, StageOutcome, StageSpec,
};

mod common;
mod stream_job;

use stream_job::{expect_exact, job_pair, pair, run, Job, JobConsumer, JobProducer};

ringpipe::worker_test_entry!();

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
        let producer = if process {
            ProducerSpec::process_named("s.panicky")
        } else {
            ProducerSpec::with_producer(
                "s.panicky",
                producer_fn(|_f: &mut Frame<'_>, out: &mut StreamWriter| {
                    out.write_all(b"some bytes")?;
                    panic!("producer exploded")
                }),
            )
        };
        let p = Pipeline::builder()
            .pair(PairSpec::new(producer, ConsumerSpec::process::<JobConsumer>(())))
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

register_stage!(producer: "s.panicky", |_: &[u8]| Ok(producer_fn(|_f: &mut Frame<'_>, out: &mut StreamWriter| {
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
    let writer = ProducerSpec::with_producer(
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
    );
    let p = Pipeline::builder()
        .pair(PairSpec::new(writer, ConsumerSpec::process::<JobConsumer>(())).stream_capacity(8192))
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
    let misuser = ProducerSpec::with_producer(
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
    );
    let reader = ConsumerSpec::with_consumer(
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
    );
    let p = Pipeline::builder().pair(PairSpec::new(misuser, reader).stream_capacity(100)).build().unwrap();
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
    let producer = ProducerSpec::with_producer(
        "producer",
        producer_fn(|f: &mut Frame<'_>, out: &mut StreamWriter| Ok(out.write_all(f.bytes())?))
            .with_determiner(|f: &mut Frame<'_>| f.bytes() != b"skip"),
    )
    .on_complete(move |e| ev.lock().unwrap().push((e.stage, format!("{:?}", e.outcome))));
    // Appends `!` to what it read.
    let consumer = ConsumerSpec::process_named("s.bang")
        .on_complete(move |e| ev2.lock().unwrap().push((e.stage, format!("{:?}", e.outcome))));
    let p = Pipeline::builder()
        .stage(StageSpec::with_stage(
            "gate",
            stage_fn(
                |f: &mut Frame<'_>| if f.bytes() == b"fail" { Err("gate refused".into()) } else { Ok(()) },
            ),
        ))
        .pair(PairSpec::new(producer, consumer))
        .build()
        .unwrap();
    let out = p.submit(b"skip").unwrap().wait().unwrap();
    assert_eq!(&out[..], b"skip", "neither half touched it");
    assert!(!out.stage_ran(1) && !out.stage_ran(2));
    drop(out);
    let out = p.submit(b"fail").unwrap().wait().or_else(ItemError::into_output).unwrap();
    assert_eq!(out.failure().unwrap().stage, 0);
    assert_eq!(&out[..], b"fail");
    drop(out);
    let out = p.submit(b"go").unwrap().wait().unwrap();
    assert_eq!(&out[..], b"go!");
    assert!(out.stage_ran(1) && out.stage_ran(2));
    drop(out);
    let events = events.lock().unwrap().clone();
    let want: Vec<(usize, String)> =
        [(1, "Skipped"), (2, "Skipped"), (1, "NotReached"), (2, "NotReached"), (1, "Ran"), (2, "Ran")]
            .into_iter()
            .map(|(s, o)| (s, o.to_owned()))
            .collect();
    assert_eq!(events, want);
    assert!(p.shutdown().was_graceful());
}

register_stage!(consumer: "s.bang", |_: &[u8]| Ok(consumer_fn(|f: &mut Frame<'_>, input: &mut StreamReader| {
    let mut all = Vec::new();
    input.read_to_end(&mut all)?;
    all.push(b'!');
    f.set_len(all.len())?;
    f.bytes_mut().copy_from_slice(&all);
    Ok(())
})));

/// What a pair can still get wrong at build is a typed error: a stream ring out of
/// range, or a registered name placed as something it is not (the positional mistakes
/// of a producer without a consumer cannot be written).
#[test]
fn bad_pairs_are_typed_errors() {
    for capacity in [0, (1 << 30) + 1, usize::MAX] {
        let r = Pipeline::builder().pair(job_pair(false, false, capacity)).build();
        assert!(
            matches!(r, Err(BuildError::BadStreamCapacity { stage: 0, capacity: c }) if c == capacity),
            "{capacity}: {r:?}"
        );
    }
    let wrong =
        |r: Result<Pipeline, BuildError>, stage: usize, registered: StageKind, placed: StageKind| match r {
            Err(BuildError::WrongKind { stage: s, registered: r, placed: p, .. }) => {
                assert_eq!((s, r, p), (stage, registered, placed));
            }
            other => panic!("expected WrongKind, got {other:?}"),
        };
    // A plain stage as a consumer, a consumer as a plain stage, halves swapped.
    let r = Pipeline::builder()
        .pair(PairSpec::new(ProducerSpec::thread::<JobProducer>(()), ConsumerSpec::process_named("s.mark")))
        .build();
    wrong(r, 1, StageKind::Stage, StageKind::Consumer);
    let r = Pipeline::builder().stage(StageSpec::thread_named("s.consume")).build();
    wrong(r, 0, StageKind::Consumer, StageKind::Stage);
    let r = Pipeline::builder()
        .pair(PairSpec::new(
            ProducerSpec::process_named("s.consume"),
            ConsumerSpec::thread_named("s.produce"),
        ))
        .build();
    wrong(r, 0, StageKind::Consumer, StageKind::Producer);
    // A chain's links are plain stages.
    let r = Pipeline::builder().stage(StageSpec::chain([("s.produce", &[][..])])).build();
    assert!(
        matches!(&r, Err(BuildError::StageInit { message, .. }) if message.contains("not a stage")),
        "{r:?}"
    );
    // A one-byte ring is legal, if slow.
    let p = pair(false, false, 1);
    let (job, failure) = run(&p, Job::new(3_000, 7, true));
    assert!(failure.is_none());
    expect_exact(&job, 3_000);
    assert!(p.shutdown().was_graceful());
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
    let producer = ProducerSpec::process::<JobProducer>(())
        .on_complete(move |e| a.lock().unwrap().push((e.stage, keep(e))));
    let consumer = ConsumerSpec::thread::<JobConsumer>(())
        .on_complete(move |e| b.lock().unwrap().push((e.stage, keep(e))));
    let p = Pipeline::builder().pair(PairSpec::new(producer, consumer)).build().unwrap();
    let (job, failure) = run(&p, Job::new(10, 10, false));
    assert!(failure.is_none());
    expect_exact(&job, 10);
    assert_eq!(*events.lock().unwrap(), vec![(0, StageOutcome::Ran), (1, StageOutcome::Ran)]);
    assert!(p.shutdown().was_graceful());
}
