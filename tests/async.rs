//! Async use under tokio: submissions that await room instead of blocking the
//! runtime's thread, tickets as futures, completions as a `Stream`. The library names
//! no runtime; these tests use tokio's single-threaded one, where a blocked thread
//! would stall everything.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use ringpipe::{register_stage, stage_fn, Frame, Pipeline, StageSpec, SubmitError};

ringpipe::worker_test_entry!();

// Sleeps 2 ms, then upper-cases: slow enough that submitters find the pipeline full.
register_stage!("a.slow", |_: &[u8]| {
    Ok(stage_fn(|f: &mut Frame<'_>| {
        std::thread::sleep(Duration::from_millis(2));
        f.bytes_mut().make_ascii_uppercase();
        Ok(())
    }))
});

fn next<S: Stream + Unpin>(s: &mut S) -> impl std::future::Future<Output = Option<S::Item>> + '_ {
    std::future::poll_fn(move |cx| Pin::new(&mut *s).poll_next(cx))
}

#[tokio::test(flavor = "current_thread")]
async fn submitting_into_a_full_pipeline_yields_to_the_runtime() {
    let p = Arc::new(
        Pipeline::builder().stage(StageSpec::process_named("a.slow")).max_in_flight(2).build().unwrap(),
    );
    // A ticker on the same thread: it only runs while the submitters await.
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let submitters: Vec<_> = (0..8u8)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for j in 0..5u8 {
                    let ticket = p.submit_async(&[b'a' + i, b'a' + j]).await.unwrap();
                    out.push(ticket.await.unwrap().to_vec());
                }
                out
            })
        })
        .collect();
    for (i, s) in submitters.into_iter().enumerate() {
        let out = s.await.unwrap();
        let want: Vec<Vec<u8>> = (0..5u8).map(|j| vec![b'A' + i as u8, b'A' + j]).collect();
        assert_eq!(out, want);
    }
    ticker.abort();
    // 40 items of 2 ms through 2 frames: the submitters waited for room many times,
    // and the ticker ran meanwhile, so the waits did not block the thread.
    assert!(ticks.load(Ordering::Relaxed) > 40, "{} ticks", ticks.load(Ordering::Relaxed));
    assert_eq!(p.free_frames(), 2);
    Arc::into_inner(p).unwrap().shutdown();
}

#[tokio::test(flavor = "current_thread")]
async fn completions_are_a_stream() {
    let p = Pipeline::builder().stage(StageSpec::process_named("a.slow")).max_in_flight(16).build().unwrap();
    for i in 0..10u8 {
        p.alloc_async(1).await.unwrap().tap(i).submit_detached().unwrap();
    }
    let mut completions = p.completions();
    let mut seen = Vec::new();
    while let Some(r) = next(&mut completions).await {
        seen.push(r.unwrap()[0]);
    }
    seen.sort();
    assert_eq!(seen, (0..10).map(|i| b'a' + i).map(|b| b.to_ascii_uppercase()).collect::<Vec<_>>());
    drop(completions);
    assert!(p.shutdown().was_graceful());
}

/// The waiting submitter runs on the one thread that also holds the frame it waits
/// for: were the wait blocking, the frame could never be released (the watchdog
/// fails the test instead of letting it hang).
#[tokio::test(flavor = "current_thread")]
async fn a_released_frame_wakes_a_waiting_submitter_on_the_same_thread() {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) {
                if std::time::Instant::now() > deadline {
                    eprintln!("submit_async blocked the runtime's thread");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let p = Arc::new(
        Pipeline::builder().stage(StageSpec::process_named("a.slow")).max_in_flight(1).build().unwrap(),
    );
    let held = p.submit_async(b"x").await.unwrap().await.unwrap(); // holds the only frame
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move { p.submit_async(b"y").await.unwrap().await.unwrap().to_vec() })
    };
    tokio::task::yield_now().await; // it polls and finds no room
    drop(held);
    assert_eq!(waiting.await.unwrap(), b"Y");
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    assert!(Arc::into_inner(p).unwrap().shutdown().was_graceful());
}

#[tokio::test(flavor = "current_thread")]
async fn a_closed_pipeline_fails_waiting_submitters() {
    let p = Arc::new(
        Pipeline::builder().stage(StageSpec::process_named("a.slow")).max_in_flight(1).build().unwrap(),
    );
    let held = p.submit_async(b"x").await.unwrap().await.unwrap(); // holds the only frame
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move { p.submit_async(b"y").await.map(|_| ()) })
    };
    tokio::task::yield_now().await; // it polls, finds no room, and waits
    p.close();
    assert_eq!(waiting.await.unwrap(), Err(SubmitError::ShutDown));
    drop(held);
    let p = Arc::into_inner(p).unwrap();
    assert!(matches!(p.submit(b"z"), Err(SubmitError::ShutDown)));
    p.shutdown();
}

trait Tap {
    fn tap(self, i: u8) -> Self;
}

impl Tap for ringpipe::NewFrame {
    fn tap(mut self, i: u8) -> Self {
        self[0] = b'a' + i;
        self
    }
}
