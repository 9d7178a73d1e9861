//! Compression of a chunk's body: zstd (level chosen per stage) and lz4, each with
//! its inverse. The compressed body replaces the plain one in a fresh frame
//! ([`Frame::replace`], no allocation); [`ChunkMeta::codec`] says which codec holds
//! the body, and decompression is bounded by [`ChunkMeta::raw_len`].
//!
//! ```
//! use ringpipe_stages::{chunk::{chunk_frame, ChunkMeta}, compress::{Zstd, Unzstd}, hash::ChunkId};
//! # use ringpipe_engine::{Pipeline, StageSpec};
//! let p = Pipeline::builder()
//!     .stage(StageSpec::with_stage("id", ChunkId))
//!     .stage(StageSpec::with_stage("zstd", Zstd::new(3)))
//!     .stage(StageSpec::with_stage("unzstd", Unzstd::default()))
//!     .build()
//!     .unwrap();
//! let text = b"to be or not to be, to be or not to be".repeat(100);
//! let out = p.submit(&chunk_frame(0, &text)).unwrap().wait().unwrap();
//! assert_eq!(ChunkMeta::parse(&out).unwrap().1, &text[..]);
//! ```

use ringpipe_engine::{register, BoxError, Frame, Registered, Stage};

use crate::chunk::{meta_of, ChunkError, ChunkMeta, CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, META_LEN};

/// Registered name of [`Zstd`] (parameter: the level, an `i32` little-endian; none: 3).
pub const ZSTD: &str = "ringpipe.zstd";
/// Registered name of [`Unzstd`].
pub const UNZSTD: &str = "ringpipe.unzstd";
/// Registered name of [`Lz4`].
pub const LZ4: &str = "ringpipe.lz4";
/// Registered name of [`Unlz4`].
pub const UNLZ4: &str = "ringpipe.unlz4";

/// Compresses a plain chunk's body with zstd.
pub struct Zstd {
    level: i32,
    ctx: zstd::bulk::Compressor<'static>,
}

impl Zstd {
    /// zstd at `level` (1 to 22; 3 is zstd's default; out-of-range levels are clamped
    /// by zstd).
    pub fn new(level: i32) -> Self {
        let ctx = zstd::bulk::Compressor::new(level).expect("zstd context");
        Self { level, ctx }
    }

    /// Its level.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The largest body zstd makes from `n` plain bytes: size frames for it.
    pub fn max_output(n: usize) -> usize {
        zstd::zstd_safe::compress_bound(n)
    }
}

/// Rewrites the body of a chunk frame through `code`, in a fresh frame, and sets the
/// codec. `code` gets the body and the room after the meta, returns the new body length.
fn recode(
    frame: &mut Frame<'_>,
    from: u32,
    to: u32,
    code: impl FnOnce(&ChunkMeta, &[u8], &mut [u8]) -> Result<usize, ChunkError>,
) -> Result<(), ChunkError> {
    let meta = meta_of(frame)?;
    if meta.codec != from {
        return Err(ChunkError::WrongCodec { seq: meta.seq, found: meta.codec, expected: from });
    }
    frame.replace(|old, new| {
        if new.len() < META_LEN {
            return Err(ChunkError::Frame(ringpipe_engine::FrameError::TooLarge {
                requested: META_LEN,
                capacity: new.len(),
            }));
        }
        let (head, room) = new.split_at_mut(META_LEN);
        let n = code(&meta, &old[META_LEN..], room)?;
        let out = ChunkMeta { codec: to, ..meta };
        head.copy_from_slice(bytemuck::bytes_of(&out));
        Ok(META_LEN + n)
    })
}

