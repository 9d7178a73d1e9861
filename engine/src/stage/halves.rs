//! The two halves of a producer/consumer pair ([`Producer`], [`Consumer`]), and
//! halves made of closures ([`producer_fn`], [`consumer_fn`]).

use super::BoxError;
use crate::frame::Frame;
use crate::stream::{StreamReader, StreamWriter};

/// The first half of a producer/consumer pair
/// ([`PairSpec`](crate::PairSpec)): for each item it writes a byte stream that the
/// pair's [`Consumer`] reads at the same time.
///
/// ```
/// use std::io::{Read, Write};
/// use ringpipe_engine::stream::{StreamReader, StreamWriter};
/// use ringpipe_engine::{BoxError, Consumer, ConsumerSpec, Frame, PairSpec, Pipeline, Producer, ProducerSpec};
///
/// /// Streams the item's text three times.
/// struct Repeat;
/// impl Producer for Repeat {
///     fn produce(&mut self, f: &mut Frame<'_>, out: &mut StreamWriter) -> Result<(), BoxError> {
///         for _ in 0..3 {
///             out.write_all(f.bytes())?;
///         }
///         f.bytes_mut()[0] = b'3'; // the producer's own result, merged below
///         Ok(())
///     }
/// }
///
/// /// Replaces the item by what it read, then takes the producer's first byte.
/// struct Collect;
/// impl Consumer for Collect {
///     fn consume(&mut self, f: &mut Frame<'_>, input: &mut StreamReader) -> Result<(), BoxError> {
///         let mut all = Vec::new();
///         input.read_to_end(&mut all)?; // EOF only because the producer succeeded
///         f.set_len(all.len())?;
///         f.bytes_mut().copy_from_slice(&all);
///         Ok(())
///     }
///     fn merge_producer(&mut self, f: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
///         f.bytes_mut()[0] = producer[0];
///         Ok(())
///     }
/// }
///
/// let pair = PairSpec::new(
///     ProducerSpec::with_producer("repeat", Repeat),
///     ConsumerSpec::with_consumer("collect", Collect),
/// );
/// let p = Pipeline::builder().pair(pair.stream_capacity(4)).build()?;
/// let out = p.submit(b"ab")?.wait()?;
/// assert_eq!(&out[..], b"3babab");
/// # drop(out);
/// # assert!(p.shutdown().was_graceful());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Producer: Send {
    /// Whether the pair takes `frame`; it decides for both halves (the consumer is
    /// not asked). An item not wanted moves on untouched by either half.
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        let _ = frame;
        true
    }

    /// Writes the item's stream. Runs at the same time as the consumer's
    /// [`consume`](Consumer::consume) on the same item.
    ///
    /// `frame` is the producer's own copy of the item, as it was when the pair started;
    /// what the producer writes in it reaches the item through the consumer's
    /// [`merge_producer`](Consumer::merge_producer). Returning `Ok` finishes the stream
    /// (the consumer then sees end-of-file); an `Err`, a panic or the process's death
    /// fails it (the consumer's next read is an error, never end-of-file).
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError>;
}

/// The second half of a producer/consumer pair ([`PairSpec`](crate::PairSpec)):
/// reads the stream its [`Producer`] writes for the item, while it writes it. See
/// [`Producer`] for an example of both.
///
/// ```
/// use std::io::Read;
/// use ringpipe_engine::stream::StreamReader;
/// use ringpipe_engine::{BoxError, Consumer, Frame};
/// /// Counts the stream's bytes into the item's first 8 bytes.
/// struct Count;
/// impl Consumer for Count {
///     fn consume(&mut self, f: &mut Frame<'_>, input: &mut StreamReader) -> Result<(), BoxError> {
///         let n = std::io::copy(input, &mut std::io::sink())?;
///         *f.header_mut::<u64>()? = n;
///         Ok(())
///     }
/// }
/// ```
pub trait Consumer: Send {
    /// Reads the producer's bytes from `stream`. `frame` is the item itself, and the
    /// item leaves the pair with this frame.
    ///
    /// Returning before end-of-file closes the stream: the producer's next write
    /// fails, and the producer's error fails the item.
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError>;

    /// Once both halves succeeded: brings the producer's results into the item.
    /// `producer` is the producer's frame as its `produce` left it. The default keeps
    /// the item as `consume` left it.
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        let _ = (frame, producer);
        Ok(())
    }
}

impl<P: Producer + ?Sized> Producer for Box<P> {
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        (**self).wants(frame)
    }
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        (**self).produce(frame, stream)
    }
}

impl<C: Consumer + ?Sized> Consumer for Box<C> {
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        (**self).consume(frame, stream)
    }
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        (**self).merge_producer(frame, producer)
    }
}

/// A [`Producer`] made of closures: see [`producer_fn`].
///
/// See [`producer_fn`] for an example.
pub struct ProducerFn<W, D> {
    work: W,
    determiner: D,
}

/// A producer from a closure that writes the item's stream.
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

impl<W, D> Producer for ProducerFn<W, D>
where
    W: FnMut(&mut Frame<'_>, &mut StreamWriter) -> Result<(), BoxError> + Send,
    D: FnMut(&mut Frame<'_>) -> bool + Send,
{
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        (self.determiner)(frame)
    }
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        (self.work)(frame, stream)
    }
}

/// The merge step of a [`consumer_fn`] without [`with_merge`](ConsumerFn::with_merge):
/// keeps the consumer's frame as it is.
///
/// See [`consumer_fn`] for an example.
pub type KeepConsumer = fn(&mut Frame<'_>, &[u8]) -> Result<(), BoxError>;

/// A [`Consumer`] made of closures: see [`consumer_fn`].
///
/// See [`consumer_fn`] for an example.
pub struct ConsumerFn<W, M> {
    work: W,
    merge: M,
}

/// A consumer from a closure that reads the item's stream.
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
    /// Adds the merge step ([`Consumer::merge_producer`]).
    pub fn with_merge<M2>(self, merge: M2) -> ConsumerFn<W, M2>
    where
        M2: FnMut(&mut Frame<'_>, &[u8]) -> Result<(), BoxError> + Send,
    {
        ConsumerFn { work: self.work, merge }
    }
}

impl<W, M> Consumer for ConsumerFn<W, M>
where
    W: FnMut(&mut Frame<'_>, &mut StreamReader) -> Result<(), BoxError> + Send,
    M: FnMut(&mut Frame<'_>, &[u8]) -> Result<(), BoxError> + Send,
{
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        (self.work)(frame, stream)
    }
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        (self.merge)(frame, producer)
    }
}
