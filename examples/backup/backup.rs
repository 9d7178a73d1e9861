//! Backing up a tree: walk it, cut every file into chunks (the cut pipeline),
//! deduplicate by id, seal new chunks (the seal pipeline) and append them to the
//! archive, then seal the index the same way.

use super::*;
use std::os::unix::ffi::OsStrExt;
use tree::{Kind, Skipped};

/// The archive being written: its file, the sealed chunks so far (where each starts,
/// after its length word, and how long it is), and the offset after the last.
pub(super) struct Writing {
    out: BufWriter<File>,
    table: Vec<(u64, u32)>,
    offset: u64,
}

impl Writing {
    /// Appends one sealed frame.
    fn append(&mut self, sealed: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&(sealed.len() as u32).to_le_bytes())?;
        self.out.write_all(sealed)?;
        self.table.push((self.offset + 4, sealed.len() as u32));
        self.offset += 4 + sealed.len() as u64;
        Ok(())
    }
}

/// An index part's id: binds its bytes to its place among `parts` parts, in a hash
/// domain of its own, so no data chunk (whose id is the plain BLAKE3 of its bytes)
/// can pass for one.
pub(super) fn index_part_id(part: u32, parts: u32, bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ringpipe backup example 2026 index part");
    h.update(&part.to_le_bytes()).update(&parts.to_le_bytes()).update(bytes);
    *h.finalize().as_bytes()
}

