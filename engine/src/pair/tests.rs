#[cfg(not(loom))]
mod unit {
    //! Both halves' stage loops on a heap segment, on two threads: Miri checks the
    //! pair protocol, the stream and the frame hand-over together.

    use std::io::{Read, Write};
    use std::sync::Arc;

    use bytemuck::Zeroable;

    use super::super::*;
    use crate::frame::{OwnedSlot, STATUS_FAILED};
    use crate::memory::{
        Layout, Segment, SlotHeader, StageRecord, ROLE_CONSUMER, ROLE_PRODUCER, STATE_SHUTDOWN,
    };
    use crate::stage::{consumer_fn, producer_fn, stage_fn, BoxError, StageCode};
    use crate::stream::{StreamReader, StreamWriter};
    use crate::worker::runner::{RunEnd, StageRunner};
    use crate::Frame;

    const RING: u64 = 16;

    /// Two stages, one pair: spares 0 and 1, partner 2, items in 3..6.
    fn segment() -> Arc<Segment> {
        let layout = Layout::with_streams(2, 6, 64, 0, Layout::pair_size(RING)).unwrap();
        let seg = Segment::on_heap(layout);
        seg.write_stage(
            0,
            StageRecord {
                input_ring: 0,
                output_ring: 1,
                wake_ring: 1,
                spare_slot: 0,
                role: ROLE_PRODUCER,
                stream_capacity: RING,
                partner_slot: 2,
                ..Default::default()
            },
        );
        seg.write_stage(
            1,
            StageRecord {
                input_ring: 1,
                output_ring: 2,
                wake_ring: 2,
                spare_slot: 1,
                stage: 1,
                role: ROLE_CONSUMER,
                ..Default::default()
            },
        );
        seg.check_stages().unwrap();
        Arc::new(seg)
    }

    /// Streams the item's bytes repeated 5 times; records the count in its own frame's
    /// first byte; declines items starting with `S`; fails items starting with `E`.
    fn producer() -> StageCode {
        StageCode::Producer(Box::new(
            producer_fn(|f: &mut Frame<'_>, out: &mut StreamWriter| {
                if f.bytes().first() == Some(&b'E') {
                    out.write_all(b"partial")?;
                    return Err("producer refused".into());
                }
                for _ in 0..5 {
                    out.write_all(f.bytes())?;
                }
                f.bytes_mut()[0] = 5;
                Ok(())
            })
            .with_determiner(|f: &mut Frame<'_>| f.bytes().first() != Some(&b'S')),
        ))
    }

