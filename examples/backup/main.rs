//! The flagship: a deduplicating, compressing, encrypting backup on ringpipe.
//!
//! ```text
//! cargo run --release --example backup                      # demo: generated corpus, back up, restore, compare
//! cargo run --release --example backup -- backup <dir> <archive>
//! cargo run --release --example backup -- restore <archive> <dir>
//! cargo run --release --example backup -- verify <archive>
//! ```
//!
//! The passphrase comes from `RINGPIPE_PASSPHRASE` (the demo uses a fixed one); the
//! archive key is derived from it with Argon2id and the archive's random salt.
//!
//! Backup runs two pipelines. **Cut**: every file's blocks (up to 8 MiB each), as
//! one stream, go through FastCDC (`ringpipe.fastcdc`) and a stage that appends each
//! chunk's BLAKE3 id, chained in one worker process. The parent deduplicates by id
//! and sends each new chunk to **seal**: zstd-3 then AES-256-GCM, chained, on two
//! worker processes; a writer thread appends what comes out to the archive, in order.
//! Restore runs **open**: AES-256-GCM open, zstd decompress, BLAKE3 check against
//! the chunk id, chained on two workers, with a writer thread. A chunk that fails is
//! reported by number, and nothing is written from it: a file is written as
//! `<name>.partial` and renamed only once complete.
//!
//! Chained, not one stage per process: on a 2-core machine, five workers meant a
//! wake (and a preemption of a compressor) at every hop; see `StageSpec::chain`.
//!
//! While it works it shows a progress bar with bytes/s (on a terminal); at the end
//! it prints each pipeline's per-stage table ([`Pipeline::stats`]): items, bytes in
//! and out, busy/starved/blocked time, and which stage was the bottleneck.
//!
//! Archive: `RPARCH01`, salt (16), then sealed chunk frames (`u32` length + bytes),
//! then the index (files: path, size, chunk numbers; chunks: offset, length), then
//! the index's offset and `RPINDEX1`. The index is not encrypted (names and sizes
//! show): a real tool would seal it too.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod backup;
mod restore;

use backup::{backup, walk};
use restore::restore;

use indicatif::{ProgressBar, ProgressStyle};

use ringpipe::stages::cdc::{cuts, Chunker};
use ringpipe::stages::chunk::{ChunkMeta, CODEC_NONE, META_LEN};
use ringpipe::stages::compress::{Unzstd, Zstd};
use ringpipe::stages::crypt::{random_salt, Cipher, Key, Open, Seal, SealParams, SALT_LEN, TAG_LEN};
use ringpipe::stages::hash::ChunkCheck;
use ringpipe::stages::restore_sandbox;
use ringpipe::{register_stage, stage_fn, Chain, Frame, ItemError, Pipeline, StageSpec};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of file read per cut item.
const BLOCK: usize = 8 << 20;
const MAGIC: &[u8; 8] = b"RPARCH01";
const INDEX_MAGIC: &[u8; 8] = b"RPINDEX1";
const CIPHER: Cipher = Cipher::Aes256Gcm;
const LEVEL: i32 = 3;

// After FastCDC: appends the BLAKE3 id of each chunk (32 bytes each), then their
// count (u32 LE). The frame is then [data][cut list][ids][count]; see `ids_of`.
register_stage!("backup.ids", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let ids: Vec<[u8; 32]> =
        cuts(f.bytes())?.into_iter().map(|r| *blake3::hash(&f.bytes()[r]).as_bytes()).collect();
    let n = f.len();
    f.set_len(n + 32 * ids.len() + 4)?;
    let out = &mut f.bytes_mut()[n..];
    for (dst, id) in out.chunks_exact_mut(32).zip(&ids) {
        dst.copy_from_slice(id);
    }
    let end = out.len();
    out[end - 4..].copy_from_slice(&(ids.len() as u32).to_le_bytes());
    Ok(())
})));

/// One chunk of a cut block: its range in the block and its id.
type Cut = (std::ops::Range<usize>, [u8; 32]);

/// A cut block's chunks.
fn ids_of(block: &[u8]) -> Result<Vec<Cut>, Error> {
    let n = u32::from_le_bytes(block.get(block.len().wrapping_sub(4)..).ok_or("short block")?.try_into()?)
        as usize;
    let ids_at = block.len().checked_sub(4 + 32 * n).ok_or("block too short for its ids")?;
    let ranges = cuts(&block[..ids_at])?;
    if ranges.len() != n {
        return Err(format!("{} cuts but {n} ids", ranges.len()).into());
    }
    Ok(ranges
        .into_iter()
        .enumerate()
        .map(|(k, r)| (r, block[ids_at + 32 * k..][..32].try_into().expect("32")))
        .collect())
}

