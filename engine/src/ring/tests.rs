use super::*;

#[cfg(not(loom))]
mod unit {
    use std::time::Duration;

    use super::*;

    #[test]
    fn push_waits_for_publish() {
        let (mut tx, mut rx) = HeapRing::new(4).split();
        tx.try_push(7).unwrap();
        assert_eq!(rx.try_pop(), Ok(None), "not published yet");
        tx.publish();
        assert_eq!(rx.try_pop(), Ok(Some(7)));
    }

    #[test]
    fn adopt_takes_over_unpublished_pushes() {
        let (mut tx, mut rx) = HeapRing::new(4).split();
        tx.try_push(7).unwrap(); // the first producer "dies" here, unpublished
        tx.adopt(1).unwrap();
        tx.publish();
        assert_eq!(rx.try_pop(), Ok(Some(7)));
        assert!(tx.adopt(9).is_err(), "more than the ring holds");
    }

    /// Two rings pointed at one doorbell: a consumer parked on the doorbell is woken by
    /// a publish on either ring.
    #[test]
    fn doorbell_wakes_a_consumer_of_many_rings() {
        let bell = HeapRing::new(1);
        let bell_header = bell.header.ptr();
        let (a_tx, mut a_rx) = HeapRing::new(4).split();
        let (b_tx, mut b_rx) = HeapRing::new(4).split();
        // SAFETY: `bell` outlives both producers (dropped at the end of the test).
        let (a_tx, mut b_tx) = unsafe { (a_tx.with_doorbell(bell_header), b_tx.with_doorbell(bell_header)) };
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
            b_tx.try_push(2).unwrap();
            b_tx.publish();
            a_tx
        });
        // SAFETY: as above.
        let bell_ref = unsafe { bell_header.as_ref() };
        let woke = bell_ref.wait_doorbell(
            || matches!(a_rx.has_data(), Ok(true)) || matches!(b_rx.has_data(), Ok(true)),
            Duration::from_secs(10),
        );
        assert_eq!(woke, Wake::Ready);
        assert_eq!(b_rx.try_pop(), Ok(Some(2)));
        let mut a_tx = t.join().unwrap();
        a_tx.try_push(1).unwrap();
        a_tx.publish();
        assert_eq!(a_rx.try_pop(), Ok(Some(1)));
        drop(bell);
    }

    #[test]
    fn fifo_and_wraparound() {
        let (mut tx, mut rx) = HeapRing::new(4).split();
        let rounds = if cfg!(miri) { 10 } else { 1000 };
        let mut next = 0;
        for round in 0..rounds {
            for k in 0..(round % 4) + 1 {
                tx.try_push(round * 10 + k).unwrap();
            }
            tx.publish();
            while let Some(v) = rx.try_pop().unwrap() {
                let _ = next;
                next = v;
            }
            assert_eq!(next, round * 10 + round % 4);
        }
    }

    #[test]
    fn full_gives_the_value_back() {
        let (mut tx, mut rx) = HeapRing::new(2).split();
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert_eq!(tx.try_push(3), Err(PushError::Full(3)));
        tx.publish();
        assert_eq!(rx.try_pop(), Ok(Some(1)));
        tx.try_push(3).unwrap();
        tx.publish();
        assert_eq!(rx.try_pop(), Ok(Some(2)));
        assert_eq!(rx.try_pop(), Ok(Some(3)));
        assert_eq!(rx.try_pop(), Ok(None));
    }

    #[test]
    fn publish_is_batched() {
        let (mut tx, mut rx) = HeapRing::new(8).split();
        for v in 0..5 {
            tx.try_push(v).unwrap();
        }
        assert_eq!(tx.unpublished(), 5);
        assert_eq!(rx.try_pop(), Ok(None));
        tx.publish();
        assert_eq!(tx.unpublished(), 0);
        assert_eq!((0..5).map(|_| rx.try_pop().unwrap().unwrap()).sum::<u64>(), 10);
    }

    #[test]
    fn corrupt_tail_is_an_error_not_a_read() {
        let (_tx, mut rx) = HeapRing::new(4).split();
        let ring = rx.ring.clone();
        // A buggy peer scribbles a tail far past head + capacity.
        ring.header().tail.store(1_000, Ordering::Relaxed);
        assert_eq!(rx.try_pop(), Err(Corrupt { local: 0, remote: 1_000 }));
        ring.header().tail.store(u64::MAX, Ordering::Relaxed);
        assert!(rx.try_pop().is_err());
    }

    #[test]
    fn corrupt_head_is_an_error() {
        let (mut tx, rx) = HeapRing::new(2).split();
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        rx.ring.header().head.store(77, Ordering::Relaxed);
        assert!(matches!(tx.try_push(3), Err(PushError::Corrupt(_))));
    }

    #[test]
    fn threads_transfer_everything_in_order() {
        let n: u64 = if cfg!(miri) { 200 } else { 200_000 };
        let (mut tx, mut rx) = HeapRing::new(64).split();
        let t = std::thread::spawn(move || {
            for v in 0..n {
                loop {
                    match tx.try_push(v) {
                        Ok(()) => break,
                        Err(PushError::Full(_)) => {
                            tx.publish();
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                if v % 16 == 15 {
                    tx.publish();
                }
            }
            tx.publish();
        });
        let mut expect = 0;
        while expect < n {
            match rx.try_pop().unwrap() {
                Some(v) => {
                    assert_eq!(v, expect);
                    expect += 1;
                }
                None => {
                    rx.wait(|| false, Some(std::time::Duration::from_millis(100)));
                }
            }
        }
        t.join().unwrap();
    }
}

#[cfg(loom)]
mod model {
    use super::*;

    /// Values and the memory written before them arrive in order, through a full ring.
    #[test]
    fn loom_spsc_transfer() {
        loom::model(|| {
            let (mut tx, mut rx) = HeapRing::new(2).split();
            let t = loom::thread::spawn(move || {
                for v in 1..=3 {
                    while let Err(PushError::Full(_)) = tx.try_push(v) {
                        loom::thread::yield_now();
                    }
                    tx.publish();
                }
            });
            let mut expect = 1;
            while expect <= 3 {
                match rx.try_pop().unwrap() {
                    Some(v) => {
                        assert_eq!(v, expect);
                        expect += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            t.join().unwrap();
        });
    }

    /// A consumer that parks while the producer publishes is always woken.
    #[test]
    fn loom_consumer_parks_and_is_woken() {
        loom::model(|| {
            let (mut tx, mut rx) = HeapRing::new(2).split();
            let t = loom::thread::spawn(move || {
                tx.try_push(9).unwrap();
                tx.publish();
            });
            assert_eq!(rx.wait(|| false, None), Wake::Ready);
            assert_eq!(rx.try_pop(), Ok(Some(9)));
            t.join().unwrap();
        });
    }
}
