//! BLAKE3 digests: [`Blake3Seal`] appends a frame's 32-byte digest, [`Blake3Verify`]
//! checks and strips it (its inverse, for restore).

use ringpipe_engine::{BoxError, Frame, Stage};

use crate::chunk::{set_meta, ChunkError, ChunkMeta, CODEC_NONE};

/// Bytes of a BLAKE3 digest.
pub const DIGEST_LEN: usize = 32;

/// Registered name of [`Blake3Seal`].
pub const SEAL: &str = "ringpipe.blake3.seal";
/// Registered name of [`Blake3Verify`].
pub const VERIFY: &str = "ringpipe.blake3.verify";

/// Appends the BLAKE3 digest of the frame's bytes to the frame.
///
/// ```
/// use ringpipe_stages::hash::{Blake3Seal, Blake3Verify};
/// # use ringpipe_engine::{Pipeline, StageSpec};
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let p = Pipeline::builder()
///     .stage(StageSpec::with_stage("seal", Blake3Seal))
///     .stage(StageSpec::with_stage("verify", Blake3Verify))
///     .build()?;
/// let out = p.submit(b"chunk")?.wait()?; // a bad chunk would be an `Err`
/// assert_eq!(&out[..], b"chunk");
/// # Ok(()) }
/// # demo().unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Blake3Seal;

impl Stage for Blake3Seal {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let n = frame.len();
        let digest = blake3::hash(frame.bytes());
        frame.set_len(n + DIGEST_LEN)?;
        frame.bytes_mut()[n..].copy_from_slice(digest.as_bytes());
        Ok(())
    }
}

/// A frame whose digest does not match its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The frame is shorter than a digest.
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The digest does not match.
    Mismatch,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { len } => write!(f, "a {len}-byte frame is too short to carry a BLAKE3 digest"),
            Self::Mismatch => write!(f, "BLAKE3 digest mismatch: the frame was corrupted"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks and removes the trailing BLAKE3 digest; a mismatch fails the item.
#[derive(Clone, Copy, Debug, Default)]
pub struct Blake3Verify;

impl Stage for Blake3Verify {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let len = frame.len();
        let body = len.checked_sub(DIGEST_LEN).ok_or(VerifyError::Truncated { len })?;
        let (data, digest) = frame.bytes().split_at(body);
        if blake3::hash(data).as_bytes() != digest {
            return Err(VerifyError::Mismatch.into());
        }
        frame.set_len(body)?;
        Ok(())
    }
}

register_plain!(Blake3Seal = SEAL, Blake3Verify = VERIFY);

/// Registered name of [`ChunkId`].
pub const CHUNK_ID: &str = "ringpipe.chunk.id";
/// Registered name of [`ChunkCheck`].
pub const CHUNK_CHECK: &str = "ringpipe.chunk.check";

/// Backup side: sets a plain chunk's [`id`](crate::chunk::ChunkMeta::id) (BLAKE3 of
/// its bytes) and `raw_len`.
///
/// ```
/// use ringpipe_stages::{chunk::{chunk_frame, ChunkMeta}, hash::ChunkId};
/// # use ringpipe_engine::{Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::with_stage("id", ChunkId)).build().unwrap();
/// let out = p.submit(&chunk_frame(0, b"abc")).unwrap().wait().unwrap();
/// let (meta, _) = ChunkMeta::parse(&out).unwrap();
/// assert_eq!(meta.id, *blake3::hash(b"abc").as_bytes());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkId;

impl Stage for ChunkId {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let (mut meta, body) = ChunkMeta::parse(frame.bytes())?;
        meta.id = *blake3::hash(body).as_bytes();
        meta.raw_len = u32::try_from(body.len()).map_err(|_| "chunk over 4 GiB")?;
        set_meta(frame, &meta);
        Ok(())
    }
}

/// Restore side, [`ChunkId`]'s inverse: a plain chunk whose bytes do not hash to its
/// id fails with [`ChunkError::HashMismatch`] naming it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkCheck;

impl Stage for ChunkCheck {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let (meta, body) = ChunkMeta::parse(frame.bytes())?;
        if meta.codec != CODEC_NONE {
            return Err(
                ChunkError::WrongCodec { seq: meta.seq, found: meta.codec, expected: CODEC_NONE }.into()
            );
        }
        if blake3::hash(body).as_bytes() != &meta.id || body.len() != meta.raw_len as usize {
            return Err(ChunkError::HashMismatch { seq: meta.seq, id: meta.id_hex() }.into());
        }
        Ok(())
    }
}

register_plain!(ChunkId = CHUNK_ID, ChunkCheck = CHUNK_CHECK);
