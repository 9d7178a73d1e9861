//! Streaming compression through a producer/consumer pair: a process stage reads a
//! file straight into the pair's byte ring (zero-copy chunks: `read(2)` fills ring
//! memory), and a second process compresses the stream with zstd's streaming encoder
//! into an output file, taking the bytes in place. Then the example checks that every
//! output decompresses to its input.
//!
//! ```text
//! cargo run --release --example stream_compress            # sample files, in a temp dir
//! cargo run --release --example stream_compress -- FILE.. # your files (outputs: FILE.zst)
//! ```

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{
    register, BoxError, Consumer, ConsumerSpec, Frame, ItemError, PairSpec, Pipeline, Producer, ProducerSpec,
    Registered,
};

/// Leads every item; the input and output paths follow it, separated by a NUL byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Job {
    /// zstd level.
    level: i32,
    reserved: u32,
    /// Producer: bytes read from the input file.
    read: u64,
    /// Consumer: bytes taken from the stream, and bytes of compressed output.
    consumed: u64,
    written: u64,
}

fn paths(frame: &Frame<'_>) -> Result<(PathBuf, PathBuf), BoxError> {
    let rest = &frame.bytes()[std::mem::size_of::<Job>()..];
    let text = std::str::from_utf8(rest)?;
    let (input, output) = text.split_once('\0').ok_or("item has no output path")?;
    Ok((input.into(), output.into()))
}

/// Reads the input file into the ring.
struct FileReader;

impl Producer for FileReader {
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        let (input, _) = paths(frame)?;
        let mut file = File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?;
        let mut read = 0u64;
        loop {
            let mut chunk = stream.write_chunk(256 << 10)?;
            let n = file.read(&mut chunk)?; // the kernel copies straight into the ring
            if n == 0 {
                break;
            }
            chunk.commit(n);
            read += n as u64;
        }
        frame.header_mut::<Job>()?.read = read;
        Ok(())
    }
}

/// Compresses the stream into the output file.
struct Compressor;

impl Consumer for Compressor {
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        let (_, output) = paths(frame)?;
        let level = frame.header::<Job>()?.level;
        let file = File::create(&output).map_err(|e| format!("{}: {e}", output.display()))?;
        let mut encoder = zstd::stream::Encoder::new(BufWriter::with_capacity(1 << 20, file), level)?;
        let mut consumed = 0u64;
        loop {
            let chunk = stream.read_chunk()?; // an error here means the reader failed: no EOF
            if chunk.is_empty() {
                break;
            }
            encoder.write_all(chunk)?;
            let n = chunk.len();
            stream.consume(n);
            consumed += n as u64;
        }
        let mut out = encoder.finish()?;
        out.flush()?;
        let written = out.get_ref().metadata()?.len();
        let job = frame.header_mut::<Job>()?;
        job.consumed = consumed;
        job.written = written;
        Ok(())
    }

    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        let theirs: Job = bytemuck::pod_read_unaligned(&producer[..std::mem::size_of::<Job>()]);
        frame.header_mut::<Job>()?.read = theirs.read;
        Ok(())
    }
}

impl Registered for FileReader {
    const NAME: &'static str = "example.file_reader";
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        Ok(FileReader)
    }
}

impl Registered for Compressor {
    const NAME: &'static str = "example.zstd_compressor";
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        Ok(Compressor)
    }
}

register!(producer: FileReader);
register!(consumer: Compressor);

/// Writes `n` sample files of compressible, log-like text; returns their paths.
fn sample_files(dir: &Path, n: usize, bytes: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let words = ["backup", "chunk", "stored", "skipped", "verified", "encrypted", "dedup", "index"];
    (0..n)
        .map(|i| {
            let path = dir.join(format!("sample-{i}.log"));
            let mut out = BufWriter::new(File::create(&path)?);
            let mut written = 0;
            let mut line = 0u64;
            while written < bytes {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let text = format!(
                    "{line:08} file-{:05} {} {} bytes in {} us\n",
                    x % 50_000,
                    words[(x >> 20) as usize % words.len()],
                    (x >> 24) % 1_000_000,
                    (x >> 44) % 10_000,
                );
                out.write_all(text.as_bytes())?;
                written += text.len();
                line += 1;
            }
            out.flush()?;
            Ok(path)
        })
        .collect()
}

