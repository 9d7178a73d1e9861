//! A replicated pipeline stage spanning hosts: a file is cut into chunks, and each chunk
//! is compressed with zstd by whichever host has room, by one of that host's replicas.
//! The compressed chunks come back in submission order and are written one after the
//! other, which makes one valid zstd stream; the master checks it decompresses to the
//! file, and prints each host's share.
//!
//! ```text
//! cargo run --release --features mpi --example mpi_pipeline              # one host, no mpiexec
//! mpiexec -n 3 target/release/examples/mpi_pipeline FILE --out FILE.zst  # three ranks
//! mpiexec -f hostfile -n 3 target/release/examples/mpi_pipeline FILE    # a cluster
//! ```
//!
//! With no FILE it compresses its own executable. Each host runs the same pipeline,
//! `StageSpec::process::<Zstd>(level).replicas(2)`: two worker processes per host. See
//! `ringpipe::cluster` and the README's "Across hosts".

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ringpipe::cluster::{Cluster, ClusterPool};
use ringpipe::stages::chunk::{chunk_frame, ChunkMeta, CODEC_ZSTD};
use ringpipe::stages::compress::Zstd;
use ringpipe::{Pipeline, StageSpec};

/// `[FILE] [--out FILE] [--chunk-kib N] [--level L] [--replicas N]`, the same on every
/// rank.
struct Args {
    input: Option<PathBuf>,
    out: Option<PathBuf>,
    chunk: usize,
    level: i32,
    replicas: usize,
}

fn args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args { input: None, out: None, chunk: 256 << 10, level: 3, replicas: 2 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |what: &str| it.next().ok_or(format!("{arg} takes {what}"));
        match arg.as_str() {
            "--out" => a.out = Some(value("a file")?.into()),
            "--chunk-kib" => a.chunk = value("a number")?.parse::<usize>()? << 10,
            "--level" => a.level = value("a number")?.parse()?,
            "--replicas" => a.replicas = value("a number")?.parse()?,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => a.input = Some(arg.into()),
        }
    }
    if a.chunk == 0 {
        return Err("--chunk-kib must be at least 1".into());
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let args = args()?;
    let cluster = Cluster::init()?;
    // Every rank builds the same pipeline: its zstd stage has replicas on every host.
    // A frame holds a chunk's header and its worst-case compressed body.
    let zstd = StageSpec::process::<Zstd>(args.level).replicas(args.replicas);
    let frame = Zstd::max_output(args.chunk) + 256;
    let pool = ClusterPool::pipeline(Pipeline::builder().stage(zstd).frame_capacity(frame))
        .batch(4)
        .build(&cluster)?;
    if !cluster.is_master() {
        return Ok(pool.serve()?);
    }

    let input = match &args.input {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    let data = std::fs::read(&input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    println!("{} hosts: {}", cluster.size(), pool.hosts().join(", "));
    let started = Instant::now();
    let chunks = data.chunks(args.chunk).enumerate().map(|(i, c)| chunk_frame(i as u64, c));
    let mut compressed = Vec::new();
    let mut next = 0;
    for result in pool.map(chunks) {
        let out = result?;
        // Submission order: chunk i is the i-th result, whichever host ran it.
        assert_eq!(out.index(), next, "results come back in submission order");
        next += 1;
        let (meta, body) = ChunkMeta::parse(&out)?;
        assert_eq!(meta.codec, CODEC_ZSTD, "chunk {} came back compressed", out.index());
        assert_eq!(meta.seq, out.index(), "chunk {} came back as itself", out.index());
        compressed.extend_from_slice(body);
    }
    let chunks = data.len().div_ceil(args.chunk) as u64;
    if next != chunks {
        return Err(format!("{next} of {chunks} chunks came back").into());
    }
    let secs = started.elapsed().as_secs_f64();

    // Consecutive zstd frames are one zstd stream: it must give back the file.
    let round_trip = zstd::stream::decode_all(&compressed[..])?;
    if round_trip != data {
        return Err("the compressed chunks do not decompress to the input".into());
    }
    if let Some(out) = &args.out {
        std::fs::File::create(out)?.write_all(&compressed)?;
    }
    println!(
        "{}: {} bytes in {next} chunks -> {} bytes zstd-{} in {secs:.2} s ({:.1} MB/s); round trip ok",
        input.display(),
        data.len(),
        compressed.len(),
        args.level,
        data.len() as f64 / secs / 1e6
    );
    print!("{}", pool.stats());
    pool.shutdown();
    Ok(())
}
