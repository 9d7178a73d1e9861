//! Putting items in and taking results out (issue 2's points 9 and 11): tickets
//! polled, awaited and waited; batches; `map` over many more items than fit in flight,
//! and its saturation; the in-flight bound; close and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpipe::{
    register_stage, stage_fn, Frame, ItemError, Pipeline, StageSpec, SubmitError, TrySubmitError,
};

ringpipe::worker_test_entry!();

register_stage!("t.upper", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut().make_ascii_uppercase();
    Ok(())
})));

// Adds the parameter byte to every byte.
register_stage!("t.add", |p: &[u8]| {
    let [k] = *p else { return Err(format!("t.add needs exactly 1 parameter byte, got {}", p.len()).into()) };
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        f.bytes_mut().iter_mut().for_each(|b| *b = b.wrapping_add(k));
        Ok(())
    }))
});

// Sleeps the number of milliseconds in the parameter bytes (u32 LE) per item.
register_stage!("t.sleep", |p: &[u8]| {
    let ms = u32::from_le_bytes(p.try_into().map_err(|_| "t.sleep needs 4 parameter bytes")?);
    Ok(stage_fn(move |_f: &mut Frame<'_>| {
        std::thread::sleep(Duration::from_millis(ms.into()));
        Ok(())
    }))
});

fn one(stage: StageSpec) -> Pipeline {
    Pipeline::builder().stage(stage).build().unwrap()
}

fn graceful(p: Pipeline) {
    let report = p.shutdown();
    assert!(report.was_graceful(), "{report:?}");
}

#[test]
fn ticket_try_wait_and_future() {
    let p = one(StageSpec::process_named("t.upper"));
    let mut t = p.submit(b"abc").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        if let Some(r) = t.try_wait() {
            break r.unwrap();
        }
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    };
    assert_eq!(&out[..], b"ABC");
    assert!(matches!(t.try_wait(), Some(Err(ItemError::AlreadyTaken))));
    drop(out);

    let t = p.submit(b"fut").unwrap();
    let out = block_on(t).unwrap();
    assert_eq!(&out[..], b"FUT");
    drop(out);

    let t = p.submit(b"done").unwrap();
    while !t.is_finished() {
        std::thread::yield_now();
    }
    assert_eq!(&t.wait().unwrap()[..], b"DONE");
    graceful(p);
}

#[test]
fn batch_submit_and_completions_return_every_item_once() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.add").params([1]))
        .max_in_flight(64)
        .build()
        .unwrap();
    let items: Vec<[u8; 4]> = (0u32..50).map(|i| i.to_le_bytes()).collect();
    assert_eq!(p.submit_batch(&items).unwrap(), 50);
    let mut seen: Vec<u32> = p
        .completions()
        .map(|o| {
            let o = o.unwrap();
            let b: [u8; 4] = o[..].try_into().unwrap();
            u32::from_le_bytes(b.map(|x| x.wrapping_sub(1)))
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    graceful(p);
}

#[test]
fn map_streams_many_more_items_than_in_flight_in_order() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.add").params([1]))
        .stage(StageSpec::thread_named("t.add").params([1]))
        .max_in_flight(8)
        .build()
        .unwrap();
    let n = 20_000u32;
    let mut next = 0u32;
    for out in p.map((0..n).map(|i| i.to_le_bytes())) {
        let out = out.unwrap();
        let b: [u8; 4] = out[..].try_into().unwrap();
        assert_eq!(u32::from_le_bytes(b.map(|x| x.wrapping_sub(2))), next);
        next += 1;
    }
    assert_eq!(next, n);
    graceful(p);
}

#[test]
fn map_reports_saturation_instead_of_hanging() {
    let p = Pipeline::builder().stage(StageSpec::thread_named("t.upper")).max_in_flight(2).build().unwrap();
    let mut held = Vec::new();
    let mut saw = None;
    for out in p.map((0..5u8).map(|i| [i])) {
        match out {
            Ok(o) => held.push(o),
            Err(e) => {
                saw = Some(e);
                break;
            }
        }
    }
    assert_eq!(held.len(), 2);
    assert!(matches!(saw, Some(ItemError::Saturated)), "{saw:?}");
    drop(held);
    // Saturation ends the iteration: `collect()` holding every result terminates.
    let all: Vec<_> = p.map((0..5u8).map(|i| [i])).collect();
    assert_eq!(all.len(), 3);
    assert!(matches!(all[2], Err(ItemError::Saturated)));
    drop(all);
    graceful(p);
}

// 9. Bound on items in flight: try_submit gives the item back; submit blocks.
#[test]
fn in_flight_bound_try_submit_gives_back_and_submit_blocks() {
    let p = Arc::new(
        Pipeline::builder().stage(StageSpec::process_named("t.upper")).max_in_flight(2).build().unwrap(),
    );
    let a = p.submit(b"a").unwrap().wait().unwrap();
    let b = p.submit(b"b").unwrap().wait().unwrap();
    match p.try_submit(b"c".to_vec()) {
        Err(TrySubmitError::Full(v)) => assert_eq!(v, b"c"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(p.try_alloc(1).unwrap().is_none());
    let submitted = Arc::new(AtomicUsize::new(0));
    let (p2, s2) = (p.clone(), submitted.clone());
    let blocker = std::thread::spawn(move || {
        let t = p2.submit(b"d").unwrap();
        s2.store(1, Ordering::SeqCst);
        assert_eq!(&t.wait().unwrap()[..], b"D");
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(submitted.load(Ordering::SeqCst), 0, "submit must block while full");
    drop(a);
    blocker.join().unwrap();
    assert_eq!(submitted.load(Ordering::SeqCst), 1);
    drop(b);
    graceful(Arc::try_unwrap(p).unwrap());
}

// 11. Shutdown and close; submit after close is a typed error.
#[test]
fn close_refuses_submissions_and_shutdown_finishes_in_flight_items() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("t.sleep").params(5u32.to_le_bytes()))
        .max_in_flight(16)
        .build()
        .unwrap();
    let tickets: Vec<_> = (0..10u8).map(|i| p.submit(&[i]).unwrap()).collect();
    p.close();
    assert_eq!(p.submit(b"late").unwrap_err(), SubmitError::ShutDown);
    assert!(matches!(p.try_submit(b"late"), Err(TrySubmitError::Failed(SubmitError::ShutDown, _))));
    let report = p.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    assert_eq!(report.workers.len(), 1);
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(&t.wait().unwrap()[..], &[i as u8], "every in-flight item finished");
    }
}

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park(); // no timeout: only a real wake-up gets us further
    }
}
