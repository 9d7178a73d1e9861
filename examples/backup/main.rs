//! The flagship: a deduplicating, compressing, encrypting backup on ringpipe that
//! restores the tree exactly.
//!
//! ```text
//! cargo run --release --example backup                      # demo: generated tree, back up, restore, compare
//! cargo run --release --example backup -- backup [--allow-skipped] <dir> <archive>
//! cargo run --release --example backup -- restore <archive> <dir>
//! cargo run --release --example backup -- verify <archive>
//! ```
//!
//! The passphrase comes from `RINGPIPE_PASSPHRASE` (the demo uses a fixed one); the
//! archive key is derived from it with Argon2id and the archive's random salt.
//!
//! **What is kept** (`tree.rs`): regular files (content, permission bits, modification
//! time), directories, empty ones too (mode, modification time), symbolic links (their
//! target, unchanged; never followed), and hard links within the tree (restored as
//! links). Special files (devices, FIFOs, sockets) and anything that cannot be read
//! are reported by path with the reason at the end, and the exit status is 1 unless
//! `--allow-skipped` says that is expected. Owners and extended attributes are not
//! kept.
//!
//! **Backup** runs two pipelines. *Cut*: every file's blocks (up to 8 MiB each, read
//! straight into the pipeline's frames), as one stream, go through FastCDC
//! (`ringpipe.fastcdc`) and a stage that appends each chunk's BLAKE3 id, chained in
//! one worker process. A file no larger than FastCDC's smallest chunk (256 KiB) is
//! one chunk whatever its content, so the parent hashes it in place instead (most
//! files of a source tree are that small). The parent deduplicates by id and sends
//! each new chunk to *seal*: zstd-3 then AES-256-GCM, chained, on two worker
//! processes; a writer thread appends what comes out to the archive, in order.
//! The archive is written under a temporary name next to its destination, synced,
//! and renamed only once complete: a backup that fails (a full disk, say) leaves
//! nothing behind.
//!
//! **Restore** first opens and checks the index: a wrong passphrase, a damaged index,
//! or an entry that could land outside the target (`..`, an absolute path, a path
//! under a link) is refused before anything is written, and the target must be
//! empty or new. Then *open* (AES-256-GCM open, zstd decompress, BLAKE3 check against
//! the chunk id, chained on two sandboxed workers; each chunk read straight into its
//! frame) streams the chunks to two writer threads, which take the files in turn. A
//! file is written as `<name>.partial` and renamed once complete; hard
//! links and symbolic links come after every file, and directories get their mode
//! and time last.
//!
//! Chained, not one stage per process: on a 2-core machine, five workers meant a
//! wake (and a preemption of a compressor) at every hop; see `StageSpec::chain`.
//!
//! While it works it shows a progress bar with files and bytes (on a terminal); at
//! the end it prints each pipeline's per-stage table ([`Pipeline::stats`]).
//!
//! **Archive**: `RPARCH02`, the salt (16 bytes), then sealed frames (`u32` length +
//! bytes): first the data chunks, then the index in parts of up to 4 MiB, sealed
//! like the chunks (so file names, sizes and times are secret too). Last, the tail:
//! each index part's offset (`u64`) and length (`u32`), their count (`u32`) and
//! `RPTAIL02`. Only the index's size shows. An index part's id binds its place, so
//! a data chunk cannot pass for one.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod backup;
mod restore;
mod tree;

use backup::backup;
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
const MAGIC: &[u8; 8] = b"RPARCH02";
const TAIL_MAGIC: &[u8; 8] = b"RPTAIL02";
/// The largest chunk FastCDC cuts, and the largest index part.
const MAX_CHUNK: usize = 4 << 20;
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

