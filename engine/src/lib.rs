//! The mechanism behind [ringpipe](https://docs.rs/ringpipe): a shared segment of
//! SPSC rings and frames, stages in worker processes or threads, and the pipeline
//! that ties them together.
//!
//! Modules in dependency order, each building only on those before it:
//! `sync` → `wait` (spin, then futex) → `ring` (SPSC over any memory) → `stream`
//! (byte ring) → `pair` (a pair's hand-off) → `memory` (the segment, whose layout
//! places the headers of the three before it) → `frame` → `route` → `stage` →
//! `sandbox` → `worker` → `pipeline` (the user API, no `unsafe`) → `pool`. `ARCHITECTURE.md` at
//! the repository root walks through them.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod frame;
/// Hostile shared memory for the fuzz target in `fuzz/`: not part of the API.
#[cfg(any(test, feature = "unstable-fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod heap;
mod memory;
mod pair;
mod pipeline;
mod pool;
mod ring;
mod route;
mod sandbox;
mod stage;
pub mod stream;
mod sync;
pub mod view;
mod wait;
mod worker;

pub use frame::{Frame, FrameError};
pub use memory::{
    LayoutError, SegmentError, MAX_FRAME_CAPACITY, MAX_REPLICAS, MAX_SLOTS, MAX_STAGES, MAX_STREAM_CAPACITY,
};
pub use pipeline::{
    BuildError, Builder, Completions, ConsumerSpec, EngineFailure, ItemError, Map, NewFrame, OnComplete,
    Output, PairSpec, Pipeline, PipelineStats, ProducerSpec, RanOn, ShutdownReport, StageEvent, StageFailure,
    StageOutcome, StageSpec, StageStats, SubmitError, Ticket, TrySubmitError, WorkerExit,
    DEFAULT_FRAME_CAPACITY, DEFAULT_MAX_IN_FLIGHT, DEFAULT_STREAM_CAPACITY, DROP_DRAIN_TIMEOUT,
    MAX_STAGE_TIMEOUT,
};
pub use pool::{Pool, PoolBuilder, DEFAULT_POOL_WINDOW, MAX_WORKERS};
pub use sandbox::{Landlock, Sandbox, SandboxReport, Violation};
pub use stage::{
    consumer_fn, producer_fn, stage_fn, BoxError, Chain, ChainError, Consumer, ConsumerFn, FnStage,
    KeepConsumer, Params, Producer, ProducerFn, Registered, Stage, StageKind,
};
pub use worker::worker_hook;

// What `register_stage!` and `worker_test_entry!` expand to: not part of the API.
#[doc(hidden)]
pub use linkme as __linkme;
#[doc(hidden)]
pub use stage::{
    __box_consumer, __box_producer, __box_stage, __make_consumer, __make_producer, __make_registered,
    StageCode as __StageCode, StageFactory as __StageFactory, STAGES as __STAGES,
};
