//! The stage loop on a heap segment, driven by the test as the parent would: Miri
//! checks the loop, the frame hand-over and the rings together.

use std::sync::Arc;
use std::time::Duration;

use bytemuck::Zeroable;

use super::runner::{RunEnd, StageRunner};
use crate::frame::{OwnedSlot, STATUS_FAILED};
use crate::memory::{Layout, Segment, SlotHeader, StageRecord, STATE_SHUTDOWN};
use crate::stage::{stage_fn, BoxError};
use crate::Frame;

fn segment() -> Arc<Segment> {
    let seg = Segment::on_heap(Layout::compute(1, 5, 64, 0).unwrap());
    seg.write_stage(
        0,
        StageRecord { input_ring: 0, output_ring: 1, wake_ring: 1, spare_slot: 0, ..Default::default() },
    );
    Arc::new(seg)
}

fn picky() -> Box<dyn crate::Stage> {
    Box::new(
        stage_fn(|f: &mut Frame<'_>| match f.bytes().first() {
            Some(b'E') => Err::<(), BoxError>("refused".into()),
            Some(b'P') => panic!("told to panic"),
            _ => {
                f.bytes_mut().make_ascii_uppercase();
                Ok(())
            }
        })
        .with_determiner(|f: &mut Frame<'_>| f.bytes().first() != Some(&b'S')),
    )
}

fn submit(seg: &Segment, tx: &mut crate::ring::Producer, slot: u32, data: &[u8]) {
    let mut s = {
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(seg, slot) }
    }
    .unwrap();
    s.payload_mut(seg)[..data.len()].copy_from_slice(data);
    s.set_header(seg, &SlotHeader { len: data.len() as u32, ticket: slot, ..SlotHeader::zeroed() });
    tx.try_push(s.into_descriptor()).unwrap();
}

/// Runs stage 0 (`picky`) on its own thread, as a thread stage would.
fn start(seg: &Arc<Segment>) -> std::thread::JoinHandle<RunEnd> {
    let runner = StageRunner::new(seg.clone(), 0, crate::stage::StageCode::Stage(picky())).unwrap();
    std::thread::spawn(move || runner.run())
}

/// Asks for shutdown as the parent would, and returns how the loop ended.
fn stop(seg: &Segment, worker: std::thread::JoinHandle<RunEnd>) -> RunEnd {
    seg.control().set_state(STATE_SHUTDOWN);
    seg.ring_header(0).nudge_consumer();
    worker.join().unwrap()
}

/// The next descriptor, waiting for it as the parent would.
fn pop(rx: &mut crate::ring::Consumer) -> u64 {
    loop {
        if let Some(d) = rx.try_pop().unwrap() {
            return d;
        }
        rx.wait(|| false, Some(Duration::from_millis(100)));
    }
}

#[test]
fn runner_processes_skips_fails_and_survives_panics() {
    let seg = segment();
    let worker = start(&seg);
    let (mut tx, _) = seg.ring(0);
    let (_, mut rx) = seg.ring(1);
    submit(&seg, &mut tx, 1, b"abc");
    submit(&seg, &mut tx, 2, b"Exy");
    submit(&seg, &mut tx, 3, b"Pxy");
    submit(&seg, &mut tx, 4, b"Sxy");
    tx.publish();
    let out: Vec<_> = (0..4).map(|_| OwnedSlot::from_descriptor(&seg, pop(&mut rx)).unwrap()).collect();
    let by_ticket = |t: u32| out.iter().find(|s| s.header(&seg).ticket == t).unwrap();
    let ok = by_ticket(1);
    assert_eq!(&ok.payload(&seg)[..3], b"ABC");
    assert!(crate::frame::has_run(&ok.header(&seg), 0));
    let failed = by_ticket(2).failure(&seg);
    assert_eq!((by_ticket(2).header(&seg).status, failed.failed_stage), (STATUS_FAILED, 0));
    assert_eq!(by_ticket(2).error_text(&seg, failed.error_len), "refused");
    assert_eq!(by_ticket(3).header(&seg).status, STATUS_FAILED);
    assert!(by_ticket(3).error_text(&seg, by_ticket(3).failure(&seg).error_len).contains("told to panic"));
    let skipped = by_ticket(4).header(&seg);
    assert_eq!(skipped.status, 0);
    assert!(!crate::frame::has_run(&skipped, 0));
    assert_eq!(&by_ticket(4).payload(&seg)[..3], b"Sxy");

    assert_eq!(stop(&seg, worker), RunEnd::Shutdown);
}

#[test]
fn runner_stops_on_a_forged_descriptor() {
    let seg = segment();
    let worker = start(&seg);
    let (mut tx, _) = seg.ring(0);
    tx.try_push(1_000).unwrap();
    tx.publish();
    assert!(matches!(worker.join().unwrap(), RunEnd::Corrupt(_)));
    assert_eq!(seg.control().state(), crate::memory::STATE_BROKEN);
}

#[test]
fn runner_fails_an_item_whose_length_is_corrupt() {
    let seg = segment();
    let worker = start(&seg);
    let (mut tx, _) = seg.ring(0);
    let (_, mut rx) = seg.ring(1);
    let mut s = {
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(&seg, 1) }
    }
    .unwrap();
    s.set_header(&seg, &SlotHeader { len: 1_000_000, ..SlotHeader::zeroed() });
    tx.try_push(s.into_descriptor()).unwrap();
    tx.publish();
    let slot = OwnedSlot::from_descriptor(&seg, pop(&mut rx)).unwrap();
    let h = slot.header(&seg);
    assert_eq!(h.status, STATUS_FAILED);
    assert!(slot.error_text(&seg, slot.failure(&seg).error_len).contains("exceeds capacity"));
    assert_eq!(stop(&seg, worker), RunEnd::Shutdown);
}
