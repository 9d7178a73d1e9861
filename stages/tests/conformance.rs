//! The conformance suite every ready-made stage passes, as a thread stage, as a process
//! stage and as a sandboxed process stage: round trip through its inverse, empty input, a 1-byte input, the
//! largest input its frame allows, and corrupted input on the inverse side (a typed
//! error naming the chunk, nothing passed on as good).
//!
//! A restore chain ends with `ChunkCheck` (BLAKE3 against the chunk's id): that is
//! what catches a corrupted compressed body that still decodes, so the suite runs
//! each decompressor's inverse side with it, as a restore does.

use ringpipe_engine::{ItemError, Pipeline, Registered, Sandbox, Stage, StageSpec};
use ringpipe_stages::cdc::{Chunker, Unchunk};
use ringpipe_stages::chunk::{chunk_frame, ChunkMeta, META_LEN};
use ringpipe_stages::compress::{Lz4, Unlz4, Unzstd, Zstd};
use ringpipe_stages::crypt::{self, Cipher, Key, Open, Seal, SealParams};
use ringpipe_stages::hash::{ChunkCheck, ChunkId};

ringpipe_engine::worker_test_entry!();

/// Frame capacity for the suite: 1 MiB.
const CAP: usize = 1 << 20;

/// One stage and its inverse, described both ways.
struct Case {
    name: &'static str,
    /// Stages before the one under test (to make its input), on threads.
    prepare: fn() -> Vec<StageSpec>,
    forward: fn(place: Place) -> StageSpec,
    inverse: fn(place: Place) -> Vec<StageSpec>,
    /// Bytes the forward stage may add to an input of `n` bytes (the frame must hold them).
    growth: fn(n: usize) -> usize,
    /// Chunk frames (meta + body) or raw blocks.
    chunks: bool,
    /// What a corruption error says.
    corrupt_says: &'static str,
}

const KEY: [u8; 32] = [0x5a; 32];
const SALT: [u8; 16] = [0xc3; 16];

/// Where the suite runs a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Thread,
    Process,
    /// A worker process in `Sandbox::strict()` with a 64 MiB memory cap.
    Sandboxed,
}

/// Stage `S` where `place` says, built from `params`.
fn pick<S: Registered + Stage>(place: Place, params: S::Params) -> StageSpec {
    match place {
        Place::Thread => StageSpec::thread::<S>(params),
        Place::Process => StageSpec::process::<S>(params),
        Place::Sandboxed => StageSpec::process::<S>(params).sandbox(Sandbox::strict().memory_cap(64 << 20)),
    }
}

fn id() -> Vec<StageSpec> {
    vec![StageSpec::with_stage("id", ChunkId)]
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "fastcdc",
            prepare: Vec::new,
            forward: |p| pick::<Chunker>(p, Chunker::new(4096, 16384, 65536)),
            inverse: |p| vec![pick::<Unchunk>(p, ())],
            growth: |n| Chunker::new(4096, 16384, 65536).overhead(n),
            chunks: false,
            corrupt_says: "cut",
        },
        Case {
            name: "blake3 id",
            prepare: Vec::new,
            forward: |p| pick::<ChunkId>(p, ()),
            inverse: |p| vec![pick::<ChunkCheck>(p, ())],
            growth: |_| 0,
            chunks: true,
            corrupt_says: "do not hash to its id",
        },
        Case {
            name: "zstd",
            prepare: id,
            forward: |p| pick::<Zstd>(p, 3),
            inverse: |p| vec![pick::<Unzstd>(p, ()), pick::<ChunkCheck>(p, ())],
            growth: |n| Zstd::max_output(n) - n,
            chunks: true,
            corrupt_says: "chunk 5",
        },
        Case {
            name: "lz4",
            prepare: id,
            forward: |p| pick::<Lz4>(p, ()),
            inverse: |p| vec![pick::<Unlz4>(p, ()), pick::<ChunkCheck>(p, ())],
            growth: |n| Lz4::max_output(n) - n,
            chunks: true,
            corrupt_says: "chunk 5",
        },
        Case {
            name: "aes-256-gcm",
            prepare: id,
            forward: |p| pick::<Seal>(p, SealParams::new(Cipher::Aes256Gcm, &Key::from_bytes(KEY), SALT)),
            inverse: |p| {
                vec![pick::<Open>(p, SealParams::new(Cipher::Aes256Gcm, &Key::from_bytes(KEY), SALT))]
            },
            growth: |_| crypt::TAG_LEN,
            chunks: true,
            corrupt_says: "authentication failed",
        },
        Case {
            name: "chacha20-poly1305",
            prepare: id,
            forward: |p| {
                pick::<Seal>(p, SealParams::new(Cipher::ChaCha20Poly1305, &Key::from_bytes(KEY), SALT))
            },
            inverse: |p| {
                vec![pick::<Open>(p, SealParams::new(Cipher::ChaCha20Poly1305, &Key::from_bytes(KEY), SALT))]
            },
            growth: |_| crypt::TAG_LEN,
            chunks: true,
            corrupt_says: "authentication failed",
        },
    ]
}

/// Mixed bytes: compressible runs and noise.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 4096) % 2 == 0 {
                b"the quick brown fox "[i % 20]
            } else {
                x as u8
            }
        })
        .collect()
}

fn build(stages: Vec<StageSpec>) -> Pipeline {
    Pipeline::builder().stages(stages).frame_capacity(CAP).max_in_flight(4).build().unwrap()
}

