//! The backup example keeps every kind of entry and refuses what could hurt:
//! - a tree with files, modes, times, empty directories, symbolic and hard links comes
//!   back equal entry by entry, and a FIFO is reported by name;
//! - a crafted index (a `..` path, a file under a link) is refused before anything is
//!   written;
//! - a backup or a restore into a filesystem too small for it fails with a sentence
//!   naming the file and the cause, and leaves no archive and no `.partial` file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../examples/backup/tree.rs"]
#[allow(dead_code)]
mod tree;

fn backup_exe() -> PathBuf {
    // target/<profile>/deps/backup_tree-<hash> -> target/<profile>/examples/backup
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join("backup");
    assert!(path.exists(), "{} not built; run `cargo test` (it builds examples)", path.display());
    path
}

const PASS: &str = "tree test passphrase";

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(backup_exe()).env("RINGPIPE_PASSPHRASE", PASS).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

mod common;
use common::Scratch;

fn set_mtime(path: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, 123_456_789);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

/// Every kind of entry, plus a FIFO (reported, not kept).
fn make_tree(src: &Path) {
    std::fs::create_dir_all(src.join("dir/empty")).unwrap();
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::write(src.join("dir/data"), b"some data\n".repeat(1000)).unwrap();
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(src.join("private"), b"secret").unwrap();
    std::fs::set_permissions(src.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(src.join("empty-file"), b"").unwrap();
    set_mtime(&src.join("dir/data"), 1_000_000_000);
    set_mtime(&src.join("run.sh"), 1_500_000_000);
    std::fs::hard_link(src.join("dir/data"), src.join("data-again")).unwrap();
    std::os::unix::fs::symlink("dir/data", src.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("dir", src.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../../outside", src.join("dir/up-and-out")).unwrap();
    let fifo = src.join("dir/fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    // Directory modes and times last (adding entries changes a directory's time).
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o555)).unwrap();
    for (d, t) in [("dir/empty", 1_200_000_000), ("dir", 1_300_000_000), ("locked", 1_400_000_000)] {
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: t, tv_nsec: 0 },
            last_modification: rustix::fs::Timespec { tv_sec: t, tv_nsec: 5 },
        };
        rustix::fs::utimensat(rustix::fs::CWD, src.join(d), &ts, rustix::fs::AtFlags::empty()).unwrap();
    }
}

/// What one entry is, as `lstat` and `readlink` see it: enough to say two trees
/// are equal.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    nlink: u64,
}

