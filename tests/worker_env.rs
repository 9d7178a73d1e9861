//! A worker process inherits neither an MPI launcher's variables nor descriptors the
//! parent left open: otherwise a worker reaching MPI initialisation would join the job
//! as its parent's rank, and would hold the launcher's sockets open. Under a launcher
//! it ignores SIGUSR1, which MPICH's Hydra sends a job's processes when a rank fails.

use ringpipe::{register_stage, stage_fn, Frame, Pipeline, StageSpec};

ringpipe::worker_test_entry!();

const LAUNCHER_VARS: [&str; 5] =
    ["PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "HYDI_CONTROL_FD", "HYDRA_FOO"];

// Replaces the item by what the worker sees: for each variable named in the item
// (one per line) `name=value` or `name unset`, then `fd N open|closed` for the
// descriptor number in the parameters.
register_stage!("env.report", |p: &[u8]| {
    let fd = i32::from_le_bytes(p.try_into().map_err(|_| "env.report takes an fd number")?);
    Ok(stage_fn(move |f: &mut Frame<'_>| {
        let names = String::from_utf8(f.bytes().to_vec())?;
        let mut report = String::new();
        for name in names.lines() {
            match std::env::var(name) {
                Ok(v) => report.push_str(&format!("{name}={v}\n")),
                Err(_) => report.push_str(&format!("{name} unset\n")),
            }
        }
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        report.push_str(&format!("fd {fd} {}\n", if open { "open" } else { "closed" }));
        // SAFETY: a query: a null new action only reads the current one into `old`.
        let usr1 = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut old);
            old.sa_sigaction
        };
        report.push_str(if usr1 == libc::SIG_IGN { "SIGUSR1 ignored\n" } else { "SIGUSR1 not ignored\n" });
        f.set_len(report.len())?;
        f.bytes_mut().copy_from_slice(report.as_bytes());
        Ok(())
    }))
});

#[test]
fn workers_inherit_no_launcher_variables_and_no_stray_descriptors() {
    for name in LAUNCHER_VARS {
        std::env::set_var(name, "7");
    }
    std::env::set_var("RINGPIPE_TEST_KEPT", "yes");
    // A pipe without close-on-exec, as a launcher leaves its sockets.
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // Moved above the worker's own descriptors (3 to 5), without close-on-exec.
    // SAFETY: F_DUPFD duplicates a descriptor this test holds.
    let stray = unsafe { libc::fcntl(fds[1], libc::F_DUPFD, 100) };
    assert!(stray >= 100);
    let p = Pipeline::builder()
        .stage(StageSpec::process_named("env.report").params(stray.to_le_bytes()))
        .frame_capacity(4096)
        .build()
        .unwrap();
    let ask: String = LAUNCHER_VARS.iter().chain(&["RINGPIPE_TEST_KEPT"]).map(|n| format!("{n}\n")).collect();
    let out = p.submit(ask.as_bytes()).unwrap().wait().unwrap();
    let report = String::from_utf8(out.to_vec()).unwrap();
    for name in LAUNCHER_VARS {
        assert!(report.contains(&format!("{name} unset")), "{report}");
    }
    assert!(report.contains("RINGPIPE_TEST_KEPT=yes"), "other variables pass: {report}");
    assert!(report.contains(&format!("fd {stray} closed")), "{report}");
    // Hydra signals a failed job's processes with SIGUSR1: a worker must not die of it.
    assert!(report.contains("SIGUSR1 ignored"), "{report}");
    drop(out);
    assert!(p.shutdown().was_graceful());
    // SAFETY: these descriptors are this test's, each closed once.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
        libc::close(stray);
    }
}
