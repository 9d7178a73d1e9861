//! Backing up a tree: walk it, cut every file into chunks (the cut pipeline),
//! deduplicate by id, seal new chunks (the seal pipeline) and append them to the
//! archive with its index.

use super::*;

/// Every regular file under `root`, sorted, as (relative path, full path).
pub(super) fn walk(root: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
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
pub(super) type Written = (BufWriter<File>, Vec<(u64, u32)>, u64);

pub(super) fn backup(dir: &Path, archive: &Path) -> Result<Stats, Error> {
    let start = Instant::now();
    let files = walk(dir)?;
    let chunker = Chunker::default();
    let cut = Pipeline::builder()
        .stage(StageSpec::chain([Chain::link::<Chunker>(chunker), ("backup.ids", vec![])]))
        .frame_capacity(BLOCK + chunker.overhead(BLOCK) + 32 * (BLOCK / (256 << 10) + 2) + 4)
        .max_in_flight(6)
        .build()?;
    let salt = random_salt()?;
    let key = Key::from_passphrase(&passphrase(), &salt)?;
    let max_chunk = 4 << 20;
    let sealing = SealParams::new(CIPHER, &key, salt);
    let seal = Pipeline::builder()
        .stage(StageSpec::chain([Chain::link::<Zstd>(LEVEL), Chain::link::<Seal>(sealing)]).replicas(2))
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
