//! Ready-made ringpipe stages for backup hot paths.
//!
//! Each stage is registered by name (so it can run in a worker process) and is a
//! plain [`Stage`](ringpipe_engine::Stage) value (so it can run on a thread).
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod hash;
