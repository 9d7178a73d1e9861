//! Decompression bombs on the restore path (issue 16): sealed chunks whose zstd body
//! would decode to far more than the chunk holds, opened by the restore chain in its
//! sandbox ([`restore_sandbox`]). Each fails typed, naming the chunk, with no worker
//! lost; a decoder that allocates as it goes is stopped by the memory cap instead.

use ringpipe_engine::{register_stage, stage_fn, Chain, Frame, Pipeline, StageSpec, Violation};
use ringpipe_stages::chunk::{ChunkMeta, CODEC_ZSTD, META_LEN};
use ringpipe_stages::compress::Unzstd;
use ringpipe_stages::crypt::{Cipher, Key, Open, Seal, SealParams};
use ringpipe_stages::hash::ChunkCheck;
use ringpipe_stages::restore_sandbox;

ringpipe_engine::worker_test_entry!();

/// Frames of the restore chain in these tests.
const CAP: usize = 1 << 20;
/// What each bomb's chunk says it holds.
const RAW_LEN: u32 = 4096;

// A naive decoder: grows a buffer as long as the zstd stream goes on.
register_stage!("bomb.decode_all", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let body = f.bytes().get(META_LEN..).ok_or("no chunk meta")?;
    let plain = zstd::stream::decode_all(body)?;
    Err(format!("decoded {} bytes", plain.len()).into())
})));

fn sealing() -> SealParams {
    SealParams::new(Cipher::ChaCha20Poly1305, &Key::from_bytes([7; 32]), [9; 16])
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros. With `declared`, a
/// single-segment frame whose header states that content size; without, a frame of
/// unknown size with a 1 MiB window.
fn zstd_bomb(declared: Option<u64>, blocks: usize) -> Vec<u8> {
    let mut z = 0xFD2F_B528u32.to_le_bytes().to_vec();
    match declared {
        Some(size) => {
            z.push(0b1110_0000); // 8-byte content size, single segment
            z.extend_from_slice(&size.to_le_bytes());
        }
        None => z.extend_from_slice(&[0b0000_0000, 0b0101_0000]), // window 2^(10+10)
    }
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = last | (1 << 1) | ((128 << 10) << 3); // RLE block of 128 KiB
        z.extend_from_slice(&header.to_le_bytes()[..3]);
        z.push(0); // the byte repeated
    }
    z
}

/// The bomb as an archive's sealed chunk `seq`.
fn sealed_chunk(seq: u64, body: &[u8]) -> Vec<u8> {
    let meta = ChunkMeta { seq, id: [1; 32], raw_len: RAW_LEN, codec: CODEC_ZSTD };
    let mut frame = bytemuck::bytes_of(&meta).to_vec();
    frame.extend_from_slice(body);
    let seal =
        Pipeline::builder().stage(StageSpec::thread::<Seal>(sealing())).frame_capacity(CAP).build().unwrap();
    let sealed = seal.submit(&frame).unwrap().wait().unwrap().to_vec();
    assert!(seal.shutdown().was_graceful());
    sealed
}

/// The restore chain as the backup example builds it, in its sandbox.
fn restore_chain() -> Pipeline {
    let links = [Chain::link::<Open>(sealing()), Chain::link::<Unzstd>(()), Chain::link::<ChunkCheck>(())];
    let chain = StageSpec::chain(links).sandbox(restore_sandbox(CAP));
    Pipeline::builder().stage(chain).frame_capacity(CAP).build().unwrap()
}

#[test]
fn a_bomb_that_declares_its_size_is_refused_from_the_header() {
    let p = restore_chain();
    let err = p.submit(&sealed_chunk(3, &zstd_bomb(Some(1 << 40), 1))).unwrap().wait().unwrap_err();
    let failure = err.stage_failure().expect("a typed stage failure");
    assert!(failure.message.contains("chunk 3"), "{}", failure.message);
    assert!(failure.message.contains("declares 1099511627776 bytes"), "{}", failure.message);
    assert_eq!((failure.worker_died, failure.violation), (None, None));
    assert_eq!(p.restarts(), 0);
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_bomb_of_unknown_size_stops_at_the_frame() {
    let p = restore_chain();
    // 4000 blocks: 500 MiB of zeros from 16 KiB.
    let err = p.submit(&sealed_chunk(4, &zstd_bomb(None, 4000))).unwrap().wait().unwrap_err();
    let failure = err.stage_failure().expect("a typed stage failure");
    assert!(failure.message.contains("chunk 4") && failure.message.contains("zstd"), "{}", failure.message);
    assert_eq!((failure.worker_died, failure.violation), (None, None));
    assert_eq!(p.restarts(), 0);
    assert!(p.shutdown().was_graceful());
}

#[test]
fn a_decoder_that_allocates_is_stopped_by_the_memory_cap() {
    let sandbox = restore_sandbox(CAP);
    let cap = sandbox.memory_limit().unwrap();
    let naive = StageSpec::process_named("bomb.decode_all").sandbox(sandbox);
    let p = Pipeline::builder().stage(naive).frame_capacity(CAP).build().unwrap();
    let meta = ChunkMeta { seq: 5, id: [1; 32], raw_len: RAW_LEN, codec: CODEC_ZSTD };
    let frame = |body: &[u8]| [bytemuck::bytes_of(&meta), body].concat();
    // A small stream decodes (and the stage reports its size).
    let small = p.submit(&frame(&zstd_bomb(None, 2))).unwrap().wait().unwrap_err();
    assert!(small.stage_failure().unwrap().message.contains("decoded 262144 bytes"), "{small}");
    // 500 MiB does not fit under the cap: the worker dies, typed, and is replaced.
    let err = p.submit(&frame(&zstd_bomb(None, 4000))).unwrap().wait().unwrap_err();
    let failure = err.stage_failure().expect("a typed stage failure");
    assert_eq!(failure.violation, Some(Violation::MemoryCap { cap }), "{failure}");
    assert_eq!(p.restarts(), 1);
    let again = p.submit(&frame(&zstd_bomb(None, 1))).unwrap().wait().unwrap_err();
    assert!(again.stage_failure().unwrap().message.contains("decoded 131072 bytes"), "{again}");
    let report = p.shutdown();
    assert_eq!(report.failure, None);
}
