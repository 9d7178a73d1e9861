//! Pair halves made of closures: [`producer_fn`] and [`consumer_fn`].

use super::{BoxError, Stage};
use crate::frame::Frame;
use crate::stream::{StreamReader, StreamWriter};

const NOT_PAIRED: &str = "a pair half was used as a plain stage: declare the producer with \
                          StageSpec::pipe_with_next and put the consumer right after it";

/// The producer half of a pair, made of closures: see [`producer_fn`].
pub struct ProducerFn<W, D> {
    work: W,
    determiner: D,
}

/// A producer half from a closure that writes the item's stream.
///
/// ```
/// use std::io::Write;
/// use ringpipe_engine::{producer_fn, Frame};
/// let _ = producer_fn(|f: &mut Frame<'_>, out: &mut ringpipe_engine::stream::StreamWriter| {
///     out.write_all(f.bytes())?; // stream the item's bytes, say
///     Ok(())
/// });
/// ```
pub fn producer_fn<W>(work: W) -> ProducerFn<W, fn(&mut Frame<'_>) -> bool>
where
    W: FnMut(&mut Frame<'_>, &mut StreamWriter) -> Result<(), BoxError> + Send,
{
    ProducerFn { work, determiner: |_| true }
}

impl<W, D> ProducerFn<W, D> {
    /// Adds a determiner: an item it declines skips both halves of the pair.
    pub fn with_determiner<D2>(self, determiner: D2) -> ProducerFn<W, D2>
    where
        D2: FnMut(&mut Frame<'_>) -> bool + Send,
    {
        ProducerFn { work: self.work, determiner }
    }
}

impl<W, D> Stage for ProducerFn<W, D>
where
    W: FnMut(&mut Frame<'_>, &mut StreamWriter) -> Result<(), BoxError> + Send,
    D: FnMut(&mut Frame<'_>) -> bool + Send,
{
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        (self.determiner)(frame)
    }
    fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> {
        Err(NOT_PAIRED.into())
    }
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        (self.work)(frame, stream)
    }
}

/// The merge step of a [`consumer_fn`] without [`with_merge`](ConsumerFn::with_merge):
/// keeps the consumer's frame as it is.
pub type KeepConsumer = fn(&mut Frame<'_>, &[u8]) -> Result<(), BoxError>;

/// The consumer half of a pair, made of closures: see [`consumer_fn`].
pub struct ConsumerFn<W, M> {
    work: W,
    merge: M,
}

/// A consumer half from a closure that reads the item's stream.
///
/// ```
/// use std::io::Read;
/// use ringpipe_engine::{consumer_fn, Frame};
/// let _ = consumer_fn(|f: &mut Frame<'_>, input: &mut ringpipe_engine::stream::StreamReader| {
///     let n = std::io::copy(input, &mut std::io::sink())?;
///     f.header_mut::<u64>()?.clone_from(&n); // record how many bytes came
///     Ok(())
/// })
/// // and keep the producer's first 8 bytes of results, say
/// .with_merge(|f: &mut Frame<'_>, producer: &[u8]| {
///     f.bytes_mut()[8..16].copy_from_slice(&producer[8..16]);
///     Ok(())
/// });
/// ```
pub fn consumer_fn<W>(work: W) -> ConsumerFn<W, KeepConsumer>
where
    W: FnMut(&mut Frame<'_>, &mut StreamReader) -> Result<(), BoxError> + Send,
{
    ConsumerFn { work, merge: |_, _| Ok(()) }
}

impl<W, M> ConsumerFn<W, M> {
    /// Adds the merge step ([`Stage::merge_producer`]).
    pub fn with_merge<M2>(self, merge: M2) -> ConsumerFn<W, M2>
    where
        M2: FnMut(&mut Frame<'_>, &[u8]) -> Result<(), BoxError> + Send,
    {
        ConsumerFn { work: self.work, merge }
    }
}

impl<W, M> Stage for ConsumerFn<W, M>
where
    W: FnMut(&mut Frame<'_>, &mut StreamReader) -> Result<(), BoxError> + Send,
    M: FnMut(&mut Frame<'_>, &[u8]) -> Result<(), BoxError> + Send,
{
    fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> {
        Err(NOT_PAIRED.into())
    }
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        (self.work)(frame, stream)
    }
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        (self.merge)(frame, producer)
    }
}
