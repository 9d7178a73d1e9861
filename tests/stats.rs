//! Per-stage statistics (issue 6): items and bytes counted exactly, time split into
//! busy, starved and blocked, the slow stage named as the bottleneck, replicas and
//! pair halves counted, and totals kept across a worker's replacement.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use ringpipe::{
    consumer_fn, producer_fn, register_stage, stage_fn, ConsumerSpec, Frame, PairSpec, Pipeline,
    PipelineStats, ProducerSpec, StageSpec,
};

mod common;

ringpipe::worker_test_entry!();

// Appends one byte per item.
register_stage!("st.grow", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let n = f.len();
    f.set_len(n + 1)?;
    f.bytes_mut()[n] = b'+';
    Ok(())
})));

// Sleeps the parameter's milliseconds (u32 LE) per item.
register_stage!("st.sleep", |p: &[u8]| {
    let ms = u32::from_le_bytes(p.try_into().map_err(|_| "st.sleep needs 4 parameter bytes")?);
    Ok(stage_fn(move |_f: &mut Frame<'_>| {
        std::thread::sleep(Duration::from_millis(ms.into()));
        Ok(())
    }))
});

// Streams the item's first byte as a count of KiB, slowly enough that the consumer
// waits for bytes; the consumer reads it all and stores the count read.
register_stage!(producer: "st.produce", |_: &[u8]| Ok(producer_fn(
    |f: &mut Frame<'_>, w: &mut ringpipe::stream::StreamWriter| {
        for _ in 0..f.bytes()[0] {
            w.write_all(&[7u8; 1024])?;
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
)));
register_stage!(consumer: "st.consume", |_: &[u8]| Ok(consumer_fn(
    |f: &mut Frame<'_>, r: &mut ringpipe::stream::StreamReader| {
        let mut all = Vec::new();
        r.read_to_end(&mut all)?;
        f.set_len(8)?;
        f.bytes_mut().copy_from_slice(&(all.len() as u64).to_le_bytes());
        Ok(())
    }
)));

fn sleep_ms(ms: u32) -> StageSpec {
    StageSpec::process_named("st.sleep").params(ms.to_le_bytes())
}

/// Submits `items` items of `len` bytes from one thread (blocking whenever
/// `max_in_flight` are in flight) while another waits for their results.
fn run(p: &Pipeline, items: usize, len: usize) {
    let (tx, rx) = std::sync::mpsc::channel::<ringpipe::Ticket>();
    std::thread::scope(|s| {
        s.spawn(move || {
            for t in rx {
                assert!(t.wait().is_ok());
            }
        });
        for i in 0..items {
            tx.send(p.submit(&vec![i as u8; len]).unwrap()).unwrap();
        }
        drop(tx);
    });
}

#[test]
fn items_and_bytes_are_counted_exactly_and_the_slow_stage_is_the_bottleneck() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("st.grow"))
        .stage(sleep_ms(2))
        .stage(StageSpec::thread_named("st.grow"))
        .max_in_flight(8)
        .build()
        .unwrap();
    run(&p, 200, 100);
    let stats = p.stats();
    for s in &stats.stages {
        assert_eq!(s.items, 200, "{stats}");
    }
    let bytes = |i: usize| (stats.stages[i].bytes_in, stats.stages[i].bytes_out);
    assert_eq!(bytes(0), (200 * 100, 200 * 101));
    assert_eq!(bytes(1), (200 * 101, 200 * 101));
    assert_eq!(bytes(2), (200 * 101, 200 * 102));
    assert_eq!(stats.bottleneck(), Some(1), "{stats}");
    let slow = &stats.stages[1];
    assert!(slow.busy >= Duration::from_millis(400), "200 items x 2 ms: {stats}");
    // No bound on its busy share: on a loaded machine the stage feeding it is
    // descheduled and it starves (seen: 29.5% busy, still the bottleneck).
    for fast in [&stats.stages[0], &stats.stages[2]] {
        assert!(fast.starved > fast.busy, "a fast stage mostly waits for input: {stats}");
        assert_eq!(fast.blocked, Duration::ZERO, "handing an item on never waits");
    }
    assert!(!stats.stages[0].on_thread && stats.stages[2].on_thread);
    assert!(stats.submit_waited > Duration::from_millis(100), "8 in flight, 200 submitted: {stats}");
    let table = stats.to_string();
    assert!(
        table.contains("st.sleep") && table.lines().nth(2).unwrap().ends_with("<- bottleneck"),
        "{table}"
    );
    p.shutdown();
}

#[test]
fn replicas_add_up_into_their_stage() {
    let p = Pipeline::builder().stage(sleep_ms(1).replicas(3)).max_in_flight(16).build().unwrap();
    run(&p, 150, 10);
    let stats = p.stats();
    let s = &stats.stages[0];
    assert_eq!((s.replicas, s.items, s.bytes_in, s.bytes_out), (3, 150, 1500, 1500), "{stats}");
    assert!(s.busy >= Duration::from_millis(150), "{stats}");
    p.shutdown();
}

#[test]
fn a_pair_counts_its_stream_and_its_waits() {
    let p = Pipeline::builder()
        .pair(
            PairSpec::new(
                ProducerSpec::process_named("st.produce"),
                ConsumerSpec::process_named("st.consume"),
            )
            .stream_capacity(4096),
        )
        .build()
        .unwrap();
    let kib = 40u8;
    for _ in 0..5 {
        let out = p.submit(&[kib]).unwrap().wait().unwrap();
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), u64::from(kib) * 1024);
    }
    let stats = p.stats();
    let streamed = 5 * u64::from(kib) * 1024;
    let (producer, consumer) = (&stats.stages[0], &stats.stages[1]);
    assert_eq!((producer.items, consumer.items), (5, 5));
    assert_eq!((producer.bytes_in, producer.bytes_out), (5, 5 + streamed), "{stats}");
    assert_eq!((consumer.bytes_in, consumer.bytes_out), (5 + streamed, 5 * 8), "{stats}");
    // The producer sleeps between writes: the consumer spends most of each item
    // waiting for bytes, and that is starved time, not busy time.
    assert!(consumer.starved > consumer.busy, "{stats}");
    p.shutdown();
}

#[test]
fn a_replacement_continues_its_predecessors_totals() {
    let p = Arc::new(Pipeline::builder().stage(StageSpec::process_named("st.grow")).build().unwrap());
    run(&p, 100, 4);
    let before: PipelineStats = p.stats();
    assert_eq!(before.stages[0].items, 100);
    let (_, pid) = p.worker_pids()[0];
    assert!(common::kill9(pid));
    common::await_restarts(&p, 1);
    run(&p, 50, 4);
    let after = p.stats();
    assert_eq!(after.stages[0].items, 150, "{after}");
    assert_eq!(after.stages[0].bytes_out, 150 * 5);
    assert!(after.stages[0].starved >= before.stages[0].starved);
    assert!(after.elapsed > before.elapsed);
}