/// Decodes a `codec` body back to exactly its `raw_len` plain bytes with `decode`
/// (given the body and room for `raw_len` bytes; returns how many it wrote).
fn decode(
    frame: &mut Frame<'_>,
    codec: u32,
    name: &str,
    decode: impl FnOnce(&[u8], &mut [u8]) -> Result<usize, String>,
) -> Result<(), BoxError> {
    recode(frame, codec, CODEC_NONE, |meta, body, room| {
        let want = meta.raw_len as usize;
        let out = room.get_mut(..want).ok_or_else(|| no_room(meta, "raw length exceeds the frame", want))?;
        match decode(body, out).map_err(|e| no_room(meta, &format!("cannot decode {name}"), e))? {
            n if n == want => Ok(n),
            n => Err(no_room(meta, name, format!("{n} bytes, {want} expected"))),
        }
    })?;
    Ok(())
}

/// The frame's capacity is too small for the encoded chunk.
fn no_room(meta: &ChunkMeta, what: &str, e: impl std::fmt::Display) -> ChunkError {
    ChunkError::Codec { seq: meta.seq, reason: format!("{what}: {e}") }
}

impl Stage for Zstd {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let ctx = &mut self.ctx;
        recode(frame, CODEC_NONE, CODEC_ZSTD, |meta, body, room| {
            ctx.compress_to_buffer(body, room)
                .map_err(|e| no_room(meta, "zstd output does not fit the frame", e))
        })?;
        Ok(())
    }
}

/// Decompresses a zstd chunk back to its `raw_len` plain bytes, with one decoding
/// context kept from chunk to chunk.
pub struct Unzstd {
    ctx: zstd::bulk::Decompressor<'static>,
}

impl Default for Unzstd {
    fn default() -> Self {
        Self { ctx: zstd::bulk::Decompressor::new().expect("zstd decoding context") }
    }
}

impl Registered for Unzstd {
    const NAME: &'static str = UNZSTD;
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        let ctx = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd decoding context: {e}"))?;
        Ok(Self { ctx })
    }
}

impl Stage for Unzstd {
    /// Decodes into the frame, never past the chunk's raw length (and the decoder
    /// allocates no output of its own). A body whose zstd frame declares another size
    /// (a decompression bomb declares terabytes) is refused from its header alone,
    /// before any decoding.
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let ctx = &mut self.ctx;
        decode(frame, CODEC_ZSTD, "zstd", |body, out| {
            match zstd::zstd_safe::get_frame_content_size(body) {
                Ok(Some(declared)) if declared != out.len() as u64 => {
                    return Err(format!("its frame declares {declared} bytes, the chunk has {}", out.len()))
                }
                Ok(_) => {}
                Err(_) => return Err("its frame header does not parse".into()),
            }
            ctx.decompress_to_buffer(body, out).map_err(|e| e.to_string())
        })
    }
}

/// Compresses a plain chunk's body with lz4 (a raw block; the length is in the meta).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lz4;

impl Lz4 {
    /// The room lz4 needs to compress `n` plain bytes (it wants it all, even when the
    /// result is smaller): size frames for it.
    pub fn max_output(n: usize) -> usize {
        lz4_flex::block::get_maximum_output_size(n)
    }
}

impl Stage for Lz4 {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        recode(frame, CODEC_NONE, CODEC_LZ4, |meta, body, room| {
            lz4_flex::block::compress_into(body, room)
                .map_err(|e| no_room(meta, "lz4 output does not fit the frame", e))
        })?;
        Ok(())
    }
}

/// Decompresses an lz4 chunk back to its `raw_len` plain bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlz4;

impl Stage for Unlz4 {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        decode(frame, CODEC_LZ4, "lz4", |body, out| {
            lz4_flex::block::decompress_into(body, out).map_err(|e| e.to_string())
        })
    }
}

/// `StageSpec::process::<Zstd>(level)`.
impl Registered for Zstd {
    const NAME: &'static str = ZSTD;
    /// The compression level.
    type Params = i32;
    fn from_params(level: i32) -> Result<Self, BoxError> {
        Ok(Zstd::new(level))
    }
}

register!(Zstd);
register_plain!(Lz4 = LZ4, Unlz4 = UNLZ4);
register!(Unzstd);
