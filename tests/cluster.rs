//! The pool and a replicated stage across hosts (`--features mpi`), with real MPI: one
//! host without `mpiexec`, three ranks on one machine, three emulated hosts over TCP
//! (network namespaces, `tests/mpi/hosts.sh`; root only), and a host killed mid-job: no
//! hang; under a plain `mpiexec` the job ends, under `-disable-auto-cleanup` the lost
//! host's tasks fail with a typed error and the rest finish; a rerun resumes from the
//! record of finished tasks. The master killed ends the job with nothing left running,
//! and a map dropped early leaves nothing to the next.
//!
//! Run: `cargo build --features mpi --example mpi_pool --example mpi_pipeline && cargo
//! test --features mpi --test cluster` (MPICH's `mpiexec` on the PATH; the emulated
//! hosts need root and are skipped without it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Past this, a job that has not ended is a hang.
const HANG: Duration = Duration::from_secs(120);

/// One MPI job at a time: jobs share the machine's cores and, across emulated hosts, one
/// bridge.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_job() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn example() -> PathBuf {
    built_example("mpi_pool")
}

fn pipeline_example() -> PathBuf {
    built_example("mpi_pipeline")
}

fn built_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} not built; run `cargo test --features mpi`", path.display());
    path
}

/// Runs `mpi_pipeline` (zstd, replicated on every host) on chunks of `chunk_kib`
/// through `cmd`: it checks itself that results came in submission order and
/// decompress to its input. Returns each host's name and tasks, by rank, from its
/// statistics table.
fn replicated_stage(mut cmd: Command, chunk_kib: usize) -> Vec<(String, u64)> {
    cmd.arg(pipeline_example()).args(["--chunk-kib", &chunk_kib.to_string()]);
    let out = finish(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_job_ended_well(&out);
    assert!(stdout.contains("round trip ok"), "{stdout}");
    let mut shares = Vec::new();
    for line in stdout.lines().skip_while(|l| !l.starts_with("rank")).skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0].parse::<usize>().unwrap(), shares.len(), "{stdout}");
        shares.push((cols[1].to_owned(), cols[2].parse().unwrap()));
    }
    shares
}

/// Runs `cmd` to its end, reading its output meanwhile, failing the test if it takes
/// longer than [`HANG`].
fn finish(mut cmd: Command) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(HANG) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the job hung: still running after {HANG:?}");
        }
    }
}

/// The job succeeded, or its only fault was MPI's. The caller checks that the work
/// itself is complete and right. Two faults of MPICH 4.0.2's are let through:
/// - over UCX and TCP, `MPI_Finalize` sometimes never returns after all work is done;
///   `Cluster` cuts it off after `FINALIZE_GRACE` with a message, and `mpiexec` then
///   reports a failure;
/// - `mpiexec` itself (Hydra, launching through `tests/mpi/enter` as through rsh)
///   once died of SIGPIPE after the master had printed every result, with nothing on
///   stderr: a write of its own to a proxy that was gone (in about 40 runs of the
///   emulated-host tests with every core busy; pmodels/mpich#1042 reports a broken
///   pipe at the end of rsh/ssh-launched jobs). No rank of ours writes to a pipe of
///   mpiexec's, and a rank killed by a signal is reported by mpiexec's exit code, not
///   as its own death.
fn assert_job_ended_well(out: &Output) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return;
    }
    let clean = !stderr.contains("panicked") && !stderr.contains("Error:");
    let finalize = stderr.contains("MPI_Finalize has not returned");
    let hydra_pipe = out.status.signal() == Some(libc::SIGPIPE) && stderr.trim().is_empty();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(clean && (finalize || hydra_pipe), "the job failed ({}):\n{stdout}\n{stderr}", out.status);
    if finalize {
        eprintln!("note: the job's work was done, but MPI_Finalize hung and was cut off:\n{stderr}");
    } else {
        eprintln!("note: the job's work was done, but mpiexec died of SIGPIPE at its end");
    }
}

