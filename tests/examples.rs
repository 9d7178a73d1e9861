//! The `atbu.mp_pipeline` examples, ported, are the first acceptance tests: run each example binary and
//! compare what it prints with the "Output" blocks of `atbu.mp_pipeline`'s documentation (pids aside).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} not built; run `cargo test` (it builds examples)", path.display());
    path
}

fn run(name: &str) -> Vec<String> {
    let out = Command::new(example(name)).output().unwrap();
    assert!(out.status.success(), "{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn without_pid(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(
            |l| {
                if l.contains(".pid=") {
                    l.split('=').next().unwrap().to_owned() + "=<pid>"
                } else {
                    l.clone()
                }
            },
        )
        .collect()
}

#[test]
fn basic_prints_what_atbu_mp_pipeline_prints() {
    assert_eq!(
        run("basic"),
        [
            "Work item completed successfully:",
            "  wi.user_obj[0]=400",
            "  wi.user_obj[1]=stage1",
            "  wi.user_obj[2]=stage2: got this from parent: This is from parent",
        ]
    );
}

#[test]
fn large_prints_what_atbu_mp_pipeline_prints() {
    assert_eq!(
        without_pid(&run("large")),
        [
            "Pipeline has 100 stages.",
            "Work item completed successfully:",
            "  r_wi.is_ok=True",
            "  r_wi.pid=<pid>",
            "  r_wi.num=50",
        ]
    );
}

#[test]
fn mixed_prints_what_atbu_mp_pipeline_prints() {
    assert_eq!(
        without_pid(&run("mixed")),
        ["Pipeline has 20 stages.", "Work item completed successfully:", "  r_wi.num=20", "  r_wi.pid=<pid>"]
    );
}

/// `atbu.mp_pipeline`'s dual-stage example: both items succeed, 10 random bytes each, and what
/// the consumer received is what the producer sent.
#[test]
fn producer_consumer_prints_what_atbu_mp_pipeline_prints() {
    let lines = run("producer_consumer");
    assert_eq!(lines.len(), 8, "{lines:?}");
    for (i, item) in lines.chunks(4).enumerate() {
        assert_eq!(item[0], format!("Success for #{i}:"));
        assert_eq!(item[1], format!("  {i}: num_bytes=10"));
        let p = item[2].strip_prefix(&format!("  {i}: p_bytes=")).expect("p_bytes line");
        let c = item[3].strip_prefix(&format!("  {i}: c_bytes=")).expect("c_bytes line");
        assert_eq!(p, c);
        assert_eq!(p.split(' ').filter(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()).count(), 10);
    }
    assert_ne!(lines[2][14..], lines[6][14..], "each item gets its own random bytes");
}

/// Streaming compression: every sample file is streamed whole, compressed, and
/// verified to decompress to its input; the scratch directory is removed.
#[test]
fn stream_compress_round_trips_every_file() {
    let lines = run("stream_compress");
    let files: Vec<_> = lines.iter().filter(|l| l.starts_with("sample-")).collect();
    assert_eq!(files.len(), 4, "{lines:?}");
    assert!(files.iter().all(|l| l.ends_with("decompresses to the input: yes")), "{lines:?}");
    assert!(lines.last().unwrap().ends_with("graceful shutdown: true"), "{lines:?}");
}

/// The MPI master-worker pool example: every task index comes back exactly once, doubled.
#[test]
fn pool_returns_every_task_once() {
    let lines = run("pool");
    let done = lines.iter().filter(|l| l.starts_with("task ")).count();
    assert_eq!(done, 20, "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("every one of the 20 task indices came back exactly once")));
    assert_eq!(lines.iter().filter(|l| l.ends_with("stopped: exit status: 0")).count(), 4, "{lines:?}");
}
