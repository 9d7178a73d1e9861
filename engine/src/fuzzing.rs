//! Hostile shared memory, for the fuzz target (`fuzz/`, `cargo +nightly fuzz run
//! segment`) and the unit test below: arbitrary bytes become the segment header a worker
//! validates at start-up, and the contents of a segment (stage records, journals, ring
//! positions and descriptors, frame headers) that every check a process makes on shared
//! memory then reads. Whatever the bytes, each check gives a value or a typed error:
//! never a panic or an out-of-bounds access (the fuzzer runs with AddressSanitizer).

use std::sync::Arc;

use crate::frame::OwnedSlot;
use crate::memory::{Layout, Segment, SegmentHeader};
use crate::pipeline::restart::{settle, Death};
use crate::route::Gather;

/// Stage records, rings and slots of the segment the bytes are written into.
const STAGES: usize = 3;
const RINGS: usize = 4;
const SLOTS: usize = 8;

/// Feeds `bytes` to every validation of what is read from shared memory.
pub fn exercise(bytes: &[u8]) {
    header(bytes);
    let layout = Layout::with_rings(STAGES, RINGS, SLOTS, 64, 32, 0).expect("a small layout");
    let seg = Arc::new(Segment::on_heap(layout));
    seg.scribble(bytes);
    let capacity = seg.layout().slot_capacity();

    // Stage records and their parameter bytes, as a worker reads its own.
    let _ = seg.check_stages();
    for i in 0..=STAGES {
        if let Ok(r) = seg.stage(i) {
            let _ = seg.blob(r.params_offset, r.params_len);
        }
    }
    // Every ring's positions and descriptors, and the frame headers they name.
    for r in 0..RINGS {
        let (_, mut consumer) = seg.ring(r);
        for _ in 0..2 * SLOTS {
            match consumer.try_pop() {
                Ok(Some(desc)) => frame(&seg, desc, capacity),
                Ok(None) | Err(_) => break,
            }
        }
    }
    // An ordered gather over rings that may hold duplicate or forged sequence numbers.
    let mut gather = Gather::new((0..RINGS).map(|r| seg.ring(r).1).collect(), true, false);
    for _ in 0..2 * SLOTS {
        match gather.try_pop(&seg) {
            Ok(Some(desc)) => frame(&seg, desc, capacity),
            Ok(None) | Err(_) => break,
        }
    }
    // What the parent reads from a dead worker's journal.
    for i in 0..STAGES {
        let death = Death {
            record: i as u32,
            pid: 1,
            status: "killed by the fuzzer",
            timed_out: None,
            violation: None,
        };
        let _ = settle(&seg, i, &death);
    }
}

/// The header check a worker makes before mapping anything else.
fn header(bytes: &[u8]) {
    let n = std::mem::size_of::<SegmentHeader>();
    if let Some(head) = bytes.get(..n) {
        let header: SegmentHeader = bytemuck::pod_read_unaligned(head);
        let size =
            bytes.get(n..n + 8).map_or(bytes.len() as u64, |b| u64::from_le_bytes(b.try_into().unwrap()));
        let _ = Layout::validate(&header, size);
    }
}

/// What a stage checks on a popped descriptor before touching the frame.
fn frame(seg: &Segment, desc: u64, capacity: usize) {
    let Ok(slot) = OwnedSlot::from_descriptor(seg, desc & !crate::pair::PAIRED) else { return };
    let header = slot.header(seg);
    if header.len as usize <= capacity {
        let _ = &slot.payload(seg)[..header.len as usize];
    }
    let _ = slot.error_text(seg, slot.failure(seg).error_len);
    let _ = slot.into_descriptor();
}

#[cfg(test)]
mod tests {
    /// Random and structured inputs; the fuzz target explores far more in CI.
    #[test]
    fn hostile_segments_give_typed_errors() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let rounds = if cfg!(miri) { 8 } else { 3_000 };
        for round in 0..rounds {
            let len = 1 + (round * 37) % 700;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly small values, so positions and indices are often in range.
                    if x % 3 == 0 {
                        (x >> 56) as u8
                    } else {
                        (x >> 60) as u8
                    }
                })
                .collect();
            super::exercise(&bytes);
        }
    }
}
