//! The flagship example end to end: back up a tree with duplicates, an empty file
//! and a file of several blocks; verify; restore byte for byte. Then damage the
//! archive, and use the wrong passphrase: both fail, naming what, and restore leaves
//! no file built from a bad chunk. A tree with every kind of entry comes back exact;
//! special files are reported; a crafted index cannot write outside the target; a
//! full disk is a clear error that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn backup_exe() -> PathBuf {
    // target/<profile>/deps/backup-<hash> -> target/<profile>/examples/backup
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join("backup");
    assert!(path.exists(), "{} not built; run `cargo test` (it builds examples)", path.display());
    path
}

fn run(args: &[&Path], passphrase: &str) -> Output {
    let mut cmd = Command::new(backup_exe());
    cmd.env("RINGPIPE_PASSPHRASE", passphrase);
    // The example's arguments: a verb, then paths.
    let verb = args[0].to_str().unwrap();
    cmd.arg(verb).args(&args[1..]);
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

mod common;
use common::Scratch;

fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
    (0..n.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(n)
        .collect()
}

fn make_tree(src: &Path) {
    let text: Vec<u8> = b"the ring buffer hands each chunk to the next stage\n".repeat(40_000);
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/text"), &text).unwrap();
    std::fs::write(src.join("a/b/copy-of-text"), &text).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("one-byte"), b"x").unwrap();
    // Over one 8 MiB read block, incompressible.
    std::fs::write(src.join("big-random"), pseudo_random(9 << 20, 0x1234_5678_9abc_def1)).unwrap();
}

fn same_file(a: &Path, b: &Path) {
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{} differs", b.display());
}

#[test]
fn backup_verify_restore_round_trip_and_damage_is_named() {
    let s = Scratch::new("backup");
    let (src, archive, dst) = (s.0.join("src"), s.0.join("archive.rpa"), s.0.join("dst"));
    make_tree(&src);
    let pass = "correct horse";
    let said = ok(run(&[Path::new("backup"), &src, &archive], pass));
    assert!(said.contains("backup: 7 entries (5 files)"), "{said}");
    // The copy's chunks are all duplicates: fewer unique chunks than chunks.
    let words: Vec<&str> = said.split_whitespace().collect();
    let count = |what: &str| -> u64 {
        let at = words.iter().position(|w| w.trim_end_matches([',', ';']) == what).unwrap();
        words[at - 1].parse().unwrap()
    };
    assert!(count("unique") < count("chunks"), "{said}");
    assert!(said.contains("per stage") && said.contains("<- bottleneck"), "{said}");

    ok(run(&[Path::new("verify"), &archive], pass));
    ok(run(&[Path::new("restore"), &archive, &dst], pass));
    for f in ["a/text", "a/b/copy-of-text", "empty", "one-byte", "big-random"] {
        same_file(&src.join(f), &dst.join(f));
    }

    // The wrong passphrase: the index does not open, and nothing is written.
    let dst_wrong = s.0.join("dst-wrong");
    let wrong = run(&[Path::new("restore"), &archive, &dst_wrong], "wrong");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!dst_wrong.exists(), "a restore with the wrong passphrase created its target");

    // One flipped byte in the first sealed chunk's body (after the archive's magic
    // and salt, the chunk's length word and its 48-byte meta).
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[8 + 16 + 4 + 48 + 10] ^= 1;
    std::fs::write(&archive, &bytes).unwrap();
    let bad = run(&[Path::new("verify"), &archive], pass);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("1 bad chunks") && err.contains("chunk 0"), "{err}");

    let dst2 = s.0.join("dst2");
    let bad = run(&[Path::new("restore"), &archive, &dst2], pass);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    // "error: <file>: chunk 0: <why>", naming the file the chunk belongs to.
    let named = err
        .lines()
        .find_map(|l| l.strip_prefix("error: ")?.split_once(": chunk 0: ").map(|(file, _)| file.to_owned()))
        .unwrap_or_else(|| panic!("no file named for chunk 0: {err}"));
    assert!(src.join(&named).is_file(), "{named} is not a file of the tree: {err}");
    // Nothing built from the bad chunk is left behind, complete or partial.
    let left: Vec<_> = walk(&dst2);
    assert!(left.iter().all(|p| !p.to_string_lossy().ends_with(".partial")), "{left:?}");
    assert!(!dst2.join(&named).exists(), "{named}, which uses chunk 0, was restored: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
