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

use indicatif::{ProgressBar, ProgressStyle};

use ringpipe::stages::cdc::{self, cuts, Chunker};
use ringpipe::stages::chunk::{ChunkMeta, CODEC_NONE, META_LEN};
use ringpipe::stages::compress::{self, Zstd};
use ringpipe::stages::crypt::{self, random_salt, Cipher, Key, Seal, SALT_LEN, TAG_LEN};
use ringpipe::stages::hash;
use ringpipe::{register_stage, stage_fn, Frame, ItemError, Pipeline, StageSpec};

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

/// Every regular file under `root`, sorted, as (relative path, full path).
fn walk(root: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
                out.push((rel, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The archive's sealed chunks as the writer thread left them: where each starts
/// (after its length word) and how long it is, and the offset after the last.
type Written = (BufWriter<File>, Vec<(u64, u32)>, u64);

fn backup(dir: &Path, archive: &Path) -> Result<Stats, Error> {
    let start = Instant::now();
    let files = walk(dir)?;
    let chunker = Chunker::default();
    let cut = Pipeline::builder()
        .stage(StageSpec::chain([(cdc::CHUNKER, &chunker.params()[..]), ("backup.ids", &[][..])]))
        .frame_capacity(BLOCK + chunker.overhead(BLOCK) + 32 * (BLOCK / (256 << 10) + 2) + 4)
        .max_in_flight(6)
        .build()?;
    let salt = random_salt()?;
    let key = Key::from_passphrase(&passphrase(), &salt)?;
    let max_chunk = 4 << 20;
    let sealing = Seal::params(CIPHER, &key, salt);
    let seal = Pipeline::builder()
        .stage(
            StageSpec::chain([(compress::ZSTD, &Zstd::params(LEVEL)[..]), (crypt::SEAL, &sealing)])
                .replicas(2),
        )
        .frame_capacity(META_LEN + Zstd::max_output(max_chunk) + TAG_LEN)
        .max_in_flight(16)
        .build()?;
    let mut out = BufWriter::with_capacity(4 << 20, File::create(archive)?);
    out.write_all(MAGIC)?;
    out.write_all(&salt)?;
    let listed: u64 =
        files.iter().map(|(_, path)| std::fs::metadata(path).map(|m| m.len())).sum::<Result<_, _>>()?;
    let bar = progress("backup", listed);

    // Every file's blocks, in order, read as the cut pipeline takes them. `owner`
    // says whose each block is (outputs come back in input order).
    let owner = RefCell::new(VecDeque::new());
    let mut read_error = None;
    let mut open_files = files.iter().enumerate();
    let mut reading: Option<(usize, File)> = None;
    let blocks = std::iter::from_fn(|| loop {
        let (i, file) = match &mut reading {
            Some(r) => r,
            None => {
                let (i, (rel, path)) = open_files.next()?;
                match File::open(path) {
                    Ok(f) => reading.insert((i, f)),
                    Err(e) => {
                        read_error = Some(format!("opening {rel}: {e}"));
                        return None;
                    }
                }
            }
        };
        let mut buf = Vec::with_capacity(BLOCK);
        match file.take(BLOCK as u64).read_to_end(&mut buf) {
            Ok(0) => reading = None,
            Ok(_) => {
                owner.borrow_mut().push_back(*i);
                return Some(buf);
            }
            Err(e) => {
                read_error = Some(format!("reading {}: {e}", files[*i].0));
                return None;
            }
        }
    });

    let mut stats = Stats { bytes: 0, chunks: 0, unique: 0, archive: 0 };
    let mut refs: Vec<Vec<u32>> = vec![Vec::new(); files.len()];
    // Bytes actually read per file (the index records these, not the listed sizes).
    let mut sizes: Vec<u64> = vec![0; files.len()];
    let (out, table, index_at) = std::thread::scope(|s| -> Result<Written, Error> {
        // New chunks go to `seal` as they are found; this thread appends what comes
        // out, in order (chunk numbers are positions in the archive).
        let (tx, rx) = std::sync::mpsc::sync_channel::<ringpipe::Ticket>(64);
        let writer = s.spawn(move || -> Result<Written, Error> {
            let mut offset = (MAGIC.len() + SALT_LEN) as u64;
            let mut table = Vec::new();
            for ticket in rx {
                let sealed = ticket.wait().map_err(|e| format!("sealing chunk {}: {e}", table.len()))?;
                out.write_all(&(sealed.len() as u32).to_le_bytes())?;
                out.write_all(&sealed)?;
                table.push((offset + 4, sealed.len() as u32));
                offset += 4 + sealed.len() as u64;
            }
            Ok((out, table, offset))
        });
        let mut known: HashMap<[u8; 32], u32> = HashMap::new();
        let found = (|| -> Result<(), Error> {
            for block in cut.map(blocks) {
                let file = owner.borrow_mut().pop_front().expect("one owner per block");
                let block = block.map_err(|e| format!("{}: {e}", files[file].0))?;
                for (r, id) in ids_of(&block)? {
                    stats.chunks += 1;
                    sizes[file] += r.len() as u64;
                    bar.inc(r.len() as u64);
                    let next = known.len() as u32;
                    let seq = *known.entry(id).or_insert(next);
                    if seq == next {
                        let meta =
                            ChunkMeta { seq: next.into(), id, raw_len: r.len() as u32, codec: CODEC_NONE };
                        let mut frame = seal.alloc(META_LEN + r.len())?;
                        frame[..META_LEN].copy_from_slice(bytemuck::bytes_of(&meta));
                        frame[META_LEN..].copy_from_slice(&block[r]);
                        if tx.send(frame.submit()?).is_err() {
                            break; // the writer failed: its error says why
                        }
                    }
                    refs[file].push(seq);
                }
            }
            Ok(())
        })();
        drop(tx);
        let written = writer.join().expect("the writer thread does not panic");
        found?;
        written
    })?;
    bar.finish_and_clear();
    if let Some(e) = read_error {
        return Err(e.into());
    }
    let mut out = out;
    stats.bytes = sizes.iter().sum();
    stats.unique = table.len() as u64;
    // The index.
    out.write_all(&(files.len() as u64).to_le_bytes())?;
    for (((rel, _), size), refs) in files.iter().zip(&sizes).zip(&refs) {
        out.write_all(&(rel.len() as u32).to_le_bytes())?;
        out.write_all(rel.as_bytes())?;
        out.write_all(&size.to_le_bytes())?;
        out.write_all(&(refs.len() as u32).to_le_bytes())?;
        refs.iter().try_for_each(|r| out.write_all(&r.to_le_bytes()))?;
    }
    out.write_all(&(table.len() as u64).to_le_bytes())?;
    for (at, len) in &table {
        out.write_all(&at.to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
    }
    out.write_all(&index_at.to_le_bytes())?;
    out.write_all(INDEX_MAGIC)?;
    out.flush()?;
    stats.archive = out.get_ref().metadata()?.len();
    let t = start.elapsed();
    println!(
        "backup: {} files, {:.1} MiB in {:.2} s = {:.0} MB/s; {} chunks, {} unique; archive {:.1} MiB ({:.0}%)",
        files.len(),
        stats.bytes as f64 / 1048576.0,
        t.as_secs_f64(),
        mb_s(stats.bytes, t),
        stats.chunks,
        stats.unique,
        stats.archive as f64 / 1048576.0,
        100.0 * stats.archive as f64 / stats.bytes.max(1) as f64,
    );
    report("cut", &cut);
    report("seal", &seal);
    assert!(cut.shutdown().failure.is_none() && seal.shutdown().failure.is_none());
    Ok(stats)
}

/// A bounds-checked reader over the archive's index.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if n > self.0.len() {
            return Err("archive index is truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
}

/// Restores `archive` into `dir`, or (no `dir`) verifies every chunk. Returns bytes.
fn restore(archive: &Path, dir: Option<&Path>) -> Result<u64, Error> {
    let start = Instant::now();
    let mut f = File::open(archive)?;
    let mut head = [0u8; 8 + SALT_LEN];
    f.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(format!("{}: not a ringpipe archive", archive.display()).into());
    }
    let salt: [u8; SALT_LEN] = head[8..].try_into()?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.checked_sub(16).ok_or("archive too short")?))?;
    let mut tail = [0u8; 16];
    f.read_exact(&mut tail)?;
    if &tail[8..] != INDEX_MAGIC {
        return Err("archive has no index (interrupted backup?)".into());
    }
    let index_at = u64::from_le_bytes(tail[..8].try_into()?);
    f.seek(SeekFrom::Start(index_at))?;
    let mut raw = Vec::new();
    Read::by_ref(&mut f).take(len - 16 - index_at.min(len - 16)).read_to_end(&mut raw)?;
    let mut c = Cursor(&raw);
    let mut files = Vec::new();
    for _ in 0..c.u64()? {
        let n = c.u32()? as usize;
        let rel = String::from_utf8(c.take(n)?.to_vec())?;
        if rel.split('/').any(|p| p == ".." || p.is_empty()) || rel.starts_with('/') {
            return Err(format!("archive names an unsafe path {rel:?}").into());
        }
        let size = c.u64()?;
        let refs = (0..c.u32()?).map(|_| c.u32()).collect::<Result<Vec<_>, _>>()?;
        files.push((rel, size, refs));
    }
    let table = (0..c.u64()?).map(|_| Ok((c.u64()?, c.u32()?))).collect::<Result<Vec<_>, Error>>()?;
    let sealed_lens: Vec<u64> = table.iter().map(|&(_, len)| len.into()).collect();
    let key = Key::from_passphrase(&passphrase(), &salt)?;
    let max_chunk = 4 << 20;
    let opening = Seal::params(CIPHER, &key, salt);
    let links = [(crypt::OPEN, &opening[..]), (compress::UNZSTD, &[][..]), (hash::CHUNK_CHECK, &[][..])];
    let open = Pipeline::builder()
        .stage(StageSpec::chain(links).replicas(2))
        .frame_capacity(META_LEN + Zstd::max_output(max_chunk) + TAG_LEN)
        .max_in_flight(16)
        .build()?;
    // Chunks are read as the pipeline takes them; an unreadable one goes through as
    // an empty frame, which `open` fails, named.
    let read_chunk = move |k: u32| -> Vec<u8> {
        let mut read = || -> Result<Vec<u8>, Error> {
            let (at, len) = *table.get(k as usize).ok_or_else(|| format!("chunk {k} is not in the table"))?;
            let mut buf = vec![0u8; len as usize];
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        read().unwrap_or_default()
    };
    let mut bytes = 0u64;
    let mut bad = Vec::new();
    let what = if dir.is_some() { "restore" } else { "verify" };
    // Restore counts the bytes it writes; verify, the archive bytes it checked.
    let total = if dir.is_some() { files.iter().map(|f| f.1).sum() } else { sealed_lens.iter().sum() };
    let bar = progress(what, total);
    match dir {
        Some(dir) => {
            // One stream of chunks for all files, so the pipeline never drains
            // between files; outputs come back in input order. A second thread
            // writes them out (page-cache writes cost this VM a core at ~500 MB/s).
            let wanted = files.iter().flat_map(|(_, _, refs)| refs.iter().copied());
            let mut outs = open.map(wanted.map(read_chunk));
            let (files, bar) = (&files, &bar);
            bytes = std::thread::scope(|s| -> Result<u64, Error> {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(8);
                let writer = s.spawn(move || write_files(dir, files, rx, bar));
                let sent = (|| -> Result<(), Error> {
                    for (i, (rel, _, refs)) in files.iter().enumerate() {
                        tx.send(Piece::File(i))?;
                        for k in refs {
                            let out = match outs.next().ok_or("the pipeline ended early")? {
                                Ok(out) => out,
                                Err(ItemError::Stage { failure, .. }) => {
                                    return Err(format!("{rel}: chunk {k}: {}", failure.message).into())
                                }
                                Err(e) => return Err(e.into()),
                            };
                            tx.send(Piece::Chunk(out))?;
                        }
                    }
                    tx.send(Piece::End)?;
                    Ok(())
                })();
                drop(tx);
                let written = writer.join().expect("the writer thread does not panic");
                sent?;
                written
            })?;
        }
        None => {
            let chunks = sealed_lens.len() as u32;
            for (k, out) in open.map((0..chunks).map(read_chunk)).enumerate() {
                match out {
                    Ok(out) => bytes += (out.len() - META_LEN) as u64,
                    Err(ItemError::Stage { failure, .. }) => {
                        bad.push(format!("chunk {k}: {}", failure.message))
                    }
                    Err(e) => return Err(e.into()),
                }
                bar.inc(sealed_lens[k]);
            }
        }
    }
    bar.finish_and_clear();
    let t = start.elapsed();
    println!(
        "{what}: {} files, {:.1} MiB in {:.2} s = {:.0} MB/s",
        files.len(),
        bytes as f64 / 1048576.0,
        t.as_secs_f64(),
        mb_s(bytes, t)
    );
    report(what, &open);
    assert!(open.shutdown().failure.is_none());
    if !bad.is_empty() {
        return Err(format!("{} bad chunks: {}", bad.len(), bad.join("; ")).into());
    }
    Ok(bytes)
}

/// What the restore loop hands its writer thread, in order.
enum Piece {
    /// Start file `i` of the index (ending the one before).
    File(usize),
    /// The next chunk of the current file, opened and checked.
    Chunk(ringpipe::Output),
    /// Every file is complete. Without it, the file being written is removed.
    End,
}

/// A restored file being written, under a temporary name until it is complete.
struct Partial {
    index: usize,
    w: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
}

/// Writes restored files from `pieces`. Each is written as `<name>.partial` and
/// renamed once its size matches the index; if the pieces stop early (a chunk failed)
/// the partial file is removed, so nothing is written from a bad chunk.
fn write_files(
    dir: &Path,
    files: &[(String, u64, Vec<u32>)],
    pieces: std::sync::mpsc::Receiver<Piece>,
    bar: &ProgressBar,
) -> Result<u64, Error> {
    let mut current: Option<Partial> = None;
    let mut total = 0;
    let mut finish = |p: Partial| -> Result<(), Error> {
        let mut w = p.w;
        w.flush()?;
        let (rel, size, _) = &files[p.index];
        if w.get_ref().metadata()?.len() != *size {
            return Err(format!("{rel}: restored size differs from the index").into());
        }
        std::fs::rename(&p.tmp, &p.path)?;
        total += size;
        Ok(())
    };
    let result = (|| -> Result<(), Error> {
        for piece in &pieces {
            match piece {
                Piece::File(i) => {
                    if let Some(p) = current.take() {
                        finish(p)?;
                    }
                    let path = dir.join(&files[i].0);
                    std::fs::create_dir_all(path.parent().expect("a file under dir"))?;
                    let mut tmp = path.clone().into_os_string();
                    tmp.push(".partial");
                    let w = BufWriter::with_capacity(256 << 10, File::create(&tmp)?);
                    current = Some(Partial { index: i, w, tmp: tmp.into(), path });
                }
                Piece::Chunk(out) => {
                    let data = ChunkMeta::parse(&out)?.1;
                    current.as_mut().ok_or("a chunk before its file")?.w.write_all(data)?;
                    bar.inc(data.len() as u64);
                }
                Piece::End => {
                    if let Some(p) = current.take() {
                        finish(p)?;
                    }
                    return Ok(());
                }
            }
        }
        Err("restore stopped early".into())
    })();
    if let Some(p) = current.take() {
        drop(p.w);
        let _ = std::fs::remove_file(&p.tmp);
    }
    result.map(|()| total)
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
