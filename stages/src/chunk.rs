//! The chunk frame every backup stage reads and writes: a [`ChunkMeta`] followed by
//! the chunk's bytes (plain, compressed or sealed, depending on where it is).
//!
//! ```
//! use ringpipe_stages::chunk::{chunk_frame, ChunkMeta};
//! let frame = chunk_frame(7, b"hello");
//! let (meta, body) = ChunkMeta::parse(&frame).unwrap();
//! assert_eq!((meta.seq, body), (7, &b"hello"[..]));
//! ```

use bytemuck::{Pod, Zeroable};
use ringpipe_engine::{Frame, FrameError};

/// What travels in front of a chunk's bytes through every backup stage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ChunkMeta {
    /// The chunk's number in its archive: the AEAD nonce is derived from it, so it
    /// must be unique per archive key.
    pub seq: u64,
    /// BLAKE3 of the plain bytes (set by [`ChunkId`](crate::hash::ChunkId)); the
    /// chunk's identity for deduplication and the AEAD's associated data.
    pub id: [u8; 32],
    /// Length of the plain bytes (set by `ChunkId`; bounds decompression).
    pub raw_len: u32,
    /// How the body is encoded now: [`CODEC_NONE`], [`CODEC_ZSTD`] or [`CODEC_LZ4`].
    pub codec: u32,
}

/// Bytes of [`ChunkMeta`] at the front of a chunk frame.
pub const META_LEN: usize = std::mem::size_of::<ChunkMeta>();
/// [`ChunkMeta::codec`]: the body is the plain bytes.
pub const CODEC_NONE: u32 = 0;
/// [`ChunkMeta::codec`]: the body is a zstd frame.
pub const CODEC_ZSTD: u32 = 1;
/// [`ChunkMeta::codec`]: the body is an lz4 block.
pub const CODEC_LZ4: u32 = 2;

impl ChunkMeta {
    /// Splits a chunk frame's bytes into its meta (copied) and body.
    pub fn parse(bytes: &[u8]) -> Result<(Self, &[u8]), ChunkError> {
        if bytes.len() < META_LEN {
            return Err(ChunkError::Truncated { len: bytes.len() });
        }
        let (meta, body) = bytes.split_at(META_LEN);
        Ok((bytemuck::pod_read_unaligned(meta), body))
    }

    /// The chunk's id as hex, for messages.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Builds a chunk frame: a fresh meta numbered `seq`, then `data`.
pub fn chunk_frame(seq: u64, data: &[u8]) -> Vec<u8> {
    let meta = ChunkMeta { seq, ..ChunkMeta::default() };
    let mut v = Vec::with_capacity(META_LEN + data.len());
    v.extend_from_slice(bytemuck::bytes_of(&meta));
    v.extend_from_slice(data);
    v
}

/// Why a backup stage refused a chunk. Every variant names the chunk, so a restore
/// can say which one is bad; nothing is written from a chunk that fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The frame is shorter than its [`ChunkMeta`] (or than an AEAD tag).
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The plain bytes do not hash to the chunk's id.
    HashMismatch {
        /// The chunk's number.
        seq: u64,
        /// The id it should have (hex).
        id: String,
    },
    /// The AEAD tag does not verify: wrong key, or the sealed bytes or the id were
    /// altered.
    Auth {
        /// The chunk's number.
        seq: u64,
        /// Its id (hex).
        id: String,
    },
    /// The body is not valid for its codec, or decodes to another length than `raw_len`.
    Codec {
        /// The chunk's number.
        seq: u64,
        /// What went wrong.
        reason: String,
    },
    /// The body is not encoded the way this stage expects.
    WrongCodec {
        /// The chunk's number.
        seq: u64,
        /// The codec it carries.
        found: u32,
        /// The one this stage reads.
        expected: u32,
    },
    /// The result does not fit the frame.
    Frame(FrameError),
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { len } => write!(f, "a {len}-byte frame is too short for a chunk"),
            Self::HashMismatch { seq, id } => {
                write!(f, "chunk {seq} ({id}): its bytes do not hash to its id (corrupted)")
            }
            Self::Auth { seq, id } => {
                write!(f, "chunk {seq} ({id}): authentication failed (wrong key, or the chunk was altered)")
            }
            Self::Codec { seq, reason } => write!(f, "chunk {seq}: {reason}"),
            Self::WrongCodec { seq, found, expected } => {
                write!(f, "chunk {seq}: encoded with codec {found}, this stage reads codec {expected}")
            }
            Self::Frame(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ChunkError {}

impl From<FrameError> for ChunkError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

/// The meta at the front of `frame`, copied.
pub(crate) fn meta_of(frame: &Frame<'_>) -> Result<ChunkMeta, ChunkError> {
    ChunkMeta::parse(frame.bytes()).map(|(m, _)| m)
}

/// Writes `meta` over the front of `frame` (which holds at least a meta).
pub(crate) fn set_meta(frame: &mut Frame<'_>, meta: &ChunkMeta) {
    frame.bytes_mut()[..META_LEN].copy_from_slice(bytemuck::bytes_of(meta));
}
