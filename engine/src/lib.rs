//! The mechanism behind [ringpipe](https://docs.rs/ringpipe): a shared segment of
//! SPSC rings and frames, stages in worker processes or threads, and the pipeline
//! that ties them together.
//!
//! Modules in dependency order, each building only on those before it:
//! `sync` → `wait` (spin, then futex) → `ring` (SPSC over any memory) → `stream`
//! (byte ring) → `pair` (a pair's hand-off) → `memory` (the segment, whose layout
//! places the headers of the three before it) → `frame` → `route` → `stage` →
//! `worker` → `pipeline` (the user API, no `unsafe`) → `pool`. `ARCHITECTURE.md` at
//! the repository root walks through them.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod frame;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod heap;
pub mod memory;
mod pair;
mod pipeline;
mod pool;
pub mod ring;
mod route;
mod stage;
pub mod stream;
mod sync;
pub mod wait;
mod worker;

pub use frame::{Frame, FrameError};
pub use pipeline::{
    BuildError, Builder, Completions, EngineFailure, ItemError, Map, NewFrame, OnComplete, Output, Pipeline,
    PipelineStats, RanOn, ShutdownReport, StageEvent, StageFailure, StageOutcome, StageSpec, StageStats,
    SubmitError, Ticket, TrySubmitError, WorkerExit, DEFAULT_FRAME_CAPACITY, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_STREAM_CAPACITY, DROP_DRAIN_TIMEOUT, MAX_STAGE_TIMEOUT,
};
pub use pool::{Pool, PoolBuilder, DEFAULT_POOL_WINDOW, MAX_WORKERS};
pub use stage::{
    consumer_fn, find_stage, producer_fn, stage_fn, BoxError, Chain, ChainError, ConsumerFn, FnStage,
    KeepConsumer, MakeStage, ProducerFn, Stage, StageFactory, CHAIN, STAGES,
};
pub use sync::CachePadded;
pub use worker::{worker_hook, TEST_ENTRY, WORKER_ENV};

#[doc(hidden)]
pub use linkme as __linkme;
#[doc(hidden)]
pub use stage::__box_stage;
