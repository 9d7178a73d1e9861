//! # ringpipe
//!
//! A shared-memory ring-buffer pipeline engine for high-throughput multi-process
//! work. Work items are byte frames in one shared memory segment; they travel from
//! stage to stage through lock-free single-producer single-consumer rings without
//! their bytes being copied; each stage runs in a worker process (the same
//! executable, re-executed) or on a thread of the parent.
//!
//! ```no_run
//! use ringpipe::{register, BoxError, Frame, Pipeline, Registered, Stage, StageSpec};
//!
//! /// Upper-cases every item.
//! struct Upper;
//!
//! impl Stage for Upper {
//!     fn process(&mut self, f: &mut Frame<'_>) -> Result<(), BoxError> {
//!         f.bytes_mut().make_ascii_uppercase();
//!         Ok(())
//!     }
//! }
//!
//! impl Registered for Upper {
//!     const NAME: &'static str = "upper";
//!     type Params = ();
//!     fn from_params((): ()) -> Result<Self, BoxError> {
//!         Ok(Upper)
//!     }
//! }
//!
//! register!(Upper); // worker processes build it by name
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     ringpipe::worker_hook(); // first line of main: worker processes start here
//!     let pipeline = Pipeline::builder()
//!         .stage(StageSpec::process::<Upper>(()).replicas(2))
//!         .max_in_flight(64)
//!         .build()?;
//!     let out = pipeline.submit(b"hello")?.wait()?; // a stage's failure is an Err too
//!     assert_eq!(&out[..], b"HELLO");
//!     drop(out); // the frame goes back to the pipeline
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

#[cfg(feature = "mpi")]
pub mod cluster;
