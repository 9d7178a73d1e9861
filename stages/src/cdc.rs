//! Content-defined chunking with FastCDC (the `fastcdc` crate, its 2020 variant).
//!
//! [`Chunker`] takes a block of a file (a plain frame, no chunk meta) and appends the
//! cut list: each chunk's length as a `u32` little-endian, then their count. The
//! bytes stay where they are: the parent reads the cuts with [`cuts`] and submits
//! each chunk to the next pipeline. Cuts depend on content only, so an insertion
//! early in a file moves one cut, not all of them. A block ends a chunk: blocks are
//! files, or large slices of large files.
//! [`Unchunk`], the inverse, checks and strips the cut list.
//!
//! ```
//! use ringpipe_stages::cdc::{cuts, Chunker};
//! # use ringpipe_engine::{Pipeline, StageSpec};
//! let p = Pipeline::builder()
//!     .stage(StageSpec::with_stage("cdc", Chunker::new(4096, 16384, 65536)))
//!     .frame_capacity(1 << 20)
//!     .build()
//!     .unwrap();
//! let data: Vec<u8> = (0..500_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
//! let out = p.submit(&data).unwrap().wait().unwrap();
//! let pieces = cuts(&out).unwrap();
//! assert!(pieces.len() > 10);
//! assert_eq!(pieces.iter().map(|r| r.len()).sum::<usize>(), data.len());
//! ```

use std::ops::Range;

use ringpipe_engine::{register, BoxError, Frame, Params, Registered, Stage};

/// Registered name of [`Chunker`] (typed: `StageSpec::process::<Chunker>(chunker)`).
pub const CHUNKER: &str = "ringpipe.fastcdc";
/// Registered name of [`Unchunk`].
pub const UNCHUNK: &str = "ringpipe.unchunk";

/// A bad cut list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutsError(String);

impl std::fmt::Display for CutsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad cut list: {}", self.0)
    }
}

impl std::error::Error for CutsError {}

/// Cuts a block into content-defined chunks of `min..=max` bytes, `avg` on average.
#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    min: u32,
    avg: u32,
    max: u32,
}

impl Default for Chunker {
    /// 256 KiB minimum, 1 MiB average, 4 MiB maximum: large chunks for throughput.
    fn default() -> Self {
        Self::new(256 << 10, 1 << 20, 4 << 20)
    }
}

impl Chunker {
    /// Sizes as FastCDC takes them (`fastcdc` clamps them to its own limits).
    pub fn new(min: u32, avg: u32, max: u32) -> Self {
        Self { min, avg, max }
    }

    /// Room the cut list takes after a block of `len` bytes, at most.
    pub fn overhead(&self, len: usize) -> usize {
        4 * (len / self.min.max(1) as usize + 2)
    }
}

impl Stage for Chunker {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let len = frame.len();
        let lengths: Vec<u32> = if len == 0 {
            Vec::new()
        } else {
            fastcdc::v2020::FastCDC::new(frame.bytes(), self.min, self.avg, self.max)
                .map(|c| c.length as u32)
                .collect()
        };
        let table = 4 * (lengths.len() + 1);
        frame.set_len(len + table)?;
        let out = &mut frame.bytes_mut()[len..];
        for (dst, n) in
            out.chunks_exact_mut(4).zip(lengths.iter().chain(std::iter::once(&(lengths.len() as u32))))
        {
            dst.copy_from_slice(&n.to_le_bytes());
        }
        Ok(())
    }
}

/// The chunks of a block the [`Chunker`] cut: ranges into `bytes` (the frame).
pub fn cuts(bytes: &[u8]) -> Result<Vec<Range<usize>>, CutsError> {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    let total = bytes.len();
    if total < 4 {
        return Err(CutsError(format!("a {total}-byte frame holds no cut list")));
    }
    let count = word(total - 4);
    let table = count.checked_add(1).and_then(|n| n.checked_mul(4)).filter(|&t| t <= total);
    let Some(table) = table else { return Err(CutsError(format!("{count} cuts do not fit {total} bytes"))) };
    let data = total - table;
    let mut at = 0;
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let n = word(data + 4 * i);
        if n == 0 || at + n > data {
            return Err(CutsError(format!("cut {i} of {n} bytes at {at} overruns {data} bytes")));
        }
        ranges.push(at..at + n);
        at += n;
    }
    if at != data {
        return Err(CutsError(format!("cuts cover {at} of {data} bytes")));
    }
    Ok(ranges)
}

/// [`Chunker`]'s inverse: checks that the cut list covers the block exactly and strips it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unchunk;

impl Stage for Unchunk {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let data = cuts(frame.bytes())?.last().map_or(0, |r| r.end);
        frame.set_len(data)?;
        Ok(())
    }
}

/// A chunker crosses into its worker as its sizes: min, avg, max as `u32` LE (no
/// bytes: the defaults).
impl Params for Chunker {
    fn encode(&self) -> Vec<u8> {
        [self.min, self.avg, self.max].iter().flat_map(|v| v.to_le_bytes()).collect()
    }
    fn decode(p: &[u8]) -> Result<Self, BoxError> {
        if p.is_empty() {
            return Ok(Chunker::default());
        }
        let v: Vec<u32> =
            p.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        match v[..] {
            [min, avg, max] if p.len() == 12 => Ok(Chunker::new(min, avg, max)),
            _ => Err("ringpipe.fastcdc takes min, avg, max as three u32 LE".into()),
        }
    }
}

/// `StageSpec::process::<Chunker>(Chunker::new(min, avg, max))`.
impl Registered for Chunker {
    const NAME: &'static str = CHUNKER;
    type Params = Chunker;
    fn from_params(c: Chunker) -> Result<Self, BoxError> {
        if c.min == 0 || c.min > c.avg || c.avg > c.max {
            return Err(format!("ringpipe.fastcdc needs 0 < min <= avg <= max, got {c:?}").into());
        }
        Ok(c)
    }
}

register!(Chunker);
register_plain!(Unchunk = UNCHUNK);
