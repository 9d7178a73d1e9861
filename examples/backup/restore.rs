//! Restoring or verifying an archive: read its index, open every chunk (the open
//! pipeline) and write each file from its chunks.

use super::*;

/// A bounds-checked reader over the archive's index.
pub(super) struct Cursor<'a>(&'a [u8]);

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
pub(super) fn restore(archive: &Path, dir: Option<&Path>) -> Result<u64, Error> {
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
    let opening = SealParams::new(CIPHER, &key, salt);
    let links = [Chain::link::<Open>(opening), Chain::link::<Unzstd>(()), Chain::link::<ChunkCheck>(())];
    let capacity = META_LEN + Zstd::max_output(max_chunk) + TAG_LEN;
    // The archive may come from anywhere: the stages that parse it run sandboxed, with
    // no files, no network, no new processes, and a memory cap sized from the frames.
    let open = Pipeline::builder()
        .stage(StageSpec::chain(links).replicas(2).sandbox(restore_sandbox(capacity)))
        .frame_capacity(capacity)
        .max_in_flight(16)
        .build()?;
    for report in open.sandbox_reports() {
        eprintln!("sandbox: {report}");
    }
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
pub(super) enum Piece {
    /// Start file `i` of the index (ending the one before).
    File(usize),
    /// The next chunk of the current file, opened and checked.
    Chunk(ringpipe::Output),
    /// Every file is complete. Without it, the file being written is removed.
    End,
}

/// A restored file being written, under a temporary name until it is complete.
pub(super) struct Partial {
    index: usize,
    w: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
}

/// Writes restored files from `pieces`. Each is written as `<name>.partial` and
/// renamed once its size matches the index; if the pieces stop early (a chunk failed)
/// the partial file is removed, so nothing is written from a bad chunk.
pub(super) fn write_files(
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