/// Blocks in the cut pipeline at once.
const CUT_WINDOW: usize = 6;
/// FastCDC's smallest chunk with `Chunker::default()`: a file no larger is one chunk.
const SMALL: usize = 256 << 10;

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_into(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub(super) fn backup(dir: &Path, archive: &Path) -> Result<Stats, Error> {
    let start = Instant::now();
    let tree::Walked { mut entries, mut skipped } = tree::walk(dir)?;
    let files: Vec<usize> =
        (0..entries.len()).filter(|&i| matches!(entries[i].kind, Kind::File { .. })).collect();
    let chunker = Chunker::default();
    let cut = Pipeline::builder()
        .stage(StageSpec::chain([Chain::link::<Chunker>(chunker), ("backup.ids", vec![])]))
        .frame_capacity(BLOCK + chunker.overhead(BLOCK) + 32 * (BLOCK / (256 << 10) + 2) + 4)
        .max_in_flight(CUT_WINDOW)
        .observable(true) // `ringpipe-top` can watch it
        .build()?;
    let salt = random_salt()?;
    let key = Key::from_passphrase(&passphrase(), &salt)?;
    let sealing = SealParams::new(CIPHER, &key, salt);
    let seal = Pipeline::builder()
        .stage(StageSpec::chain([Chain::link::<Zstd>(LEVEL), Chain::link::<Seal>(sealing)]).replicas(2))
        .frame_capacity(META_LEN + Zstd::max_output(MAX_CHUNK) + TAG_LEN)
        .max_in_flight(16)
        .observable(true)
        .build()?;

    // Written under a temporary name beside the archive (removed if anything fails),
    // renamed once complete.
    let parent = archive.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", archive.file_name().unwrap_or_default().to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(parent)
        .map_err(io_context("creating a temporary archive in", parent))?;
    let (file, temp_path) = temp.into_parts();
    let mut writing = Writing { out: BufWriter::with_capacity(4 << 20, file), table: Vec::new(), offset: 0 };
    let write_error = io_context("writing the archive", &temp_path);
    writing.out.write_all(MAGIC).and_then(|()| writing.out.write_all(&salt)).map_err(write_error)?;
    writing.offset = (MAGIC.len() + SALT_LEN) as u64;

    let listed: u64 = files
        .iter()
        .map(|&i| match entries[i].kind {
            Kind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    let bar = progress("backup", listed, files.len());

    // Files that cannot be opened or read are skipped, reported, and dropped from
    // the index.
    let mut unreadable = Vec::<(usize, String)>::new();
    // A file no larger than FastCDC's smallest chunk is one chunk whatever its
    // content: the parent hashes it in place and skips the cut pipeline's round
    // trip. Most files of a source tree are that small.
    let (small, mut big): (Vec<usize>, Vec<usize>) = files.iter().partition(|&&i| match entries[i].kind {
        Kind::File { size, .. } => size <= SMALL as u64,
        _ => false,
    });
    let mut opened = 0;

    let mut stats = Stats { bytes: 0, chunks: 0, unique: 0, archive: 0, skipped: Vec::new() };
    let mut refs: Vec<Vec<u32>> = vec![Vec::new(); entries.len()];
    // Bytes actually read per entry (the index records these, not the listed sizes).
    let mut sizes: Vec<u64> = vec![0; entries.len()];
    let writing = std::thread::scope(|s| -> Result<Writing, Error> {
        // New chunks go to `seal` as they are found; this thread appends what comes
        // out, in order (chunk numbers are positions in the archive).
        let (tx, rx) = std::sync::mpsc::sync_channel::<ringpipe::Ticket>(64);
        let temp_path = &temp_path;
        let writer = s.spawn(move || -> Result<Writing, Error> {
            for ticket in rx {
                let sealed =
                    ticket.wait().map_err(|e| format!("sealing chunk {}: {e}", writing.table.len()))?;
                writing.append(&sealed).map_err(io_context("writing the archive", temp_path))?;
            }
            Ok(writing)
        });
        let mut known: HashMap<[u8; 32], u32> = HashMap::new();
        let found = (|| -> Result<(), Error> {
            // Small files: each read straight into a frame of the seal pipeline, after
            // room for its chunk header.
            for &i in &small {
                opened += 1;
                file_done(&bar, opened, files.len());
                let mut file = match File::open(dir.join(entries[i].rel())) {
                    Ok(f) => f,
                    Err(e) => {
                        unreadable.push((i, format!("cannot be opened: {e}")));
                        continue;
                    }
                };
                let mut frame = seal.alloc(META_LEN + SMALL + 1)?;
                let n = match read_into(&mut file, &mut frame[META_LEN..]) {
                    Ok(n) if n > SMALL => {
                        big.push(i); // it grew: cut it like the others
                        continue;
                    }
                    Ok(0) => continue, // empty: no chunk
                    Ok(n) => n,
                    Err(e) => {
                        unreadable.push((i, format!("cannot be read: {e}")));
                        continue;
                    }
                };
                frame.set_len(META_LEN + n)?;
                let id = *blake3::hash(&frame[META_LEN..]).as_bytes();
                stats.chunks += 1;
                sizes[i] += n as u64;
                bar.inc(n as u64);
                let next = known.len() as u32;
                let seq = *known.entry(id).or_insert(next);
                if seq == next {
                    let meta = ChunkMeta { seq: next.into(), id, raw_len: n as u32, codec: CODEC_NONE };
                    frame[..META_LEN].copy_from_slice(bytemuck::bytes_of(&meta));
                    if tx.send(frame.submit()?).is_err() {
                        return Ok(()); // the writer failed: its error says why
                    }
                }
                refs[i].push(seq);
            }
            // The others: every block, in order, read straight into a frame of the cut
            // pipeline.
            let mut open_files = big.iter().copied();
            let mut reading: Option<(usize, File)> = None;
            let mut next_block = || -> Result<Option<(usize, ringpipe::Ticket)>, Error> {
                loop {
                    let (i, file) = match &mut reading {
                        Some(r) => r,
                        None => {
                            let Some(i) = open_files.next() else { return Ok(None) };
                            opened += 1;
                            file_done(&bar, opened, files.len());
                            match File::open(dir.join(entries[i].rel())) {
                                Ok(f) => reading.insert((i, f)),
                                Err(e) => {
                                    unreadable.push((i, format!("cannot be opened: {e}")));
                                    continue;
                                }
                            }
                        }
                    };
                    let mut frame = cut.alloc(BLOCK)?;
                    match read_into(file, &mut frame) {
                        Ok(0) => reading = None,
                        Ok(filled) => {
                            let i = *i;
                            if filled < BLOCK {
                                reading = None; // its end
                            }
                            frame.set_len(filled)?;
                            return Ok(Some((i, frame.submit()?)));
                        }
                        Err(e) => {
                            unreadable.push((*i, format!("cannot be read: {e}")));
                            reading = None;
                        }
                    }
                }
            };
            // Blocks in the cut pipeline, oldest first, with the entry each is of.
            let mut cutting = VecDeque::new();
            loop {
                while cutting.len() < CUT_WINDOW {
                    match next_block()? {
                        Some(b) => cutting.push_back(b),
                        None => break,
                    }
                }
                let Some((file, ticket)) = cutting.pop_front() else { return Ok(()) };
                let block = ticket
                    .wait()
                    .map_err(|e| format!("cutting {}: {e}", dir.join(entries[file].rel()).display()))?;
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
                            return Ok(()); // the writer failed: its error says why
                        }
                    }
                    refs[file].push(seq);
                }
            }
        })();
        drop(tx);
        let written = writer.join().expect("the writer thread does not panic");
        found?;
        written
    })?;
    bar.finish_and_clear();
    let mut writing = writing;

    // What could not be read leaves the index, with the hard links to it.
    let unreadable: HashMap<usize, String> = unreadable.into_iter().collect();
    for (&i, reason) in &unreadable {
        skipped.push(Skipped { path: dir.join(entries[i].rel()), reason: reason.clone() });
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if let Kind::File { size, chunks } = &mut e.kind {
            *size = sizes[i];
            *chunks = std::mem::take(&mut refs[i]);
        }
    }
    for orphan in tree::retain(&mut entries, |i| !unreadable.contains_key(&i)) {
        let path = dir.join(Path::new(std::ffi::OsStr::from_bytes(&orphan)));
        skipped.push(Skipped { path, reason: "a hard link to a file that could not be read".into() });
    }
    stats.bytes = sizes.iter().sum();
    stats.unique = writing.table.len() as u64;

    // The index, sealed in parts through the same pipeline, numbered after the chunks.
    let index = tree::encode(&entries, &writing.table);
    let parts: Vec<&[u8]> = index.chunks(MAX_CHUNK).collect();
    let data_chunks = writing.table.len() as u64;
    let mut tail = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let id = index_part_id(k as u32, parts.len() as u32, part);
        let meta =
            ChunkMeta { seq: data_chunks + k as u64, id, raw_len: part.len() as u32, codec: CODEC_NONE };
        let mut frame = seal.alloc(META_LEN + part.len())?;
        frame[..META_LEN].copy_from_slice(bytemuck::bytes_of(&meta));
        frame[META_LEN..].copy_from_slice(part);
        let sealed = frame.submit()?.wait().map_err(|e| format!("sealing the index: {e}"))?;
        writing.append(&sealed).map_err(io_context("writing the archive", &temp_path))?;
        let (at, len) = *writing.table.last().expect("just appended");
        tail.extend_from_slice(&at.to_le_bytes());
        tail.extend_from_slice(&len.to_le_bytes());
    }
    tail.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    tail.extend_from_slice(TAIL_MAGIC);
    let Writing { mut out, .. } = writing;
    let finish = (|| {
        out.write_all(&tail)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        out.get_ref().metadata().map(|m| m.len())
    })();
    stats.archive = finish.map_err(io_context("writing the archive", &temp_path))?;
    drop(out);
    temp_path
        .persist(archive)
        .map_err(|e| format!("renaming the finished archive to {}: {}", archive.display(), e.error))?;
    let t = start.elapsed();
    println!(
        "backup: {} entries ({} files), {:.1} MiB in {:.2} s = {:.0} MB/s; {} chunks, {} unique; archive {:.1} MiB ({:.0}%)",
        entries.len(),
        files.len() - unreadable.len(),
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
    if let Some(f) = cut.shutdown().failure.or(seal.shutdown().failure) {
        return Err(format!("a pipeline failed at shutdown: {f}").into());
    }
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    stats.skipped = skipped;
    Ok(stats)
}
