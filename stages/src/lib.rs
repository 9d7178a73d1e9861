//! Ready-made ringpipe stages for backup hot paths, on the field's standard crates.
//!
//! Each stage is registered, typed through [`Registered`](ringpipe_engine::Registered),
//! so it runs in worker processes, with replicas:
//! `StageSpec::process::<Zstd>(3).replicas(2)`,
//! `StageSpec::process::<Seal>(SealParams::new(cipher, &key, salt))`, or as a link of a
//! chain: `StageSpec::chain([Chain::link::<Zstd>(3), Chain::link::<Seal>(sealing)])`.
//! Each is also a plain
//! [`Stage`](ringpipe_engine::Stage) value (so it runs on a thread:
//! `StageSpec::with_stage("zstd", Zstd::new(3))`). Each has its inverse for restore.
//!
//! | module | backup | restore |
//! |---|---|---|
//! | [`cdc`] | [`Chunker`](cdc::Chunker) (FastCDC cut list) | [`Unchunk`](cdc::Unchunk) |
//! | [`hash`] | [`ChunkId`](hash::ChunkId) (BLAKE3 id) | [`ChunkCheck`](hash::ChunkCheck) |
//! | [`compress`] | [`Zstd`](compress::Zstd), [`Lz4`](compress::Lz4) | [`Unzstd`](compress::Unzstd), [`Unlz4`](compress::Unlz4) |
//! | [`crypt`] | [`Seal`](crypt::Seal) (AES-256-GCM, ChaCha20-Poly1305) | [`Open`](crypt::Open) |
//!
//! Chunk stages read and write a [chunk frame](chunk): a [`ChunkMeta`](chunk::ChunkMeta)
//! (sequence number, id, raw length, codec) followed by the chunk's bytes. A restore
//! stage that finds a chunk corrupt fails it with a [`ChunkError`](chunk::ChunkError)
//! naming the chunk.
#![deny(missing_docs)]

use ringpipe_engine::Sandbox;

/// Registers stages that take no parameters: each is a unit struct, built as itself,
/// under its name constant (`register_plain!(Unzstd = UNZSTD, Lz4 = LZ4)`).
macro_rules! register_plain {
    ($($stage:ident = $name:expr),+ $(,)?) => {
        $(
            impl ringpipe_engine::Registered for $stage {
                const NAME: &'static str = $name;
                type Params = ();
                fn from_params((): ()) -> Result<Self, ringpipe_engine::BoxError> {
                    Ok($stage)
                }
            }
        )+
        ringpipe_engine::register!($($stage),+);
    };
}

/// Private memory a restore stage needs besides its frames: the runtime, a zstd
/// decoding context (about 160 KiB), cipher state. 64 MiB, with room to spare.
pub const RESTORE_BASE_MEMORY: u64 = 64 << 20;

/// The sandbox the inverse stages ([`Open`](crypt::Open), [`Unzstd`](compress::Unzstd),
/// [`Unlz4`](compress::Unlz4), [`ChunkCheck`](hash::ChunkCheck),
/// [`Unchunk`](cdc::Unchunk)) run in when they read an archive from elsewhere:
/// [`Sandbox::strict`] with a memory cap of [`RESTORE_BASE_MEMORY`] plus four frames
/// of `frame_capacity` bytes. They decode into the frame itself, so a decompression
/// bomb meets the frame's bound first and the cap only backs it up.
///
/// ```
/// let sandbox = ringpipe_stages::restore_sandbox(1 << 20);
/// assert_eq!(sandbox.memory_limit(), Some(ringpipe_stages::RESTORE_BASE_MEMORY + (4 << 20)));
/// ```
pub fn restore_sandbox(frame_capacity: usize) -> Sandbox {
    Sandbox::strict().memory_cap(RESTORE_BASE_MEMORY + 4 * frame_capacity as u64)
}

pub mod cdc;
pub mod chunk;
pub mod compress;
pub mod crypt;
pub mod hash;