fn main() -> ExitCode {
    ringpipe::worker_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        [] => demo(),
        ["backup", dir, archive] => backup_cmd(dir, archive, false),
        ["backup", "--allow-skipped", dir, archive] => backup_cmd(dir, archive, true),
        ["restore", archive, dir] => restore(Path::new(archive), Some(Path::new(dir))).map(|_| ()),
        ["verify", archive] => restore(Path::new(archive), None).map(|_| ()),
        _ => Err("usage: backup [backup [--allow-skipped] <dir> <archive> | restore <archive> <dir> | verify <archive>]"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Backs up, then lists what was skipped: an error unless `allow_skipped`.
fn backup_cmd(dir: &str, archive: &str, allow_skipped: bool) -> Result<(), Error> {
    let stats = backup(Path::new(dir), Path::new(archive))?;
    if stats.skipped.is_empty() {
        return Ok(());
    }
    eprintln!("skipped {} entries:", stats.skipped.len());
    for s in &stats.skipped {
        eprintln!("  {s}");
    }
    if allow_skipped {
        Ok(())
    } else {
        Err(format!(
            "{} entries were skipped (listed above); the archive holds the rest. \
             Pass --allow-skipped if that is expected",
            stats.skipped.len()
        )
        .into())
    }
}

/// An I/O error as a sentence naming what was being done to which path.
/// Costs nothing until there is an error (it is built for every write).
fn io_context<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |e| format!("{what} {}: {e}", path.display()).into()
}

fn passphrase() -> Vec<u8> {
    std::env::var("RINGPIPE_PASSPHRASE").unwrap_or_else(|_| "ringpipe demo passphrase".into()).into_bytes()
}

fn mb_s(bytes: u64, t: std::time::Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

/// A progress bar over `total` bytes of `files` files, drawn on standard error when it
/// is a terminal; its message counts files (see `file_done`).
fn progress(what: &str, total: u64, files: usize) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>8} [{bar:40}] {msg} files, {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    bar.set_message(format!("0/{files}"));
    bar
}

/// Counts file `done` (of `files`) on `bar`.
fn file_done(bar: &ProgressBar, done: usize, files: usize) {
    if !bar.is_hidden() {
        bar.set_message(format!("{done}/{files}"));
    }
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
    /// What it left out, and why.
    skipped: Vec<tree::Skipped>,
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
    // The kinds of entry a tree has besides files: an empty directory, an executable
    // script, links (to a file, a directory, outside the tree, nowhere), a hard link,
    // and an old modification time.
    let odd = dir.join("odd");
    std::fs::create_dir_all(odd.join("empty"))?;
    let script = odd.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho restored\n")?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::os::unix::fs::symlink("run.sh", odd.join("link-to-file"))?;
    std::os::unix::fs::symlink("../text", odd.join("link-to-dir"))?;
    std::os::unix::fs::symlink("/etc/hostname", odd.join("link-outside"))?;
    std::os::unix::fs::symlink("no-such-file", odd.join("dangling"))?;
    std::fs::hard_link(&script, odd.join("run-again.sh"))?;
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options().write(true).open(&script)?.set_modified(old)?;
    Ok(total)
}

/// Compares two trees entry by entry: kind, permission bits, modification time,
/// link targets, hard links, and every file's bytes. Returns the entries compared.
fn same_trees(a: &Path, b: &Path) -> Result<usize, Error> {
    let (wa, wb) = (tree::walk(a)?, tree::walk(b)?);
    if wa.entries.len() != wb.entries.len() {
        return Err(format!("{} entries backed up, {} restored", wa.entries.len(), wb.entries.len()).into());
    }
    for (ea, eb) in wa.entries.iter().zip(&wb.entries) {
        let name = ea.rel().display();
        let same_kind = match (&ea.kind, &eb.kind) {
            (tree::Kind::File { size: x, .. }, tree::Kind::File { size: y, .. }) => {
                x == y && std::fs::read(a.join(ea.rel()))? == std::fs::read(b.join(eb.rel()))?
            }
            (x, y) => x == y, // directories, link targets, hard links by entry number
        };
        if ea.path != eb.path || !same_kind || ea.mode != eb.mode || ea.mtime != eb.mtime {
            return Err(format!("{name} differs after restore: {ea:?} became {eb:?}").into());
        }
    }
    Ok(wa.entries.len())
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
        let stats = backup(&src, &archive)?;
        if !stats.skipped.is_empty() {
            return Err(format!("the demo tree has entries the backup skipped: {:?}", stats.skipped).into());
        }
        restore(&archive, None)?;
        restore(&archive, Some(&dst))?;
        let entries = same_trees(&src, &dst)?;
        println!("restored tree is identical: {entries} entries (content, modes, times, links)");
        Ok(())
    };
    let result = run();
    let _ = std::fs::remove_dir_all(&root);
    result
}
