//! A sandboxed stage writing past its file size limit through a descriptor it
//! inherited (issue 16). Its own test binary: while it starts its worker, standard
//! output is a regular file, and a worker of another test started in that window
//! would inherit it too.

use std::io::Write;
use std::os::fd::AsRawFd;

use ringpipe::{register_stage, stage_fn, Frame, Pipeline, Sandbox, StageSpec, Violation};

ringpipe::worker_test_entry!();

// Writes as many dots to standard output as the item says.
register_stage!("fsize.dots", |_: &[u8]| Ok(stage_fn(|f: &mut Frame<'_>| {
    let n: usize = std::str::from_utf8(f.bytes())?.parse()?;
    let mut out = std::io::stdout().lock();
    out.write_all(&vec![b'.'; n])?;
    out.flush()?;
    Ok(())
})));

#[test]
fn writing_past_the_file_size_limit_through_an_inherited_descriptor_kills_the_worker() {
    let path = std::env::temp_dir().join(format!("ringpipe-fsize-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let limit = 1024;
    let p = {
        // The worker inherits standard output: a regular file while it starts.
        let _stdout = Redirect::stdout_to(&file);
        let stage = StageSpec::process_named("fsize.dots").sandbox(Sandbox::strict().file_size_limit(limit));
        Pipeline::builder().stage(stage).build().unwrap()
    };
    drop(p.submit(b"100").unwrap().wait().expect("under the limit"));
    let err = p.submit(b"4096").unwrap().wait().expect_err("past the limit");
    let failure = err.stage_failure().expect("a stage failure");
    assert_eq!(failure.violation, Some(Violation::FileSize { limit }), "{failure}");
    assert!(failure.worker_died.is_some());
    assert_eq!(p.restarts(), 1);
    // Only the stage writes dots (its harness may have written a line of its own).
    let dots = std::fs::read(&path).unwrap().iter().filter(|&&b| b == b'.').count() as u64;
    assert!((100..=limit).contains(&dots), "{dots} dots written, the limit is {limit} bytes");
    // The replacement serves. (It writes nothing: its standard output is this test's,
    // which may be a file already past the limit.)
    drop(p.submit(b"0").unwrap().wait().expect("the replacement serves"));
    let report = p.shutdown();
    assert_eq!(report.failure, None);
    std::fs::remove_file(path).unwrap();
}

/// Points fd 1 at a file until dropped.
struct Redirect {
    saved: i32,
}

impl Redirect {
    fn stdout_to(file: &std::fs::File) -> Self {
        // SAFETY: dup and dup2 on descriptors this process owns; fd 1 is restored on drop.
        unsafe {
            let saved = libc::dup(1);
            assert!(saved >= 0 && libc::dup2(file.as_raw_fd(), 1) == 1);
            Self { saved }
        }
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        // SAFETY: puts back the descriptor saved in `stdout_to`, then closes the copy.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
    }
}
