//! Restoring or verifying an archive: open and check its index, then open every
//! chunk (the open pipeline) and rebuild the tree from them.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use super::*;
use tree::{Entry, Kind};

/// An archive's index, opened and checked, with what restore needs to read it.
struct Opened {
    entries: Vec<Entry>,
    table: tree::ChunkTable,
    file: File,
    key: Key,
    salt: [u8; SALT_LEN],
}

/// The chunk frames' capacity (a chunk or index part, compressed, with its tag).
fn capacity() -> usize {
    META_LEN + Zstd::max_output(MAX_CHUNK) + TAG_LEN
}

fn read_at(f: &File, at: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, at)?;
    Ok(buf)
}

/// Opens `archive`'s index: reads the tail, opens the sealed parts in a sandboxed
/// pipeline, checks each part's id, and decodes and checks the entries.
fn open_index(archive: &Path) -> Result<Opened, Error> {
    let read_error = io_context("reading", archive);
    let mut f = File::open(archive).map_err(io_context("opening", archive))?;
    let mut head = [0u8; 8 + SALT_LEN];
    f.read_exact(&mut head).map_err(|_| format!("{} is not a ringpipe archive", archive.display()))?;
    if &head[..8] != MAGIC {
        return Err(format!("{} is not a ringpipe archive of this version", archive.display()).into());
    }
    let salt: [u8; SALT_LEN] = head[8..].try_into().expect("SALT_LEN bytes");
    let len = f.metadata().map_err(read_error)?.len();
    let incomplete = || format!("{} has no index: it is not a complete archive", archive.display());
    let mut tail = [0u8; 12];
    f.seek(SeekFrom::Start(len.checked_sub(12).ok_or_else(incomplete)?))?;
    f.read_exact(&mut tail)?;
    if &tail[4..] != TAIL_MAGIC {
        return Err(incomplete().into());
    }
    let parts = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
    let list_at =
        (parts as u64).checked_mul(12).and_then(|n| len.checked_sub(12 + n)).ok_or_else(incomplete)?;
    let list = read_at(&f, list_at, parts * 12)?;
    let key = Key::from_passphrase(&passphrase(), &salt)?;
    let opening = SealParams::new(CIPHER, &key, salt);
    // The index's parts are opened like chunks, in a sandbox, but checked here: their
    // ids are in a hash domain of their own (see `index_part_id`).
    let open = Pipeline::builder()
        .stage(
            StageSpec::chain([Chain::link::<Open>(opening), Chain::link::<Unzstd>(())])
                .sandbox(restore_sandbox(capacity())),
        )
        .frame_capacity(capacity())
        .max_in_flight(2)
        .build()?;
    let mut index = Vec::new();
    for (k, at_len) in list.chunks_exact(12).enumerate() {
        let at = u64::from_le_bytes(at_len[..8].try_into().expect("8 bytes"));
        let sealed_len = u32::from_le_bytes(at_len[8..].try_into().expect("4 bytes"));
        if sealed_len as usize > capacity() || at.saturating_add(sealed_len.into()) > list_at {
            return Err(
                format!("{}: the tail names an index part outside the archive", archive.display()).into()
            );
        }
        let sealed = read_at(&f, at, sealed_len).map_err(io_context("reading", archive))?;
        let opened = match open.submit(&sealed)?.wait() {
            Ok(out) => out,
            Err(ItemError::Stage { failure, .. }) => {
                return Err(format!(
                    "cannot open the index of {}: wrong passphrase, or the archive is damaged ({})",
                    archive.display(),
                    failure.message
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        let (meta, body) = ChunkMeta::parse(&opened)?;
        if meta.id != backup::index_part_id(k as u32, parts, body) {
            return Err(format!(
                "the index of {} is damaged: part {k} is not an index part",
                archive.display()
            )
            .into());
        }
        index.extend_from_slice(body);
    }
    open.shutdown();
    let (entries, table) = tree::decode(&index)?;
    if let Some(&(at, len)) = table.iter().find(|&&(at, len)| at.saturating_add(len.into()) > list_at) {
        return Err(format!(
            "the index of {} names a chunk ({len} bytes at {at}) outside it",
            archive.display()
        )
        .into());
    }
    Ok(Opened { entries, table, file: f, key, salt })
}

/// Restores `archive` into `dir`, or (no `dir`) verifies every chunk. Returns bytes.
pub(super) fn restore(archive: &Path, dir: Option<&Path>) -> Result<u64, Error> {
    let start = Instant::now();
    let Opened { entries, table, file, key, salt } = open_index(archive)?;
    if let Some(dir) = dir {
        prepare_target(dir)?;
    }
    let opening = SealParams::new(CIPHER, &key, salt);
    let links = [Chain::link::<Open>(opening), Chain::link::<Unzstd>(()), Chain::link::<ChunkCheck>(())];
    // The archive may come from anywhere: the stages that parse it run sandboxed, with
    // no files, no network, no new processes, and a memory cap sized from the frames.
    let open = Pipeline::builder()
        .stage(StageSpec::chain(links).replicas(2).sandbox(restore_sandbox(capacity())))
        .frame_capacity(capacity())
        // Room for what the writers hold (queued, in hand, and one being handed
        // over) and for the chunks being opened.
        .max_in_flight(WRITERS * (WRITER_QUEUE + 1) + 1 + OPENING)
        .observable(true) // `ringpipe-top` can watch it
        .build()?;
    for report in open.sandbox_reports() {
        eprintln!("sandbox: {report}");
    }
    let sealed_lens: Vec<u64> = table.iter().map(|&(_, len)| len.into()).collect();
    let files: Vec<usize> =
        (0..entries.len()).filter(|&i| matches!(entries[i].kind, Kind::File { .. })).collect();
    let chunks_of = |i: usize| match &entries[i].kind {
        Kind::File { chunks, .. } => chunks.as_slice(),
        _ => &[],
    };
    let mut bytes = 0u64;
    let mut bad = Vec::new();
    let what = if dir.is_some() { "restore" } else { "verify" };
    // Restore counts the bytes it writes; verify, the archive bytes it checked.
    let total = match dir {
        Some(_) => files.iter().map(|&i| size_of(&entries[i])).sum(),
        None => sealed_lens.iter().sum(),
    };
    let bar = progress(what, total, files.len());
    match dir {
        Some(dir) => {
            // One stream of chunks for all files, so the pipeline never drains
            // between files; outputs come back in input order. Writer threads take
            // the files in turn: writing into the page cache costs this VM a core
            // at ~500 MB/s, more than one thread keeps up with.
            let wanted = files.iter().flat_map(|&i| chunks_of(i).iter().copied());
            let mut outs = Opening { open: &open, file: &file, table: &table, wanted, sent: VecDeque::new() };
            let (entries, files, bar) = (&entries, &files, &bar);
            create_dirs(dir, entries)?;
            let done = std::sync::atomic::AtomicUsize::new(0);
            let done = &done;
            bytes = std::thread::scope(|s| -> Result<u64, Error> {
                let (txs, writers): (Vec<_>, Vec<_>) = (0..WRITERS)
                    .map(|_| {
                        let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(WRITER_QUEUE);
                        (tx, s.spawn(move || write_files(dir, entries, files.len(), rx, bar, done)))
                    })
                    .unzip();
                // Err(None): a writer stopped, and its own error says why.
                let sent = (|| -> Result<(), Option<Error>> {
                    let send = |w: usize, piece| txs[w].send(piece).map_err(|_| None);
                    for (n, &i) in files.iter().enumerate() {
                        let w = n % WRITERS;
                        send(w, Piece::File(i))?;
                        for k in chunks_of(i) {
                            let out =
                                match outs.next().ok_or_else(|| Some("the pipeline ended early".into()))? {
                                    Ok(out) => out,
                                    Err(ItemError::Stage { failure, .. }) => {
                                        let rel = entries[i].rel().display();
                                        return Err(Some(
                                            format!("{rel}: chunk {k}: {}", failure.message).into(),
                                        ));
                                    }
                                    Err(e) => return Err(Some(e.into())),
                                };
                            send(w, Piece::Chunk(out))?;
                        }
                    }
                    (0..WRITERS).try_for_each(|w| send(w, Piece::End))
                })();
                drop(txs);
                let written: Vec<_> =
                    writers.into_iter().map(|w| w.join().expect("a writer thread does not panic")).collect();
                if let Err(Some(e)) = sent {
                    return Err(e);
                }
                written.into_iter().sum()
            })?;
            finish_tree(dir, entries)?;
        }
        None => {
            let chunks = sealed_lens.len() as u32;
            let all =
                Opening { open: &open, file: &file, table: &table, wanted: 0..chunks, sent: VecDeque::new() };
            for (k, out) in all.enumerate() {
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
        "{what}: {} entries ({} files), {:.1} MiB in {:.2} s = {:.0} MB/s",
        entries.len(),
        files.len(),
        bytes as f64 / 1048576.0,
        t.as_secs_f64(),
        mb_s(bytes, t)
    );
    report(what, &open);
    if let Some(f) = open.shutdown().failure {
        return Err(format!("the open pipeline failed at shutdown: {f}").into());
    }
    if !bad.is_empty() {
        return Err(format!("{} bad chunks: {}", bad.len(), bad.join("; ")).into());
    }
    Ok(bytes)
}

fn size_of(e: &Entry) -> u64 {
    match e.kind {
        Kind::File { size, .. } => size,
        _ => 0,
    }
}

/// Makes sure `dir` is new or empty (so nothing already there, a link say, can
/// redirect what is restored), and creates it.
fn prepare_target(dir: &Path) -> Result<(), Error> {
    match std::fs::read_dir(dir) {
        Ok(mut list) => {
            if list.next().is_some() {
                return Err(format!("refusing to restore into {}: it is not empty", dir.display()).into());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_context("creating", dir))
        }
        Err(e) => Err(format!("cannot restore into {}: {e}", dir.display()).into()),
    }
}

/// What the restore loop hands its writer thread, in order.
pub(super) enum Piece {
    /// Start entry `i` (a regular file), ending the one before.
    File(usize),
    /// The next chunk of the current file, opened and checked.
    Chunk(ringpipe::Output),
    /// Every file is complete. Without it, the file being written is removed.
    End,
}

/// A restored file being written, under a temporary name until it is complete.
pub(super) struct Partial {
    index: usize,
    file: File,
    written: u64,
    tmp: PathBuf,
    path: PathBuf,
}

/// The chunks of a restore, in order, each read from the archive straight into a
/// frame of the open pipeline (no copy on the way in), `OPENING` of them at a time;
/// yields their results in the same order. A chunk that cannot be read goes in
/// empty, and `open` fails it, named.
struct Opening<'a, I> {
    open: &'a Pipeline,
    file: &'a File,
    table: &'a tree::ChunkTable,
    wanted: I,
    sent: VecDeque<ringpipe::Ticket>,
}

/// Chunks in the open pipeline at once during a restore. With the writers' queues
/// (below) the pipeline holds up to 67 frames: 268 MiB of shared memory if every
/// chunk were 4 MiB, as much as the chunks fill (a few MiB for the small files most
/// trees are made of). Deeper queues than 10 and 4 left the cores idle less often
/// (a profile showed them idle 17% of a restore): in three alternating runs,
/// 425/465, 408/418 and 380/476 MB/s.
const OPENING: usize = 32;

impl<I: Iterator<Item = u32>> Iterator for Opening<'_, I> {
    type Item = Result<ringpipe::Output, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.sent.len() < OPENING {
            let Some(k) = self.wanted.next() else { break };
            let (at, len) = self.table[k as usize]; // checked by `tree::decode`
            let submitted = self.open.alloc(len as usize).and_then(|mut frame| {
                if std::os::unix::fs::FileExt::read_exact_at(self.file, &mut frame, at).is_err() {
                    frame.set_len(0).expect("an empty frame fits");
                }
                frame.submit()
            });
            match submitted {
                Ok(ticket) => self.sent.push_back(ticket),
                Err(e) => return Some(Err(ItemError::Submit(e))),
            }
        }
        Some(self.sent.pop_front()?.wait())
    }
}

/// Threads writing restored files, and the pieces each may have queued.
const WRITERS: usize = 2;
const WRITER_QUEUE: usize = 16;

/// Creates the archive's directories (mode and time come last, in `finish_tree`).
fn create_dirs(dir: &Path, entries: &[Entry]) -> Result<(), Error> {
    for e in entries.iter().filter(|e| e.kind == Kind::Dir) {
        let path = dir.join(e.rel());
        std::fs::create_dir(&path).map_err(io_context("creating directory", &path))?;
    }
    Ok(())
}

/// Writes the files from `pieces`. Each file is created new as `<name>.partial`
/// (nothing already there is followed) with its mode, written chunk by chunk (each
/// a whole buffer: no copy into another), given its time, and renamed once its size
/// matches the index; if the pieces stop early (a chunk failed, the disk filled)
/// the partial file is removed, so nothing is written from a bad chunk. `done`
/// counts files finished, for the progress bar.
pub(super) fn write_files(
    dir: &Path,
    entries: &[Entry],
    files: usize,
    pieces: std::sync::mpsc::Receiver<Piece>,
    bar: &ProgressBar,
    done: &std::sync::atomic::AtomicUsize,
) -> Result<u64, Error> {
    // Bits the umask takes from a new file's mode: only files whose mode has one of
    // them need a `chmod` after creation (all of them, if it cannot be read).
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|m| m.trim().to_owned())))
        .and_then(|m| u32::from_str_radix(&m, 8).ok())
        .unwrap_or(0o7777);
    let mut current: Option<Partial> = None;
    let mut total = 0;
    let mut finish = |p: Partial| -> Result<(), Error> {
        let e = &entries[p.index];
        if p.written != size_of(e) {
            let want = size_of(e);
            return Err(format!(
                "{}: restored size {} differs from the index's {want}",
                p.path.display(),
                p.written
            )
            .into());
        }
        let set = (|| {
            if e.mode & umask != 0 {
                p.file.set_permissions(std::fs::Permissions::from_mode(e.mode))?;
            }
            p.file.set_modified(time_of(e.mtime))
        })();
        set.map_err(io_context("setting the mode and time of", &p.tmp))?;
        drop(p.file);
        std::fs::rename(&p.tmp, &p.path).map_err(io_context("renaming the restored file to", &p.path))?;
        total += p.written;
        file_done(bar, done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, files);
        Ok(())
    };
    let result = (|| -> Result<(), Error> {
        for piece in &pieces {
            match piece {
                Piece::File(i) => {
                    if let Some(p) = current.take() {
                        finish(p)?;
                    }
                    let path = dir.join(entries[i].rel());
                    let mut tmp = path.clone().into_os_string();
                    tmp.push(".partial");
                    let tmp = PathBuf::from(tmp);
                    let file = std::os::unix::fs::OpenOptionsExt::mode(
                        File::options().write(true).create_new(true),
                        entries[i].mode,
                    )
                    .open(&tmp)
                    .map_err(io_context("creating", &tmp))?;
                    current = Some(Partial { index: i, file, written: 0, tmp, path });
                }
                Piece::Chunk(out) => {
                    let data = ChunkMeta::parse(&out)?.1;
                    let p = current.as_mut().ok_or("a chunk before its file")?;
                    p.file.write_all(data).map_err(io_context("writing", &p.path))?;
                    p.written += data.len() as u64;
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
        drop(p.file);
        let _ = std::fs::remove_file(&p.tmp);
    }
    result.map(|()| total)
}

fn time_of((secs, nanos): (i64, u32)) -> std::time::SystemTime {
    let at = std::time::Duration::new(secs.unsigned_abs(), nanos);
    if secs >= 0 {
        std::time::UNIX_EPOCH + at
    } else {
        std::time::UNIX_EPOCH - at
    }
}

/// After every file: hard links, then symbolic links (so none is in place while a
/// later entry is created), then each directory's mode and time, deepest first.
fn finish_tree(dir: &Path, entries: &[Entry]) -> Result<(), Error> {
    for e in entries {
        let path = dir.join(e.rel());
        match &e.kind {
            Kind::HardLink(to) => {
                let target = dir.join(entries[*to as usize].rel());
                std::fs::hard_link(&target, &path).map_err(io_context("creating hard link", &path))?;
            }
            Kind::Symlink(target) => {
                let target = Path::new(std::ffi::OsStr::from_bytes(target));
                std::os::unix::fs::symlink(target, &path)
                    .map_err(io_context("creating symbolic link", &path))?;
                set_times(&path, e.mtime, false).map_err(io_context("setting the time of", &path))?;
            }
            _ => {}
        }
    }
    for e in entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let path = dir.join(e.rel());
        let set = set_times(&path, e.mtime, true)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode)));
        set.map_err(io_context("setting the mode and time of", &path))?;
    }
    Ok(())
}

/// Sets `path`'s modification time (access time: now), following it only if `follow`.
fn set_times(path: &Path, (secs, nanos): (i64, u32), follow: bool) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD, UTIME_NOW};
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_NOW },
        last_modification: Timespec { tv_sec: secs, tv_nsec: nanos.into() },
    };
    let flags = if follow { AtFlags::empty() } else { AtFlags::SYMLINK_NOFOLLOW };
    rustix::fs::utimensat(CWD, path, &times, flags).map_err(std::io::Error::from)
}
