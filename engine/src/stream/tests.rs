use super::*;

#[cfg(not(loom))]
mod unit {
    use std::io::{BufRead, Read, Write};

    use super::*;

    #[test]
    fn finished_stream_reads_to_eof() {
        let (mut w, mut r) = HeapStream::new(16).split();
        w.write_all(b"hello world").unwrap();
        w.finish().unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        assert_eq!(r.read(&mut [0; 4]).unwrap(), 0, "EOF stays EOF");
    }

    #[test]
    fn empty_stream_is_eof_at_once() {
        let (mut w, mut r) = HeapStream::new(4).split();
        w.finish().unwrap();
        assert_eq!(r.read_chunk().unwrap(), b"");
        assert!(r.is_finished());
    }

    #[test]
    fn dropped_writer_is_an_error_not_eof() {
        let (mut w, mut r) = HeapStream::new(16).split();
        w.write_all(b"part").unwrap();
        drop(w);
        let mut buf = Vec::new();
        let err = r.read_to_end(&mut buf).unwrap_err();
        assert_eq!(buf, b"part", "bytes before the failure are delivered");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(r.read_chunk().unwrap_err(), StreamError::ProducerFailed);
    }

    #[test]
    fn failed_and_engine_marked_writers_are_errors() {
        let (mut w, mut r) = HeapStream::new(16).split();
        w.fail();
        assert_eq!(r.read_chunk().unwrap_err(), StreamError::ProducerFailed);
        assert_eq!(w.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        let (w, mut r) = HeapStream::new(16).split();
        w.ring.header().fail_writer(); // what the engine does when the producer dies
        assert_eq!(r.read_chunk().unwrap_err(), StreamError::ProducerFailed);
    }

    #[test]
    fn closed_reader_fails_the_writer_even_when_full() {
        let (mut w, mut r) = HeapStream::new(4).split();
        w.write_all(b"full").unwrap();
        let t = std::thread::spawn(move || w.write(b"more").unwrap_err().kind());
        std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
        r.close();
        assert_eq!(t.join().unwrap(), io::ErrorKind::BrokenPipe);
        assert_eq!(r.read_chunk().unwrap_err(), StreamError::ReaderClosed);
    }

    #[test]
    fn engine_marked_reader_fails_the_writer() {
        let (mut w, r) = HeapStream::new(4).split();
        r.ring.header().close_reader();
        assert_eq!(w.write_chunk(1).err(), Some(StreamError::ConsumerClosed));
    }

    #[test]
    fn write_after_finish_and_zero_lengths() {
        let (mut w, mut r) = HeapStream::new(8).split();
        assert_eq!(w.write(b"").unwrap(), 0);
        assert_eq!(w.write_chunk(0).unwrap().len(), 0);
        w.finish().unwrap();
        assert_eq!(w.finish(), Err(StreamError::WriterDone));
        assert_eq!(w.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(r.read(&mut []).unwrap(), 0);
    }

    #[test]
    fn chunks_are_clamped_to_the_ring_and_its_wrap() {
        let (mut w, mut r) = HeapStream::new(8).split();
        let chunk = w.write_chunk(1 << 20).unwrap();
        assert_eq!(chunk.len(), 8, "a request larger than the ring gets the ring");
        chunk.commit(6);
        assert_eq!(r.read_chunk().unwrap().len(), 6);
        r.consume(6);
        let chunk = w.write_chunk(100).unwrap();
        assert_eq!(chunk.len(), 2, "contiguous up to the wrap");
        chunk.commit(100); // clamped to the chunk
        let mut chunk = w.write_chunk(100).unwrap();
        assert_eq!(chunk.len(), 6);
        chunk[..3].copy_from_slice(b"abc");
        chunk.commit(3);
        w.finish().unwrap();
        assert_eq!(r.fill_buf().unwrap().len(), 2);
        BufRead::consume(&mut r, 2);
        assert_eq!(r.fill_buf().unwrap(), b"abc");
        r.consume(99); // clamped
        assert_eq!(r.fill_buf().unwrap(), b"");
    }

    #[test]
    fn timeouts_are_typed() {
        let (mut w, mut r) = HeapStream::new(2).split();
        r.set_timeout(Some(Duration::from_millis(10)));
        assert_eq!(r.read_chunk().unwrap_err(), StreamError::TimedOut);
        w.set_timeout(Some(Duration::from_millis(10)));
        w.write_all(b"ab").unwrap();
        assert_eq!(w.write_chunk(1).err(), Some(StreamError::TimedOut));
    }

    #[test]
    fn corrupt_positions_are_errors() {
        let (mut w, mut r) = HeapStream::new(8).split();
        r.ring.header().tail.store(1_000, Ordering::Relaxed);
        assert_eq!(r.read_chunk().unwrap_err(), StreamError::Corrupt);
        w.ring.header().head.store(5, Ordering::Relaxed);
        assert_eq!(w.write_chunk(1).err(), Some(StreamError::Corrupt));
    }

    /// A stream many times the ring's size arrives byte-exact (compared by hash),
    /// through both the io traits and the chunk API.
    #[test]
    fn long_stream_through_a_small_ring_is_exact() {
        let total: u64 = if cfg!(miri) { 5_000 } else { 50 << 20 };
        let byte = |i: u64| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        let (mut w, mut r) = HeapStream::new(if cfg!(miri) { 61 } else { 4093 }).split();
        let producer = std::thread::spawn(move || {
            let mut i = 0u64;
            let mut buf = [0u8; 1000];
            while i < total {
                if i % 3 == 0 {
                    let n = buf.len().min((total - i) as usize);
                    for (k, b) in buf[..n].iter_mut().enumerate() {
                        *b = byte(i + k as u64);
                    }
                    w.write_all(&buf[..n]).unwrap();
                    i += n as u64;
                } else {
                    let mut chunk = w.write_chunk((total - i).min(777) as usize).unwrap();
                    for (k, b) in chunk.iter_mut().enumerate() {
                        *b = byte(i + k as u64);
                    }
                    let n = chunk.len();
                    chunk.commit(n);
                    i += n as u64;
                }
            }
            w.finish().unwrap();
        });
        let (mut expect, mut got) = (0u64, 0u64);
        let mut i = 0u64;
        loop {
            let chunk = r.read_chunk().unwrap();
            if chunk.is_empty() {
                break;
            }
            for &b in chunk {
                got = got.rotate_left(5) ^ u64::from(b);
                expect = expect.rotate_left(5) ^ u64::from(byte(i));
                i += 1;
            }
            let n = chunk.len();
            r.consume(n);
        }
        producer.join().unwrap();
        assert_eq!(i, total);
        assert_eq!(got, expect);
    }
}

#[cfg(loom)]
mod model {
    use super::*;

    /// Every byte arrives in order through a 2-byte ring, and EOF comes only after them.
    #[test]
    fn loom_stream_transfer_then_eof() {
        loom::model(|| {
            let (mut w, mut r) = HeapStream::new(2).split();
            let t = loom::thread::spawn(move || {
                for b in [1u8, 2, 3] {
                    loop {
                        match w.free() {
                            Ok(0) => loom::thread::yield_now(),
                            Ok(_) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    let mut c = w.write_chunk(1).unwrap();
                    c[0] = b;
                    c.commit(1);
                }
                w.finish().unwrap();
            });
            let mut got = Vec::new();
            loop {
                match r.available().unwrap() {
                    Some(0) => break,
                    Some(_) => {
                        let c = r.read_chunk().unwrap();
                        got.push(c[0]);
                        r.consume(1);
                    }
                    None => loom::thread::yield_now(),
                }
            }
            assert_eq!(got, [1, 2, 3]);
            t.join().unwrap();
        });
    }

    /// A writer that fails after writing is never seen as a clean end.
    #[test]
    fn loom_failed_writer_is_never_eof() {
        loom::model(|| {
            let (mut w, mut r) = HeapStream::new(4).split();
            let t = loom::thread::spawn(move || {
                let c = w.write_chunk(1).unwrap();
                c.commit(1);
                drop(w);
            });
            loop {
                match r.available() {
                    Ok(Some(0)) => panic!("a failed stream looked complete"),
                    Ok(Some(n)) => r.consume(n as usize),
                    Ok(None) => loom::thread::yield_now(),
                    Err(e) => {
                        assert_eq!(e, StreamError::ProducerFailed);
                        break;
                    }
                }
            }
            t.join().unwrap();
        });
    }
}