/// True if `compressed` decompresses to exactly the bytes of `original`.
fn round_trips(original: &Path, compressed: &Path) -> std::io::Result<bool> {
    let mut decoder = zstd::stream::Decoder::new(File::open(compressed)?)?;
    let mut input = File::open(original)?;
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = input.read(&mut a)?;
        let mut m = 0;
        while m < n {
            match decoder.read(&mut b[m..n])? {
                0 => return Ok(false), // decompressed output is shorter
                k => m += k,
            }
        }
        if a[..n] != b[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(decoder.read(&mut b[..1])? == 0); // and not longer
        }
    }
}

/// Removes the sample directory however `main` ends: nothing is left behind.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let scratch = std::env::temp_dir().join(format!("ringpipe-stream-compress-{}", std::process::id()));
    let sample = args.is_empty();
    let _cleanup = sample.then(|| RemoveOnDrop(scratch.clone()));
    let (inputs, outputs): (Vec<PathBuf>, Vec<PathBuf>) = if sample {
        std::fs::create_dir_all(&scratch)?;
        let inputs = sample_files(&scratch, 4, 32 << 20)?;
        let outputs = inputs.iter().map(|p| p.with_extension("log.zst")).collect();
        (inputs, outputs)
    } else {
        let outputs = args.iter().map(|p| PathBuf::from(format!("{}.zst", p.display()))).collect();
        (args, outputs)
    };

    let pipeline = Pipeline::builder()
        .pair(
            PairSpec::new(ProducerSpec::process::<FileReader>(()), ConsumerSpec::process::<Compressor>(()))
                .stream_capacity(1 << 20),
        )
        .build()?;
    let started = Instant::now();
    let mut tickets = Vec::new();
    for (input, output) in inputs.iter().zip(&outputs) {
        let mut item = bytemuck::bytes_of(&Job { level: 3, ..Zeroable::zeroed() }).to_vec();
        item.extend_from_slice(format!("{}\0{}", input.display(), output.display()).as_bytes());
        tickets.push(pipeline.submit(&item)?);
    }
    let mut total = (0u64, 0u64);
    let mut all_ok = true;
    for ((ticket, input), output) in tickets.into_iter().zip(&inputs).zip(&outputs) {
        let out = match ticket.wait() {
            Ok(out) => out,
            Err(ItemError::Stage { failure, .. }) => {
                println!("{}: FAILED: {failure}", input.display());
                all_ok = false;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let job: &Job = out.header()?;
        let verified = job.read == job.consumed && round_trips(input, output)?;
        all_ok &= verified;
        total.0 += job.read;
        total.1 += job.written;
        println!(
            "{}: {} bytes read, {} streamed, {} compressed ({:.1}x); decompresses to the input: {}",
            input.file_name().unwrap_or_default().to_string_lossy(),
            job.read,
            job.consumed,
            job.written,
            job.read as f64 / job.written.max(1) as f64,
            if verified { "yes" } else { "NO" },
        );
    }
    let elapsed = started.elapsed();
    let report = pipeline.shutdown();
    println!(
        "{} files, {:.1} MiB in {:.2?} ({:.0} MB/s, compression and check included); graceful shutdown: {}",
        inputs.len(),
        total.0 as f64 / (1 << 20) as f64,
        elapsed,
        total.0 as f64 / elapsed.as_secs_f64() / 1e6,
        report.was_graceful(),
    );
    if !all_ok || !report.was_graceful() {
        return Err("some files did not round-trip".into());
    }
    Ok(())
}
