//! The shared segment: one sealed, anonymous memfd per pipeline, and its layout.
//!
//! This module (with `ring` and `wait`) is where the engine's `unsafe` lives. Upper
//! layers get typed pointers from [`Segment`] whose bounds were checked against a
//! [`Layout`] computed locally, never against numbers read from shared memory.

mod counters;
mod error;
mod journal;
mod layout;
mod segment;

pub(crate) use counters::{Counters, Tally};
pub(crate) use journal::Journal;

#[cfg(any(test, feature = "unstable-fuzzing"))]
pub use layout::SegmentHeader;
pub use layout::{
    Layout, LayoutError, SlotFailure, SlotHeader, StageRecord, ERROR_CAPACITY, FLAG_HOLD_INPUT,
    FLAG_ORDERED_INPUT, MAX_FRAME_CAPACITY, MAX_REPLICAS, MAX_RINGS, MAX_SLOTS, MAX_STAGES,
    MAX_STREAM_CAPACITY, ROLE_CONSUMER, ROLE_PRODUCER,
};
pub(crate) use segment::SlotParts;
pub use segment::{Segment, SegmentError, STATE_BROKEN, STATE_RUNNING, STATE_SHUTDOWN};

#[cfg(test)]
mod tests;
