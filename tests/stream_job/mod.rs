//! The streaming job both stream test files use: what the producer streams and how,
//! what each half saw, the byte pattern, and the pair that runs it.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{
    register, BoxError, Consumer, ConsumerSpec, Frame, ItemError, PairSpec, Pipeline, Producer, ProducerSpec,
    Registered,
};

use super::common;

pub const NEVER: u64 = u64::MAX;

/// One streaming job: what the producer streams and how, what each half saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Job {
    /// Bytes to stream.
    pub total: u64,
    /// Bytes per write (or per chunk request).
    pub write: u32,
    /// 0: `io::Write`/`io::Read`; 1: the chunk API.
    pub chunks: u32,
    /// The producer returns an error after this many bytes.
    pub fail_after: u64,
    /// The consumer stops after this many bytes: with an error, or with `Ok` if
    /// `stop_ok` is set.
    pub stop_after: u64,
    pub stop_ok: u32,
    /// Microseconds the producer sleeps after each write (kill tests).
    pub pace_us: u32,
    /// Producer: bytes written and their hash (reach the item by `merge_producer`).
    pub sent: u64,
    pub sent_hash: [u8; 32],
    /// Consumer: bytes read, their hash, whether it saw end-of-file, the error kind it
    /// got (`io::ErrorKind` as text, first 24 bytes).
    pub got: u64,
    pub got_hash: [u8; 32],
    pub eof: u32,
    pub merged: u32,
    pub got_error: [u8; 24],
}

impl Job {
    pub fn new(total: u64, write: u32, chunks: bool) -> Self {
        Self {
            total,
            write,
            chunks: chunks.into(),
            fail_after: NEVER,
            stop_after: NEVER,
            ..Zeroable::zeroed()
        }
    }
    pub fn got_error(&self) -> String {
        String::from_utf8_lossy(&self.got_error).trim_end_matches('\0').to_owned()
    }
}

/// The stream's contents: position `i` holds `pattern()[i % len]`. The odd length
/// makes every write and every ring wrap start at a different phase.
pub fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..(1 << 20) + 13)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

pub fn produce(job: &mut Job, out: &mut StreamWriter) -> Result<(), BoxError> {
    let p = pattern();
    let mut hash = blake3::Hasher::new();
    let mut sent = 0u64;
    while sent < job.total {
        if sent >= job.fail_after {
            return Err(format!("producer gave up after {sent} bytes").into());
        }
        let at = (sent % p.len() as u64) as usize;
        let want = (job.write as u64).min(job.total - sent).min((p.len() - at) as u64) as usize;
        let n = if job.chunks == 1 {
            let mut chunk = out.write_chunk(want)?;
            let n = chunk.len();
            chunk.copy_from_slice(&p[at..at + n]);
            chunk.commit(n);
            n
        } else {
            out.write_all(&p[at..at + want])?;
            want
        };
        hash.update(&p[at..at + n]);
        sent += n as u64;
        if job.pace_us > 0 {
            if sent == n as u64 {
                common::mark(&format!("s.produce-{}", job.stop_ok));
            }
            std::thread::sleep(Duration::from_micros(job.pace_us.into()));
        }
    }
    job.sent = sent;
    job.sent_hash = *hash.finalize().as_bytes();
    Ok(())
}

pub fn consume(job: &mut Job, input: &mut StreamReader) -> Result<(), BoxError> {
    let mut hash = blake3::Hasher::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; job.write.max(1) as usize];
    let result = loop {
        if got >= job.stop_after {
            break if job.stop_ok == 1 { Ok(()) } else { Err(format!("consumer gave up after {got} bytes")) };
        }
        let n = if job.chunks == 1 {
            match input.read_chunk() {
                Ok(chunk) => {
                    hash.update(chunk);
                    chunk.len()
                }
                Err(e) => break Err(std::io::Error::from(e).kind().to_string()),
            }
        } else {
            match input.read(&mut buf) {
                Ok(n) => {
                    hash.update(&buf[..n]);
                    n
                }
                Err(e) => break Err(e.kind().to_string()),
            }
        };
        if job.chunks == 1 {
            input.consume(n);
        }
        if job.pace_us > 0 && got == 0 && n > 0 {
            common::mark(&format!("s.consume-{}", job.stop_ok));
        }
        if n == 0 {
            job.eof = 1;
            break Ok(());
        }
        got += n as u64;
    };
    job.got = got;
    job.got_hash = *hash.finalize().as_bytes();
    if let Err(e) = &result {
        let n = e.len().min(job.got_error.len());
        job.got_error[..n].copy_from_slice(&e.as_bytes()[..n]);
    }
    result.map_err(Into::into)
}

pub struct JobProducer;
impl Producer for JobProducer {
    fn produce(&mut self, frame: &mut Frame<'_>, out: &mut StreamWriter) -> Result<(), BoxError> {
        produce(frame.header_mut::<Job>()?, out)
    }
}

pub struct JobConsumer;
impl Consumer for JobConsumer {
    fn consume(&mut self, frame: &mut Frame<'_>, input: &mut StreamReader) -> Result<(), BoxError> {
        consume(frame.header_mut::<Job>()?, input)
    }
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        let theirs: &Job = bytemuck::try_from_bytes(&producer[..std::mem::size_of::<Job>()])
            .map_err(|e| format!("producer frame: {e}"))?;
        let job = frame.header_mut::<Job>()?;
        job.sent = theirs.sent;
        job.sent_hash = theirs.sent_hash;
        job.merged = 1;
        Ok(())
    }
}

impl Registered for JobProducer {
    const NAME: &'static str = "s.produce";
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        Ok(JobProducer)
    }
}

impl Registered for JobConsumer {
    const NAME: &'static str = "s.consume";
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        Ok(JobConsumer)
    }
}

register!(producer: JobProducer);
register!(consumer: JobConsumer);

/// The job pair, each half in a process or on a thread, with a `ring`-byte stream.
pub fn job_pair(producer_process: bool, consumer_process: bool, ring: usize) -> PairSpec {
    let producer = if producer_process {
        ProducerSpec::process::<JobProducer>(())
    } else {
        ProducerSpec::thread::<JobProducer>(())
    };
    let consumer = if consumer_process {
        ConsumerSpec::process::<JobConsumer>(())
    } else {
        ConsumerSpec::thread::<JobConsumer>(())
    };
    PairSpec::new(producer, consumer).stream_capacity(ring)
}

/// A pipeline of the job pair alone, with 8 items in flight.
pub fn pair(producer_process: bool, consumer_process: bool, ring: usize) -> Pipeline {
    Pipeline::builder()
        .pair(job_pair(producer_process, consumer_process, ring))
        .max_in_flight(8)
        .build()
        .unwrap()
}

pub fn run(p: &Pipeline, job: Job) -> (Job, Option<ringpipe::StageFailure>) {
    let out = p.submit(bytemuck::bytes_of(&job)).unwrap().wait().or_else(ItemError::into_output).unwrap();
    (*out.header::<Job>().unwrap(), out.failure())
}

pub fn expect_exact(job: &Job, total: u64) {
    let mut h = blake3::Hasher::new();
    let p = pattern();
    let mut left = total;
    while left > 0 {
        let n = left.min(p.len() as u64) as usize;
        h.update(&p[..n]);
        left -= n as u64;
    }
    let want = *h.finalize().as_bytes();
    assert_eq!((job.sent, job.got, job.eof, job.merged), (total, total, 1, 1), "{job:?}");
    assert_eq!(job.sent_hash, want, "producer hashed something else");
    assert_eq!(job.got_hash, want, "consumer read something else than was written");
}