fn run(p: &Pipeline, input: &[u8]) -> Result<Vec<u8>, String> {
    let out = p.submit(input).unwrap().wait().or_else(ItemError::into_output).unwrap();
    match out.failure() {
        Some(f) => Err(f.message.clone()),
        None => Ok(out.to_vec()),
    }
}

fn conformance(case: &Case, place: Place) {
    let what = format!("{} as a {place:?} stage", case.name);
    let mut fwd = (case.prepare)();
    fwd.push((case.forward)(place));
    let forward = build(fwd);
    let inverse = build((case.inverse)(place));
    let frame = |body: &[u8]| if case.chunks { chunk_frame(5, body) } else { body.to_vec() };
    let body_of =
        |bytes: &[u8]| if case.chunks { ChunkMeta::parse(bytes).unwrap().1.to_vec() } else { bytes.to_vec() };
    let meta = if case.chunks { META_LEN } else { 0 };
    let mut largest = CAP - meta;
    while largest + (case.growth)(largest) > CAP - meta {
        largest -= 1024;
    }
    for (label, body) in
        [("empty", vec![]), ("1 byte", vec![42]), ("mixed", data(200_000, 7)), ("largest", data(largest, 9))]
    {
        let sealed =
            run(&forward, &frame(&body)).unwrap_or_else(|e| panic!("{what}, {label}: forward failed: {e}"));
        let back = run(&inverse, &sealed).unwrap_or_else(|e| panic!("{what}, {label}: inverse failed: {e}"));
        assert_eq!(body_of(&back), body, "{what}, {label}: round trip");
        // Corrupt what the forward stage wrote: one byte of the body, or of the cut list.
        if !body.is_empty() || !case.chunks {
            let mut bad = sealed.clone();
            let at = if case.chunks { meta + (bad.len() - meta) / 2 } else { bad.len() - 4 };
            bad[at] ^= 0x40;
            match run(&inverse, &bad) {
                Err(msg) => assert!(msg.contains(case.corrupt_says), "{what}, {label}: {msg}"),
                Ok(_) if label == "empty" => {} // the cut list of nothing has no byte that matters
                Ok(out) => panic!("{what}, {label}: corruption passed as good ({} bytes)", out.len()),
            }
        }
    }
    assert!(forward.shutdown().failure.is_none() && inverse.shutdown().failure.is_none());
}

#[test]
fn every_stage_conforms_as_a_thread_stage() {
    for case in cases() {
        conformance(&case, Place::Thread);
    }
}

#[test]
fn every_stage_conforms_as_a_process_stage() {
    for case in cases() {
        conformance(&case, Place::Process);
    }
}

/// As a restore runs them: every stage and its inverse in sandboxed workers. A
/// violation would kill the worker and fail the round trip.
#[test]
fn every_stage_conforms_in_a_sandboxed_process() {
    for case in cases() {
        conformance(&case, Place::Sandboxed);
    }
}

#[test]
fn a_key_comes_from_a_passphrase_or_a_32_byte_file() {
    let salt = [1u8; 16];
    let a = Key::from_passphrase(b"correct horse", &salt).unwrap();
    let b = Key::from_passphrase(b"correct horse", &salt).unwrap();
    let c = Key::from_passphrase(b"correct horse", &[2u8; 16]).unwrap();
    let seal = |k: &Key| {
        let p = build(vec![
            StageSpec::with_stage("id", ChunkId),
            StageSpec::with_stage("s", Seal::new(Cipher::Aes256Gcm, k, SALT)),
        ]);
        run(&p, &chunk_frame(0, b"payload")).unwrap()
    };
    assert_eq!(seal(&a), seal(&b), "same passphrase and salt, same key");
    assert_ne!(seal(&a), seal(&c), "another salt, another key");
    let dir = std::env::temp_dir().join(format!("ringpipe-key-{}", std::process::id()));
    std::fs::write(&dir, [3u8; 32]).unwrap();
    assert!(Key::from_file(&dir).is_ok());
    std::fs::write(&dir, [3u8; 31]).unwrap();
    assert!(matches!(Key::from_file(&dir), Err(crypt::KeyError::BadKeyFile { len: 31 })));
    std::fs::remove_file(&dir).unwrap();
    assert!(matches!(Key::from_file(&dir), Err(crypt::KeyError::Io(_))));
}

#[test]
fn a_chunk_under_another_id_or_another_archive_does_not_open() {
    let k = Key::from_bytes(KEY);
    let sealer = build(vec![
        StageSpec::with_stage("id", ChunkId),
        StageSpec::with_stage("s", Seal::new(Cipher::Aes256Gcm, &k, SALT)),
    ]);
    let sealed = run(&sealer, &chunk_frame(3, b"some chunk")).unwrap();
    // The id is the associated data: moved under another id, it fails.
    let mut moved = sealed.clone();
    moved[8] ^= 1;
    let opener = build(vec![StageSpec::with_stage("o", Open::new(Cipher::Aes256Gcm, &k, SALT))]);
    let err = run(&opener, &moved).unwrap_err();
    assert!(err.contains("chunk 3") && err.contains("authentication failed"), "{err}");
    // Another archive (salt) derives another key.
    let other = build(vec![StageSpec::with_stage("o", Open::new(Cipher::Aes256Gcm, &k, [0; 16]))]);
    assert!(run(&other, &sealed).is_err());
    assert!(run(&opener, &sealed).is_ok());
}