fn main() -> Result<(), Error> {
    ringpipe::worker_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        [] => demo(),
        ["backup", dir, archive] => backup(Path::new(dir), Path::new(archive)).map(|_| ()),
        ["restore", archive, dir] => restore(Path::new(archive), Some(Path::new(dir))).map(|_| ()),
        ["verify", archive] => restore(Path::new(archive), None).map(|_| ()),
        _ => {
            Err("usage: backup [backup <dir> <archive> | restore <archive> <dir> | verify <archive>]".into())
        }
    }
}

fn passphrase() -> Vec<u8> {
    std::env::var("RINGPIPE_PASSPHRASE").unwrap_or_else(|_| "ringpipe demo passphrase".into()).into_bytes()
}

fn mb_s(bytes: u64, t: std::time::Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

/// A progress bar over `total` bytes, drawn on standard error when it is a terminal.
fn progress(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    bar
}

/// Prints a pipeline's per-stage table.
fn report(name: &str, p: &Pipeline) {
    println!("\n{name} pipeline, per stage:\n{}", p.stats());
}

/// What a backup did.
struct Stats {
    bytes: u64,
    chunks: u64,
    unique: u64,
    archive: u64,
}

/// A corpus of mixed files: text, random, and duplicates (whole and in part).
fn generate(dir: &Path, target: u64) -> Result<u64, Error> {
    const WORDS: &[&str] = &[
        "ring", "buffer", "pipeline", "stage", "worker", "process", "memory", "shared", "chunk", "backup",
        "restore", "compress", "encrypt", "frame", "slot", "the", "a", "of", "and", "to", "in", "is", "fast",
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut total = 0u64;
    let mut texts: Vec<PathBuf> = Vec::new();
    let mut i = 0;
    while total < target {
        let kind = i % 10;
        let size = 64 * 1024 + (rnd() % (2 << 20)) as usize;
        let sub = dir.join(
            ["text", "random", "dup"][match kind {
                0..=5 => 0,
                6 | 7 => 1,
                _ => 2,
            }],
        );
        std::fs::create_dir_all(&sub)?;
        let path = sub.join(format!("f{i:05}"));
        let bytes: Vec<u8> = match kind {
            0..=5 => {
                let mut s = Vec::with_capacity(size + 16);
                while s.len() < size {
                    s.extend_from_slice(WORDS[(rnd() % WORDS.len() as u64) as usize].as_bytes());
                    s.push(if rnd() % 12 == 0 { b'\n' } else { b' ' });
                }
                s
            }
            6 | 7 => (0..size / 8).flat_map(|_| rnd().to_le_bytes()).collect(),
            _ if texts.is_empty() => vec![b'x'; size],
            _ => {
                // A copy of an earlier text file with a few bytes changed at the front.
                let mut s = std::fs::read(&texts[(rnd() % texts.len() as u64) as usize])?;
                s.splice(0..0, format!("edited copy {i}\n").into_bytes());
                s
            }
        };
        std::fs::write(&path, &bytes)?;
        if kind <= 5 {
            texts.push(path);
        }
        total += bytes.len() as u64;
        i += 1;
    }
    Ok(total)
}

/// Compares two trees byte for byte.
fn same_trees(a: &Path, b: &Path) -> Result<u64, Error> {
    let (fa, fb) = (walk(a)?, walk(b)?);
    if fa.iter().map(|f| &f.0).ne(fb.iter().map(|f| &f.0)) {
        return Err("restored tree lists other files".into());
    }
    let mut n = 0;
    for ((rel, pa), (_, pb)) in fa.iter().zip(&fb) {
        if std::fs::read(pa)? != std::fs::read(pb)? {
            return Err(format!("{rel} differs after restore").into());
        }
        n += 1;
    }
    Ok(n)
}

fn demo() -> Result<(), Error> {
    let root = std::env::temp_dir().join(format!("ringpipe-backup-demo-{}", std::process::id()));
    let run = || -> Result<(), Error> {
        let (src, dst, archive) = (root.join("src"), root.join("restored"), root.join("archive.rpa"));
        let made = generate(&src, 320 << 20)?;
        println!(
            "corpus: {:.1} MiB of text, random and duplicated files in {}",
            made as f64 / 1048576.0,
            src.display()
        );
        backup(&src, &archive)?;
        restore(&archive, None)?;
        restore(&archive, Some(&dst))?;
        let files = same_trees(&src, &dst)?;
        println!("restored tree is byte-identical: {files} files");
        Ok(())
    };
    let result = run();
    let _ = std::fs::remove_dir_all(&root);
    result
}