    /// Reads the whole stream into the frame; takes the producer's count as byte 0.
    fn consumer() -> StageCode {
        StageCode::Consumer(Box::new(
            consumer_fn(|f: &mut Frame<'_>, input: &mut StreamReader| {
                let mut all = Vec::new();
                input.read_to_end(&mut all)?;
                f.set_len(all.len() + 1)?;
                f.bytes_mut()[1..].copy_from_slice(&all);
                Ok(())
            })
            .with_merge(|f: &mut Frame<'_>, producer: &[u8]| {
                f.bytes_mut()[0] = producer[0];
                Ok(())
            }),
        ))
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

    fn pop(seg: &Segment, rx: &mut crate::ring::Consumer) -> OwnedSlot {
        loop {
            if let Some(d) = rx.try_pop().unwrap() {
                return OwnedSlot::from_descriptor(seg, d).unwrap();
            }
            std::thread::yield_now();
        }
    }

    fn start(seg: &Arc<Segment>, i: usize, stage: StageCode) -> std::thread::JoinHandle<RunEnd> {
        let runner = StageRunner::new(seg.clone(), i, stage).unwrap();
        std::thread::spawn(move || runner.run())
    }

    #[test]
    fn both_halves_stream_merge_and_skip() {
        let seg = segment();
        let (mut tx, _) = seg.ring(0);
        let (_, mut rx) = seg.ring(2);
        let p = start(&seg, 0, producer());
        let c = start(&seg, 1, consumer());
        submit(&seg, &mut tx, 3, b"xabcdefg"); // 40 bytes through a 16-byte ring
        submit(&seg, &mut tx, 4, b"Skip");
        submit(&seg, &mut tx, 5, b"Err");
        tx.publish();
        let mut outs = Vec::new();
        for _ in 0..3 {
            let slot = pop(&seg, &mut rx);
            let h = slot.header(&seg);
            outs.push((
                slot.payload(&seg)[..h.len as usize].to_vec(),
                h.status,
                slot.failure(&seg).failed_stage,
                h.ran[0],
            ));
        }
        let want: Vec<u8> = std::iter::once(5).chain(b"xabcdefg".repeat(5)).collect();
        assert_eq!(outs[0], (want, 0, 0, 0b11));
        assert_eq!(outs[1], (b"Skip".to_vec(), 0, 0, 0), "declined: neither half ran");
        assert_eq!(outs[2].1, STATUS_FAILED);
        assert_eq!(outs[2].2, 0, "the producer's failure is the cause");
        seg.control().set_state(STATE_SHUTDOWN);
        seg.ring_header(0).nudge_consumer();
        seg.ring_header(1).nudge_consumer();
        assert_eq!(p.join().unwrap(), RunEnd::Shutdown);
        assert_eq!(c.join().unwrap(), RunEnd::Shutdown);
    }

    #[test]
    fn paired_descriptor_at_a_plain_stage_is_corruption() {
        let seg = Arc::new(Segment::on_heap(Layout::compute(1, 2, 8, 0).unwrap()));
        seg.write_stage(
            0,
            StageRecord { input_ring: 0, output_ring: 1, wake_ring: 1, spare_slot: 0, ..Default::default() },
        );
        let (mut tx, _) = seg.ring(0);
        tx.try_push(1 | PAIRED).unwrap();
        tx.publish();
        let stage = StageCode::Stage(Box::new(stage_fn(|_f: &mut Frame<'_>| Ok::<(), BoxError>(()))));
        let end = StageRunner::new(seg.clone(), 0, stage).unwrap().run();
        assert!(matches!(end, RunEnd::Corrupt(ref why) if why.contains("paired")), "{end:?}");
    }

    #[test]
    fn impossible_pair_state_is_corruption() {
        let seg = segment();
        let (mut tx, _) = seg.ring(1);
        let pair = seg.pair(&seg.stage(0).unwrap());
        pair.header().state.store(7, Ordering::Relaxed);
        tx.try_push(3 | PAIRED).unwrap();
        tx.publish();
        let end = StageRunner::new(seg.clone(), 1, consumer()).unwrap().run();
        assert!(matches!(end, RunEnd::Corrupt(ref why) if why.contains("state 7")), "{end:?}");
    }

    #[test]
    fn bad_stream_records_are_refused() {
        let layout = Layout::with_streams(2, 4, 8, 0, Layout::pair_size(64)).unwrap();
        let seg = Segment::on_heap(layout);
        let good = StageRecord {
            input_ring: 0,
            output_ring: 1,
            spare_slot: 0,
            role: ROLE_PRODUCER,
            stream_capacity: 64,
            partner_slot: 2,
            ..Default::default()
        };
        for bad in [
            StageRecord { stream_capacity: 0, ..good },
            StageRecord { stream_capacity: 64 + 128, ..good },
            StageRecord { stream_offset: 128, ..good },
            StageRecord { stream_offset: 1, ..good },
            StageRecord { partner_slot: 0, ..good },
            StageRecord { partner_slot: 4, ..good },
            StageRecord { role: 9, ..good },
        ] {
            seg.write_stage(0, bad);
            assert!(seg.stage(0).is_err(), "{bad:?}");
        }
        seg.write_stage(0, good);
        assert!(seg.stage(0).is_ok());
        // The last stage cannot produce; a consumer needs a producer before it.
        seg.write_stage(
            1,
            StageRecord { input_ring: 1, output_ring: 2, wake_ring: 2, spare_slot: 1, ..good },
        );
        assert!(seg.stage(1).is_err());
        seg.write_stage(0, StageRecord { role: 0, ..good });
        seg.write_stage(
            1,
            StageRecord {
                input_ring: 1,
                output_ring: 2,
                wake_ring: 2,
                spare_slot: 1,
                role: ROLE_CONSUMER,
                ..good
            },
        );
        assert!(seg.check_stages().is_err());
    }
}

#[cfg(loom)]
mod model {
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    use super::super::*;

    /// The producer's frame, written before `produced`, is fully visible to the
    /// consumer that sees PRODUCED (loom flags a racy read of the cell otherwise), and
    /// the consumer's release lets the producer start again.
    #[test]
    fn loom_produced_hands_over_the_frame() {
        loom::model(|| {
            let pair = Arc::new(PairHeader::default());
            let frame = Arc::new(UnsafeCell::new(0u32));
            let (p, f) = (pair.clone(), frame.clone());
            let producer = loom::thread::spawn(move || {
                assert!(p.start(0, || false));
                // SAFETY: the producer owns the frame between start and produced.
                f.with_mut(|v| unsafe { *v = 42 });
                p.produced(3, OUTCOME_OK);
                while p.state() != IDLE {
                    loom::thread::yield_now();
                }
                // SAFETY: the consumer released it.
                f.with_mut(|v| unsafe { *v = 0 });
            });
            while pair.state() != PRODUCED {
                loom::thread::yield_now();
            }
            // SAFETY: owned by the consumer between PRODUCED and release.
            assert_eq!(frame.with(|v| unsafe { *v }), 42);
            pair.release();
            producer.join().unwrap();
        });
    }

    /// A producer starting an item races the engine aborting the pair: either the
    /// producer sees the pipeline broken, or the abort survives its reset. Never both
    /// missed (which would leave a half waiting on a stream nobody will end).
    #[test]
    fn loom_start_never_erases_an_abort() {
        loom::model(|| {
            let pair = Arc::new(PairHeader::default());
            let broken = Arc::new(AtomicBool::new(false));
            let (p, b) = (pair.clone(), broken.clone());
            let engine = loom::thread::spawn(move || {
                b.store(true, Ordering::Relaxed);
                p.abort();
            });
            let started = pair.start(0, || broken.load(Ordering::Relaxed));
            engine.join().unwrap();
            let aborted = pair.stream.flags_for_test() & 6 == 6;
            assert!(!started || aborted, "the abort was lost");
        });
    }
}
