//! # ringpipe
//!
//! A shared-memory ring-buffer pipeline engine for high-throughput multi-process
//! work. Work items are byte frames in one shared memory segment; they travel from
//! stage to stage through lock-free single-producer single-consumer rings without
//! their bytes being copied; each stage runs in a worker process (the same
//! executable, re-executed) or on a thread of the parent.
//!
//! ```no_run
//! use ringpipe::{register_stage, stage_fn, BoxError, Frame, Pipeline, StageSpec};
//!
//! register_stage!("upper", |_params: &[u8]| {
//!     Ok(stage_fn(|f: &mut Frame<'_>| {
//!         f.bytes_mut().make_ascii_uppercase();
//!         Ok(())
//!     }))
//! });
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     ringpipe::worker_hook(); // first line of main: worker processes start here
//!     let pipeline = Pipeline::builder().stage(StageSpec::process_named("upper")).build()?;
//!     let out = pipeline.submit(b"hello")?.wait()?;
//!     assert_eq!(&out[..], b"HELLO");
//!     drop(out);
//!     assert!(pipeline.shutdown().was_graceful());
//!     Ok(())
//! }
//! ```
//!
//! ## Where the hook goes
//! - **A binary:** `ringpipe::worker_hook();` as the first line of `main`.
//! - **Integration tests** (`cargo test`): `ringpipe::worker_test_entry!();` once at
//!   the root of each test crate; workers re-run the test binary filtered to it.
//! - **Criterion benches:** `harness = false` and a `main` that calls
//!   `ringpipe::worker_hook()` before running the benchmark groups.
//!
//! A binary that forgot the hook gets [`BuildError::HookMissing`] from `build()`.
#![deny(missing_docs)]

pub use ringpipe_engine::*;

/// Ready-made stages for backup hot paths.
pub use ringpipe_stages as stages;
