//! What a stage is, and how a worker process finds a stage's code by name.
//!
//! A plain stage implements [`Stage`]; the two halves of a producer/consumer pair
//! implement [`Producer`] and [`Consumer`]. Function pointers do not survive `exec`
//! under ASLR, so process stages are found by a registered name:
//! [`register!`](crate::register) puts a factory into a link-time table ([`linkme`])
//! that every process running the same executable sees, with no start-up code to run
//! (`registry.rs`).

mod chain;
mod halves;
mod registry;

pub(crate) use chain::CHAIN;
pub use chain::{Chain, ChainError};
pub use halves::{consumer_fn, producer_fn, Consumer, ConsumerFn, KeepConsumer, Producer, ProducerFn};
pub use registry::{
    __box_consumer, __box_producer, __box_stage, __make_consumer, __make_producer, __make_registered,
    find_stage, Params, Registered, StageFactory, STAGES,
};

use crate::frame::Frame;

/// Any error a stage returns; its `Display` text is recorded on the failed item.
///
/// ```
/// use ringpipe_engine::{BoxError, Frame};
/// fn check(f: &Frame<'_>) -> Result<(), BoxError> {
///     if f.is_empty() {
///         return Err("empty item".into()); // any error type converts
///     }
///     let _n: u32 = std::str::from_utf8(f.bytes())?.trim().parse()?;
///     Ok(())
/// }
/// # let _ = check;
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The code of one pipeline stage.
///
/// One instance per worker process or thread; it may keep state between items.
///
/// ```
/// use ringpipe_engine::{BoxError, Frame, Stage};
/// struct Upper;
/// impl Stage for Upper {
///     fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
///         frame.bytes_mut().make_ascii_uppercase();
///         Ok(())
///     }
/// }
/// ```
pub trait Stage: Send {
    /// Whether this stage wants `frame` (`atbu.mp_pipeline`'s `is_for_stage`). It may read and
    /// change the frame. An item not wanted moves on untouched by `process`.
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        let _ = frame;
        true
    }

    /// Does the stage's work on one item. An `Err` (or a panic) fails the item:
    /// later stages do not run it, and the pipeline goes on with other items.
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError>;
}

impl<S: Stage + ?Sized> Stage for Box<S> {
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        (**self).wants(frame)
    }
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        (**self).process(frame)
    }
}

/// What a registered name stands for: a plain stage or one half of a
/// producer/consumer pair. Placing a name as something it is not is
/// [`BuildError::WrongKind`](crate::BuildError::WrongKind).
///
/// ```
/// use ringpipe_engine::{BuildError, ConsumerSpec, PairSpec, Pipeline, ProducerSpec, StageKind};
/// # use ringpipe_engine::{register_stage, stage_fn};
/// # register_stage!("doc.plain", |_: &[u8]| Ok(stage_fn(|_| Ok(()))));
/// // "doc.plain" is registered as a plain stage: it cannot be a pair's producer.
/// let pair = PairSpec::new(ProducerSpec::thread_named("doc.plain"), ConsumerSpec::thread_named("doc.plain"));
/// let err = Pipeline::builder().pair(pair).build().unwrap_err();
/// let BuildError::WrongKind { registered, placed, .. } = err else { panic!("{err}") };
/// assert_eq!((registered, placed), (StageKind::Stage, StageKind::Producer));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StageKind {
    /// A [`Stage`].
    Stage,
    /// A [`Producer`]: the first half of a pair.
    Producer,
    /// A [`Consumer`]: the second half of a pair.
    Consumer,
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stage => "a stage",
            Self::Producer => "a pair's producer",
            Self::Consumer => "a pair's consumer",
        })
    }
}

/// An instance of stage code of any kind, as a runner holds it.
#[doc(hidden)]
pub enum StageCode {
    /// A plain stage.
    Stage(Box<dyn Stage>),
    /// A pair's first half.
    Producer(Box<dyn Producer>),
    /// A pair's second half.
    Consumer(Box<dyn Consumer>),
}

/// A stage made of closures: see [`stage_fn`].
///
/// See [`stage_fn`] for an example.
pub struct FnStage<W, D> {
    work: W,
    determiner: D,
}

/// A stage from a work closure (every item wanted).
///
/// ```
/// use ringpipe_engine::{stage_fn, Frame};
/// let double = stage_fn(|f: &mut Frame<'_>| {
///     let v: &mut u64 = f.header_mut()?;
///     *v *= 2;
///     Ok(())
/// })
/// .with_determiner(|f: &mut Frame<'_>| !f.is_empty());
/// # let _ = double;
/// ```
pub fn stage_fn<W>(work: W) -> FnStage<W, fn(&mut Frame<'_>) -> bool>
where
    W: FnMut(&mut Frame<'_>) -> Result<(), BoxError> + Send,
{
    FnStage { work, determiner: |_| true }
}

impl<W, D> FnStage<W, D> {
    /// Adds a determiner (`atbu.mp_pipeline`'s `fn_determiner`).
    pub fn with_determiner<D2>(self, determiner: D2) -> FnStage<W, D2>
    where
        D2: FnMut(&mut Frame<'_>) -> bool + Send,
    {
        FnStage { work: self.work, determiner }
    }
}

impl<W, D> Stage for FnStage<W, D>
where
    W: FnMut(&mut Frame<'_>) -> Result<(), BoxError> + Send,
    D: FnMut(&mut Frame<'_>) -> bool + Send,
{
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        (self.determiner)(frame)
    }
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        (self.work)(frame)
    }
}