/// Task indices the master printed, and how many ran on each rank.
fn tasks_printed(stdout: &str) -> (Vec<usize>, [usize; 4]) {
    let mut tasks = Vec::new();
    let mut per_rank = [0; 4];
    for line in stdout.lines().filter(|l| l.starts_with("task ")) {
        let i: usize = line[5..].split(':').next().unwrap().trim().parse().unwrap();
        let rank: usize = line.split("(rank ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
        tasks.push(i);
        per_rank[rank] += 1;
    }
    (tasks, per_rank)
}

fn check_all_once(out: &Output, n: usize) -> [usize; 4] {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_job_ended_well(out);
    let (mut tasks, per_rank) = tasks_printed(&stdout);
    tasks.sort_unstable();
    assert_eq!(tasks, (0..n).collect::<Vec<_>>(), "every task once");
    per_rank
}

fn mpiexec(ranks: usize) -> Command {
    let mut cmd = Command::new("mpiexec");
    cmd.args(["-n", &ranks.to_string()]);
    cmd
}

#[test]
fn one_host_without_mpiexec_runs_every_task_once() {
    let _one = one_job();
    let out = finish({
        let mut c = Command::new(example());
        c.arg("50");
        c
    });
    assert_eq!(check_all_once(&out, 50)[0], 50);
}

/// A map dropped after a few results, with tasks still out on every host, leaves
/// none of them to the next map: the example checks every result of its real run
/// against its own task (the abandoned map's tasks are the same ones negated).
#[test]
fn a_map_dropped_early_leaves_nothing_to_the_next() {
    let _one = one_job();
    let out = finish({
        let mut c = mpiexec(3);
        c.arg(example()).args(["300", "--abandon", "3"]);
        c
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("abandoned a map after 3 results"));
    check_all_once(&out, 300);
}

#[test]
fn three_ranks_share_the_tasks_each_once() {
    let _one = one_job();
    let out = finish({
        let mut c = mpiexec(3);
        c.arg(example()).arg("600");
        c
    });
    let per_rank = check_all_once(&out, 600);
    assert!(per_rank[..3].iter().all(|&n| n > 0), "every host got work: {per_rank:?}");
}

/// `Cluster::init` sets UCX's TCP segment sizes both or not at all: a user's receive
/// segment of 32 KiB beside ringpipe's 1 MiB send segment would make UCX refuse to
/// start (a send segment may not exceed the receive one).
#[test]
fn a_ucx_segment_size_the_user_set_is_left_alone() {
    let _one = one_job();
    let out = finish({
        let mut c = mpiexec(2);
        c.env("UCX_TCP_RX_SEG_SIZE", "32kb").arg(example()).arg("100");
        c
    });
    check_all_once(&out, 100);
}

#[test]
fn a_replicated_stage_spans_three_ranks_in_submission_order() {
    let _one = one_job();
    // Chunks small enough to cross in their batch's table.
    let shares = replicated_stage(mpiexec(3), 4);
    assert_eq!(shares.len(), 3);
    assert!(shares.iter().all(|(_, tasks)| *tasks > 0), "every host took a share: {shares:?}");
}

/// The test's record and output files, removed however the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ringpipe-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The emulated hosts, removed when the test ends however it ends.
struct Hosts;

impl Hosts {
    fn up(n: usize) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: emulated hosts need root (network namespaces)");
            return None;
        }
        let ok = Command::new(script()).args(["up", &n.to_string()]).status().unwrap().success();
        assert!(ok, "tests/mpi/hosts.sh up failed");
        Some(Hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mpi/hosts.sh")
}

fn across_hosts(n: usize) -> Command {
    let enter = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mpi/enter");
    let hosts: Vec<String> = (1..=n).map(|i| format!("10.77.0.{i}")).collect();
    let mut cmd = Command::new("mpiexec");
    cmd.arg("-launcher").arg("rsh").arg("-launcher-exec").arg(enter);
    cmd.args(["-iface", "rpbr0", "-hosts", &hosts.join(","), "-n", &n.to_string()]);
    cmd
}

/// The pool and a replicated stage across three emulated hosts, over TCP: every task
/// once, results in submission order, each host with a share. (One test: the hosts
/// share one bridge.)
#[test]
fn across_three_emulated_hosts_the_pool_and_a_replicated_stage() {
    let _one = one_job();
    let Some(_hosts) = Hosts::up(3) else { return };
    let out = finish({
        let mut c = across_hosts(3);
        c.arg(example()).arg("600");
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 hosts: h1, h2, h3"), "each rank on its own host: {stdout}");
    let per_rank = check_all_once(&out, 600);
    assert!(per_rank[..3].iter().all(|&n| n > 0), "every host got work: {per_rank:?}");

    // Tasks of 96 KiB cross on their own, read by MPI straight from the master's
    // memory (borrowed slices) and received straight into the leaders' batches.
    let out = finish({
        let mut c = across_hosts(3);
        c.arg(example()).args(["120", "--pad-kib", "96"]);
        c
    });
    let per_rank = check_all_once(&out, 120);
    assert!(per_rank[1] + per_rank[2] > 0, "tasks crossed hosts: {per_rank:?}");

    // Chunks large enough to cross on their own, from the master's memory straight
    // into their batch on the leader, beside the last, smaller one.
    let shares = replicated_stage(across_hosts(3), 96);
    let names: Vec<&str> = shares.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    assert!(shares.iter().all(|(_, tasks)| *tasks > 0), "every host took a share: {shares:?}");
}

/// Starts `job` with `--pid-dir DIR` and its output in `DIR/first.{out,err}` (files, so
/// that a full pipe cannot stall mpiexec), SIGKILLs rank `victim` once `record` lists
/// `progress` finished tasks, and waits for the job to end, failing the test if it
/// hangs. Each rank writes its pid to a file: mpiexec merges the ranks' output streams
/// and may split a line, so the pid is not read from there.
fn kill_rank_mid_job(
    mut job: Command,
    dir: &Path,
    record: &Path,
    victim: usize,
    progress: u64,
) -> std::process::ExitStatus {
    let out = std::fs::File::create(dir.join("first.out")).unwrap();
    let err = std::fs::File::create(dir.join("first.err")).unwrap();
    let mut first =
        job.arg("--pid-dir").arg(dir).stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap();
    let pid_file = dir.join(format!("rank-{victim}"));
    let deadline = Instant::now() + HANG;
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse().ok()) {
            break pid;
        }
        if let Some(status) = first.try_wait().unwrap() {
            let err = std::fs::read_to_string(dir.join("first.err")).unwrap_or_default();
            panic!("rank {victim} never wrote its pid; the job ended {status}:\n{err}");
        }
        assert!(Instant::now() < deadline, "rank {victim} never wrote its pid");
        std::thread::sleep(Duration::from_millis(10));
    };
    while std::fs::metadata(record).map_or(0, |m| m.len()) < 8 * progress {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let killed = Instant::now();
    loop {
        if let Some(status) = first.try_wait().unwrap() {
            return status;
        }
        assert!(killed.elapsed() < HANG, "the job hung after rank {victim} was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes still running `exe` (zombies, which run nothing, left out).
fn live_processes_of(exe: &Path) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let runs_exe = std::fs::read_link(entry.path().join("exe")).is_ok_and(|e| e == exe);
        // The state follows the parenthesised command name in `stat`.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
        if runs_exe && !zombie {
            live.push(pid);
        }
    }
    live
}

/// The master (rank 0) SIGKILLed mid-job, even where MPI lets the other ranks live on
/// (`-disable-auto-cleanup`): the job ends, never hangs, and no process of it is left,
/// no leader and no worker of any host (workers end with their leader's lifeline).
#[test]
fn the_master_killed_mid_job_ends_it_and_leaves_no_process() {
    let _one = one_job();
    let scratch = Scratch::new();
    let dir = scratch.0.clone();
    let record = dir.join("done.bin");
    let mut cmd = mpiexec(3);
    cmd.arg("-disable-auto-cleanup")
        .arg(example())
        .args(["1000", "--task-ms", "20", "--resume"])
        .arg(&record);
    let status = kill_rank_mid_job(cmd, &dir, &record, 0, 20);
    assert!(!status.success(), "the job fails without its master");
    let deadline = Instant::now() + HANG;
    loop {
        let live = live_processes_of(&example());
        if live.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes {live:?} outlived the job");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host lost mid-job: the job ends (MPICH ends every rank), and a rerun resumes.
///
/// This test was ignored while about one run in three hung. The hang was the rerun's
/// ranks inside `MPI_Finalize` with all their work done (see `Cluster`): the pool's
/// last synchronisation now goes through the master only, and a finalize that hangs
/// is cut off after `FINALIZE_GRACE`. 22 runs in a row passed after that.
#[test]
fn across_emulated_hosts_a_lost_host_ends_the_job_for_a_resume() {
    let _one = one_job();
    let Some(hosts) = Hosts::up(2) else { return };

    // A host lost mid-job: rank 1 is SIGKILLed once some tasks are done.
    let scratch = Scratch::new();
    let dir = scratch.0.clone();
    let record = dir.join("done.bin");
    // About 5 s of work: rank 1 is killed long before the end, on any machine.
    let n = 1000;
    let job = |record: &Path| {
        let mut c = across_hosts(2);
        c.arg(example()).arg(n.to_string()).args(["--task-ms", "20", "--resume"]).arg(record);
        c
    };
    let status = kill_rank_mid_job(job(&record), &dir, &record, 1, 40);
    assert!(!status.success(), "with MPICH a lost rank ends the job");
    let before: BTreeSet<u64> = std::fs::read(&record)
        .unwrap()
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(before.len() >= 40 && before.len() < n, "{} done before the loss", before.len());

    // The rerun does only the rest, on hosts set up afresh (as after a real loss:
    // nothing of the killed job is left in them).
    drop(hosts);
    let _hosts = Hosts::up(2).expect("root, as above");
    let out = finish(job(&record));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_job_ended_well(&out);
    let (now, _) = tasks_printed(&stdout);
    let now: BTreeSet<u64> = now.into_iter().map(|i| i as u64).collect();
    assert!(now.is_disjoint(&before), "a task done before ran again");
    assert_eq!(now.len() + before.len(), n, "every task done once across the two runs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host lost where MPI lets the job go on (`mpiexec -disable-auto-cleanup`): rank 2
/// is SIGKILLed mid-job; the master hears nothing from it for the host timeout, fails
/// each task it held with `ClusterError::HostLost` naming rank 2 and h3, and finishes
/// every other task on the two hosts left; the job then ends (no hang), and a rerun
/// does exactly the lost tasks.
#[test]
fn without_auto_cleanup_a_lost_hosts_tasks_fail_typed_and_the_rest_finish() {
    let _one = one_job();
    let Some(hosts) = Hosts::up(3) else { return };
    let scratch = Scratch::new();
    let dir = scratch.0.clone();
    let record = dir.join("done.bin");
    let n = 1500;
    let mut cmd = across_hosts(3);
    cmd.arg("-disable-auto-cleanup").arg(example()).arg(n.to_string());
    cmd.args(["--task-ms", "20", "--host-timeout-ms", "2000", "--resume"]).arg(&record);
    let status = kill_rank_mid_job(cmd, &dir, &record, 2, 100);
    assert!(!status.success(), "the master ends with an error, having lost a host");
    let stdout = std::fs::read_to_string(dir.join("first.out")).unwrap();
    let stderr = std::fs::read_to_string(dir.join("first.err")).unwrap();
    // (A leader may abort in MPI_Finalize meanwhile: its lines come between.)
    assert!(
        stderr.contains("ringpipe: rank 0: lost rank 2 (h3); MPI cannot finalize"),
        "the exit says why:\n{stderr}"
    );
    let (done, per_rank) = tasks_printed(&stdout);
    let lost: Vec<usize> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("lost "))
        .map(|l| {
            assert!(l.contains("was lost with rank 2 (h3)"), "a typed error naming the host: {l}");
            l.strip_prefix("task ").unwrap().split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(!lost.is_empty(), "rank 2 held tasks when it died:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("{} tasks were lost", lost.len())), "{stdout}");
    assert!(per_rank[0] > 0 && per_rank[1] > 0, "{per_rank:?}");
    let mut all: Vec<usize> = done.iter().chain(&lost).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "every task done or lost, once:\n{stderr}");

    // The rerun does the lost tasks and nothing else, on hosts set up afresh.
    drop(hosts);
    let _hosts = Hosts::up(3).expect("root, as above");
    let out = finish({
        let mut c = across_hosts(3);
        c.arg(example()).arg(n.to_string()).arg("--resume").arg(&record);
        c
    });
    assert_job_ended_well(&out);
    let (mut again, _) = tasks_printed(&String::from_utf8_lossy(&out.stdout));
    again.sort_unstable();
    let mut lost = lost;
    lost.sort_unstable();
    assert_eq!(again, lost, "the rerun did exactly the lost tasks");
}
