//! The mechanism behind ringpipe. Start at the bottom: [`ring`] and [`wait`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod memory;
pub mod ring;
mod sync;
pub mod wait;
pub use sync::CachePadded;
