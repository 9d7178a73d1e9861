use super::*;

#[cfg(not(loom))]
mod unit {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn ready_at_once_returns_ready() {
        let w = WaitWord::new();
        assert_eq!(w.wait(|| true, None), Wake::Ready);
    }

    #[test]
    fn times_out_when_nothing_happens() {
        let w = WaitWord::new();
        let t = Instant::now();
        assert_eq!(w.wait(|| false, Some(Duration::from_millis(20))), Wake::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn notify_wakes_a_parked_waiter() {
        let w = Arc::new(WaitWord::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (w2, f2) = (w.clone(), flag.clone());
        let t = std::thread::spawn(move || w2.wait(|| f2.load(std::sync::atomic::Ordering::Acquire), None));
        std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
        flag.store(true, std::sync::atomic::Ordering::Release);
        w.notify();
        assert_eq!(t.join().unwrap(), Wake::Ready);
    }

    #[test]
    fn notify_without_sleepers_is_a_no_op() {
        let w = WaitWord::new();
        w.notify();
        assert_eq!(w.seq.load(Ordering::Relaxed), 0, "no sleeper, so no bump and no syscall");
    }
}

#[cfg(loom)]
mod model {
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    use super::*;

    /// A sleeper racing a publisher: in every interleaving the sleeper returns Ready.
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let w = Arc::new(WaitWord::new());
            let flag = Arc::new(AtomicBool::new(false));
            let (w2, f2) = (w.clone(), flag.clone());
            let t = loom::thread::spawn(move || w2.wait(|| f2.load(Ordering::Acquire), None));
            flag.store(true, Ordering::Release);
            w.notify();
            assert_eq!(t.join().unwrap(), Wake::Ready);
        });
    }
}