fn seen(root: &Path) -> Vec<(PathBuf, Seen)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let t = m.file_type();
            let kind = if t.is_dir() {
                dirs.push(path.clone());
                "dir"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_file() {
                "file"
            } else {
                "special"
            };
            out.push((
                path.strip_prefix(root).unwrap().to_path_buf(),
                Seen {
                    kind,
                    mode: if t.is_symlink() { 0 } else { m.mode() & 0o7777 },
                    mtime: (m.mtime(), m.mtime_nsec()),
                    content: t.is_file().then(|| std::fs::read(&path).unwrap()),
                    target: t.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                    nlink: if t.is_file() { m.nlink() } else { 0 },
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_kind_of_entry_comes_back_and_special_files_are_reported() {
    let s = Scratch::new("backup-tree");
    let (src, archive, dst) = (s.0.join("src"), s.0.join("a.rpa"), s.0.join("dst"));
    make_tree(&src);

    // A FIFO is skipped: named, with the reason, and the exit status says so.
    let strict = run(&["backup".as_ref(), src.as_os_str(), archive.as_os_str()]);
    let said = text(&strict);
    assert!(!strict.status.success(), "a skipped FIFO must fail the backup: {said}");
    assert!(said.contains("dir/fifo: a FIFO"), "{said}");
    assert!(said.contains("--allow-skipped"), "{said}");
    std::fs::remove_file(&archive).unwrap(); // the rest was archived

    let allowed = run(&["backup".as_ref(), "--allow-skipped".as_ref(), src.as_os_str(), archive.as_os_str()]);
    assert!(allowed.status.success(), "{}", text(&allowed));
    assert!(text(&allowed).contains("dir/fifo: a FIFO"));
    // The index is sealed: no file name shows in the archive.
    let bytes = std::fs::read(&archive).unwrap();
    for name in ["run.sh", "link-to-file", "up-and-out", "nowhere"] {
        assert!(!bytes.windows(name.len()).any(|w| w == name.as_bytes()), "{name} shows in the archive");
    }

    let restored = run(&["restore".as_ref(), archive.as_os_str(), dst.as_os_str()]);
    assert!(restored.status.success(), "{}", text(&restored));
    let mut want = seen(&src);
    want.retain(|(p, _)| p != Path::new("dir/fifo"));
    let got = seen(&dst);
    assert_eq!(want.len(), got.len(), "entries: {:?} vs {:?}", want, got);
    for ((pw, w), (pg, g)) in want.iter().zip(&got) {
        assert_eq!(pw, pg);
        assert_eq!(w, g, "{} differs", pw.display());
    }
    // The hard link is a link again, not a copy.
    let (a, b) = (
        std::fs::metadata(dst.join("dir/data")).unwrap(),
        std::fs::metadata(dst.join("data-again")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    // The script still runs.
    let ran = Command::new(dst.join("run.sh")).output().unwrap();
    assert_eq!(ran.stdout, b"hi\n");

    // A restore into a directory that is not empty is refused.
    let again = run(&["restore".as_ref(), archive.as_os_str(), dst.as_os_str()]);
    assert!(!again.status.success() && text(&again).contains("not empty"), "{}", text(&again));
}

/// The id of an index part (the example's `index_part_id`).
fn index_part_id(part: u32, parts: u32, bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ringpipe backup example 2026 index part");
    h.update(&part.to_le_bytes()).update(&parts.to_le_bytes()).update(bytes);
    *h.finalize().as_bytes()
}

/// Rewrites `archive` with `entries` as its index, sealed with the right key: what
/// someone who knows the passphrase could craft.
fn craft(archive: &Path, entries: &[tree::Entry]) {
    use ringpipe::stages::chunk::{ChunkMeta, CODEC_NONE, META_LEN};
    use ringpipe::stages::compress::Zstd;
    use ringpipe::stages::crypt::{Cipher, Key, Seal, SealParams, TAG_LEN};
    use ringpipe::{Pipeline, StageSpec};
    let bytes = std::fs::read(archive).unwrap();
    let salt: [u8; 16] = bytes[8..24].try_into().unwrap();
    let first_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let table = [(28u64, first_len)];
    let index = tree::encode(entries, &table);
    let key = Key::from_passphrase(PASS.as_bytes(), &salt).unwrap();
    let seal = Pipeline::builder()
        .stage(StageSpec::thread::<Zstd>(3))
        .stage(StageSpec::thread::<Seal>(SealParams::new(Cipher::Aes256Gcm, &key, salt)))
        .frame_capacity(META_LEN + Zstd::max_output(index.len()) + TAG_LEN)
        .build()
        .unwrap();
    let meta =
        ChunkMeta { seq: 1, id: index_part_id(0, 1, &index), raw_len: index.len() as u32, codec: CODEC_NONE };
    let mut input = bytemuck::bytes_of(&meta).to_vec();
    input.extend_from_slice(&index);
    let sealed = seal.submit(&input).unwrap().wait().unwrap();
    let mut out = bytes[..28 + first_len as usize].to_vec();
    let at = out.len() as u64 + 4;
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(b"RPTAIL02");
    drop(sealed);
    seal.shutdown();
    std::fs::write(archive, out).unwrap();
}

fn entry(path: &str, kind: tree::Kind) -> tree::Entry {
    tree::Entry { path: path.as_bytes().to_vec(), mode: 0o644, mtime: (0, 0), kind }
}

#[test]
fn a_crafted_index_cannot_write_outside_the_target() {
    let s = Scratch::new("backup-crafted");
    let (src, archive) = (s.0.join("src"), s.0.join("a.rpa"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"payload").unwrap();
    let made = run(&["backup".as_ref(), src.as_os_str(), archive.as_os_str()]);
    assert!(made.status.success(), "{}", text(&made));
    let file = || tree::Kind::File { size: 7, chunks: vec![0] };
    let cases: Vec<(&str, Vec<tree::Entry>, &str)> = vec![
        ("dot-dot", vec![entry("../escaped", file())], "unsafe path"),
        ("deep dot-dot", vec![entry("d", tree::Kind::Dir), entry("d/../../escaped", file())], "unsafe path"),
        ("absolute", vec![entry("/tmp/escaped", file())], "unsafe path"),
        (
            "under a link",
            vec![
                entry("l", tree::Kind::Symlink(s.0.join("outside").into_os_string().into_encoded_bytes())),
                entry("l/escaped", file()),
            ],
            "not one of its directories",
        ),
        ("under a file", vec![entry("f", file()), entry("f/escaped", file())], "not one of its directories"),
        ("twice", vec![entry("f", file()), entry("f", tree::Kind::Symlink(b"/etc".to_vec()))], "twice"),
    ];
    std::fs::create_dir_all(s.0.join("outside")).unwrap();
    for (what, entries, says) in cases {
        let crafted = s.0.join(format!("{}.rpa", what.replace(' ', "-")));
        std::fs::copy(&archive, &crafted).unwrap();
        craft(&crafted, &entries);
        let dst = s.0.join(format!("dst-{}", what.replace(' ', "-")));
        let out = run(&["restore".as_ref(), crafted.as_os_str(), dst.as_os_str()]);
        assert!(!out.status.success(), "{what}: restored: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
        assert!(!dst.exists(), "{what}: the target was created");
        assert!(
            !s.0.join("escaped").exists() && !Path::new("/tmp/escaped").exists(),
            "{what}: wrote outside"
        );
        assert_eq!(
            std::fs::read_dir(s.0.join("outside")).unwrap().count(),
            0,
            "{what}: wrote through the link"
        );
    }
}

/// Runs `sh -c script` with `$1` a fresh 4 MiB tmpfs, in a mount namespace of its
/// own (gone when it exits); `None` where this machine cannot mount one.
fn in_small_filesystem(script: &str, args: &[&std::ffi::OsStr]) -> Option<Output> {
    let mount = "mkdir -p \"$1\" && mount -t tmpfs -o size=4m ringpipe-test \"$1\" || exit 99; ";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--map-root-user", "sh", "-c"])
        .arg(format!("{mount}{script}"))
        .arg("sh")
        .args(args)
        .env("RINGPIPE_PASSPHRASE", PASS)
        .output()
        .ok()?;
    if out.status.code() == Some(99) || String::from_utf8_lossy(&out.stderr).contains("unshare failed") {
        eprintln!("skipped: cannot mount a small filesystem here: {}", text(&out));
        return None;
    }
    Some(out)
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing_behind() {
    let s = Scratch::new("backup-full");
    let (src, archive, small) = (s.0.join("src"), s.0.join("a.rpa"), s.0.join("small"));
    std::fs::create_dir_all(&src).unwrap();
    // 12 MiB that do not compress: more than the 4 MiB filesystem holds.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..(12 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(src.join("noise"), &noise).unwrap();
    let exe = backup_exe();

    // Backup into it: fails, naming the archive and the cause; nothing is left there.
    let script = "\"$2\" backup \"$3\" \"$1/a.rpa\"; rc=$?; echo \"left: [$(ls -A \"$1\")]\"; exit $rc";
    let Some(out) = in_small_filesystem(script, &[small.as_os_str(), exe.as_os_str(), src.as_os_str()])
    else {
        return;
    };
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("error: writing the archive") && said.contains("No space left on device"),
        "{said}"
    );
    assert!(!said.contains("Os {"), "an error in Debug form: {said}");
    assert!(said.contains("left: []"), "the failed backup left files: {said}");

    // Restore into it: fails, naming the file and the cause; no `.partial` file stays.
    let made = run(&["backup".as_ref(), src.as_os_str(), archive.as_os_str()]);
    assert!(made.status.success(), "{}", text(&made));
    let script = "\"$2\" restore \"$3\" \"$1/dst\"; rc=$?; echo \"partial: [$(find \"$1\" -name '*.partial')]\"; exit $rc";
    let out =
        in_small_filesystem(script, &[small.as_os_str(), exe.as_os_str(), archive.as_os_str()]).unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("noise") && said.contains("No space left on device"), "{said}");
    assert!(said.contains("partial: []"), "a .partial file stayed: {said}");
}
