//! Issue 6's benchmark: the backup hot path (BLAKE3 id, zstd level 3, AES-256-GCM) on
//! 256 MiB of compressible text in 1 MiB chunks, against its peers in the same run.
//!
//! group `backup_hot_path`:
//! - `ringpipe`: the three stages from `ringpipe-stages` chained in one process stage
//!   (`StageSpec::chain`: id, zstd-3, seal) on two replicas; the parent submits chunk
//!   frames and drops the sealed results;
//! - `ringpipe_sandboxed`: `ringpipe` with the chain's workers in `Sandbox::strict()`
//!   (the sandbox costs nothing per item: it is applied once, at the worker's start);
//! - `ringpipe_3stage`: the same stages as three process stages (id, zstd-3 on two
//!   replicas, seal): four workers on two cores, so every hop's wake preempts a
//!   zstd replica (about 1,800 context switches a second against rayon's 120);
//! - `sequential`: the same three calls in one loop on one thread;
//! - `rayon`: the same work with `par_iter` on a 2-thread pool.
//!
//! zstd-3 runs about 240 MB/s and AES-256-GCM about 3.3 GB/s on one core here, so
//! two cores can at best do about 445 MB/s; the target is `ringpipe` >= 1.85x
//! `sequential` and no slower than `rayon`.
//!
//! It prints ringpipe's per-stage table at the end (on standard error).
//!
//! Run: `cargo bench --bench backup`. Workers re-execute this binary: `main` calls
//! the hook first.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use rayon::prelude::*;
use ringpipe::stages::chunk::{chunk_frame, ChunkMeta, META_LEN};
use ringpipe::stages::compress::Zstd;
use ringpipe::stages::crypt::{Cipher, Key, Seal, SealParams, TAG_LEN};
use ringpipe::stages::hash::ChunkId;
use ringpipe::{Chain, Pipeline, Sandbox, StageSpec};

const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 256;
const SALT: [u8; 16] = [9; 16];

fn main() {
    ringpipe::worker_hook();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(12))
        .configure_from_args();
    backup_hot_path(&mut c);
    c.final_summary();
}

/// Compressible text (about 3:1 under zstd-3), different in every chunk.
fn corpus() -> Vec<Vec<u8>> {
    const WORDS: &[&str] =
        &["ring", "buffer", "pipeline", "stage", "the", "of", "chunk", "backup", "fast", "a"];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..CHUNKS)
        .map(|seq| {
            let mut text = Vec::with_capacity(CHUNK + 16);
            while text.len() < CHUNK {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
                text.push(if x % 11 == 0 { b'\n' } else { b' ' });
            }
            text.truncate(CHUNK);
            chunk_frame(seq as u64, &text)
        })
        .collect()
}

/// The hot path on one chunk frame, in one thread: what each pipeline stage does.
fn by_hand(frame: &[u8], z: &mut zstd::bulk::Compressor<'_>, aead: &aes_gcm::Aes256Gcm) -> usize {
    use aes_gcm::aead::AeadInPlace;
    let (meta, body) = ChunkMeta::parse(frame).unwrap();
    let id = blake3::hash(body);
    let mut out = z.compress(body).unwrap();
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&meta.seq.to_be_bytes());
    let tag = aead.encrypt_in_place_detached(&nonce.into(), id.as_bytes(), &mut out).unwrap();
    out.len() + tag.len()
}

fn backup_hot_path(c: &mut Criterion) {
    let chunks = corpus();
    let key = Key::from_bytes([7; 32]);
    let sealing = SealParams::new(Cipher::Aes256Gcm, &key, SALT);
    let chain = |sandbox: Option<Sandbox>| {
        let links =
            [Chain::link::<ChunkId>(()), Chain::link::<Zstd>(3), Chain::link::<Seal>(sealing.clone())];
        let mut stage = StageSpec::chain(links).replicas(2);
        if let Some(sandbox) = sandbox {
            stage = stage.sandbox(sandbox);
        }
        Pipeline::builder()
            .stage(stage)
            .frame_capacity(META_LEN + Zstd::max_output(CHUNK) + TAG_LEN)
            // 16, not 8: at 8 the per-stage table showed the zstd replicas starved 12%
            // of the time (the parent refills `map`'s window half a window at a time).
            .max_in_flight(16)
            .build()
            .unwrap()
    };
    let chained = chain(None);
    let sandboxed = chain(Some(Sandbox::strict()));
    let three = Pipeline::builder()
        .stage(StageSpec::process::<ChunkId>(()))
        .stage(StageSpec::process::<Zstd>(3).replicas(2))
        .stage(StageSpec::process::<Seal>(sealing))
        .frame_capacity(META_LEN + Zstd::max_output(CHUNK) + TAG_LEN)
        .max_in_flight(16)
        .build()
        .unwrap();
    // The peers seal under a fixed key (the key derivation is not part of the hot path).
    let aead = {
        use aes_gcm::KeyInit;
        aes_gcm::Aes256Gcm::new(&[7u8; 32].into())
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut g = c.benchmark_group("backup_hot_path");
    g.throughput(Throughput::Bytes((CHUNK * CHUNKS) as u64));
    let run = |pipeline: &Pipeline| {
        let mut sealed = 0;
        for out in pipeline.map(&chunks) {
            let out = out.unwrap();
            sealed += out.len();
        }
        sealed
    };
    g.bench_function("ringpipe", |b| b.iter(|| run(&chained)));
    g.bench_function("ringpipe_sandboxed", |b| b.iter(|| run(&sandboxed)));
    g.bench_function("ringpipe_3stage", |b| b.iter(|| run(&three)));
    g.bench_function("sequential", |b| {
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        b.iter(|| chunks.iter().map(|f| by_hand(f, &mut z, &aead)).sum::<usize>())
    });
    g.bench_function("rayon", |b| {
        b.iter(|| {
            pool.install(|| {
                chunks
                    .par_iter()
                    .map_init(|| zstd::bulk::Compressor::new(3).unwrap(), |z, f| by_hand(f, z, &aead))
                    .sum::<usize>()
            })
        })
    });
    g.finish();
    // Where ringpipe's time went (all of this run's samples and warm-ups together).
    for (name, p) in [("ringpipe", chained), ("ringpipe_sandboxed", sandboxed), ("ringpipe_3stage", three)] {
        eprintln!("{name}, per stage:\n{}", p.stats());
        assert!(p.shutdown().failure.is_none());
    }
}
