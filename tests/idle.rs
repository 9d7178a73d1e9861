//! An idle pipeline burns no CPU. In its own test binary, so that no other test's
//! pipeline threads run in this process while it measures.

use std::time::Duration;

use ringpipe::{register_stage, stage_fn, Frame, Pipeline, StageSpec};

ringpipe::worker_test_entry!();

register_stage!("idle.upper", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    f.bytes_mut().make_ascii_uppercase();
    Ok(())
})));

// Issue 2, point 4. An idle pipeline burns no CPU: its worker and its threads sleep on futexes.
#[test]
fn idle_pipeline_burns_no_cpu() {
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("idle.upper"))
        .stage(StageSpec::thread_named("idle.upper"))
        .build()
        .unwrap();
    drop(p.submit(b"warm").unwrap().wait().unwrap());
    std::thread::sleep(Duration::from_millis(100)); // past every spin budget
    let (_, pid) = p.worker_pids()[0];
    let before = cpu_ticks(&format!("/proc/{pid}/stat")) + ringpipe_threads_ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let after = cpu_ticks(&format!("/proc/{pid}/stat")) + ringpipe_threads_ticks();
    // Clock ticks are 10 ms; a spinning thread would use ~150 of them.
    assert!(after - before <= 3, "idle pipeline used {} ticks of CPU", after - before);
    assert!(p.shutdown().was_graceful());
}

fn cpu_ticks(stat: &str) -> u64 {
    let s = std::fs::read_to_string(stat).unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
}

fn ringpipe_threads_ticks() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok())
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("ringpipe-")))
        .map(|t| cpu_ticks(t.path().join("stat").to_str().unwrap()))
        .sum()
}
