//! Scatter and gather over rings of a heap segment (Miri runs these).

use std::sync::Arc;

use super::{Gather, GatherError, Scatter};
use crate::frame::OwnedSlot;
use crate::memory::{Layout, Segment, SlotHeader};
use crate::ring::{Consumer, Producer};

/// A segment with `rings` rings and 16 slots.
fn segment(rings: usize) -> Arc<Segment> {
    Arc::new(Segment::on_heap(Layout::with_rings(1, rings, 16, 8, 0, 0).unwrap()))
}

fn ends(seg: &Arc<Segment>, rings: usize) -> (Vec<Producer>, Vec<Consumer>) {
    (0..rings).map(|i| seg.ring(i)).unzip()
}

fn with_seq(seg: &Segment, slot: u32, seq: u64) -> u64 {
    let mut s = {
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(seg, slot) }
    }
    .unwrap();
    s.set_header(seg, &SlotHeader { seq, ..bytemuck::Zeroable::zeroed() });
    s.into_descriptor()
}

#[test]
fn scatter_sends_each_item_to_the_least_loaded_ring() {
    let seg = segment(3);
    let (tx, mut rx) = ends(&seg, 3);
    let mut scatter = Scatter::new(tx);
    for d in 0..6 {
        scatter.push(d).unwrap();
    }
    scatter.publish();
    let counts: Vec<usize> =
        rx.iter_mut().map(|r| std::iter::from_fn(|| r.try_pop().unwrap()).count()).collect();
    assert_eq!(counts, [2, 2, 2], "ties rotate");
    // Ring 1 is behind by three: the next three items go to the others.
    for d in 0..3 {
        scatter.push(d).unwrap();
    }
    scatter.publish();
    for d in 0..3 {
        scatter.push(10 + d).unwrap();
    }
    scatter.publish();
    let _ = rx[1].try_pop().unwrap();
    let left: Vec<usize> =
        rx.iter_mut().map(|r| std::iter::from_fn(|| r.try_pop().unwrap()).count()).collect();
    assert_eq!(left.iter().sum::<usize>(), 5);
    assert!(left.iter().max().unwrap() - left.iter().min().unwrap() <= 1, "{left:?}");
}

#[test]
fn unordered_gather_takes_from_every_ring_in_turn() {
    let seg = segment(3);
    let (mut tx, rx) = ends(&seg, 3);
    let mut gather = Gather::new(rx, false, false);
    assert_eq!(gather.try_pop(&seg), Ok(None));
    assert!(!gather.ready(&seg).unwrap());
    for (i, ring) in tx.iter_mut().enumerate() {
        for k in 0..3 {
            ring.try_push((i * 10 + k) as u64).unwrap();
        }
        ring.publish();
    }
    assert!(gather.ready(&seg).unwrap());
    let got: Vec<u64> = std::iter::from_fn(|| gather.try_pop(&seg).unwrap()).collect();
    assert_eq!(got, [0, 10, 20, 1, 11, 21, 2, 12, 22]);
}

#[test]
fn ordered_gather_restores_submission_order() {
    let seg = segment(2);
    let (mut tx, rx) = ends(&seg, 2);
    let mut gather = Gather::new(rx, true, false);
    // Replica 1 finished items 1 and 2 before replica 0 finished item 0.
    tx[1].try_push(with_seq(&seg, 5, 1)).unwrap();
    tx[1].try_push(with_seq(&seg, 6, 2)).unwrap();
    tx[1].publish();
    assert_eq!(gather.try_pop(&seg), Ok(None), "item 0 is not there yet");
    assert!(!gather.ready(&seg).unwrap());
    assert_eq!(gather.held(), 2);
    tx[0].try_push(with_seq(&seg, 4, 0)).unwrap();
    tx[0].try_push(with_seq(&seg, 7, 4)).unwrap();
    tx[0].publish();
    assert!(gather.ready(&seg).unwrap());
    let got: Vec<u64> = std::iter::from_fn(|| gather.try_pop(&seg).unwrap()).collect();
    assert_eq!(got, [4, 5, 6], "slot of item 0, 1, 2; item 4 waits for 3");
    tx[1].try_push(with_seq(&seg, 8, 3)).unwrap();
    tx[1].publish();
    let got: Vec<u64> = std::iter::from_fn(|| gather.try_pop(&seg).unwrap()).collect();
    assert_eq!(got, [8, 7]);
    assert_eq!(gather.held(), 0);
}

#[test]
fn ordered_gather_reports_duplicates_and_bad_descriptors() {
    let seg = segment(2);
    let (mut tx, rx) = ends(&seg, 2);
    let mut gather = Gather::new(rx, true, false);
    tx[0].try_push(with_seq(&seg, 1, 0)).unwrap();
    tx[1].try_push(with_seq(&seg, 2, 0)).unwrap();
    tx[0].publish();
    tx[1].publish();
    assert_eq!(gather.try_pop(&seg), Ok(Some(1)));
    assert!(gather.ready(&seg).unwrap(), "a duplicate must surface, not wait forever");
    assert_eq!(gather.try_pop(&seg), Err(GatherError::Sequence { seq: 0, next: 1 }));

    let (mut tx, rx) = ends(&segment(2), 2);
    let mut gather = Gather::new(rx, true, false);
    tx[1].try_push(99).unwrap();
    tx[1].publish();
    assert_eq!(gather.try_pop(&seg), Err(GatherError::Descriptor(99)));
}
