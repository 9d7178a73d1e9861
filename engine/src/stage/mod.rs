//! What a stage is, and how a worker process finds a stage's code by name.
//!
//! Function pointers do not survive `exec` under ASLR, so process stages are found
//! by a registered name: [`register_stage!`](crate::register_stage) puts a
//! [`StageFactory`] into a link-time table ([`linkme`]) that every process running
//! the same executable sees, with no start-up code to run.

mod chain;
mod halves;

pub(crate) use chain::CHAIN;
pub use chain::{Chain, ChainError};
pub use halves::{consumer_fn, producer_fn, ConsumerFn, KeepConsumer, ProducerFn};

use crate::frame::Frame;
use crate::stream::{StreamReader, StreamWriter};

/// Any error a stage returns; its `Display` text is recorded on the failed item.
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

    /// The producer half's work, for a stage declared with
    /// [`StageSpec::pipe_with_next`](crate::StageSpec::pipe_with_next): runs at the same
    /// time as the next stage's [`consume`](Self::consume) on the same item, writing
    /// the bytes it consumes into `stream`.
    ///
    /// `frame` is the producer's own copy of the item, as it was when the pair started;
    /// what the producer writes in it reaches the item through the consumer's
    /// [`merge_producer`](Self::merge_producer). Returning `Ok` finishes the stream
    /// (the consumer then sees end-of-file); an `Err`, a panic or the process's death
    /// fails it (the consumer's next read is an error, never end-of-file).
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use ringpipe_engine::stream::{StreamReader, StreamWriter};
    /// use ringpipe_engine::{BoxError, Frame, Pipeline, Stage, StageSpec};
    ///
    /// /// Streams the item's text three times.
    /// struct Repeat;
    /// impl Stage for Repeat {
    ///     fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> {
    ///         Err("producer half only".into())
    ///     }
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
    /// impl Stage for Collect {
    ///     fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> {
    ///         Err("consumer half only".into())
    ///     }
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
    /// let p = Pipeline::builder()
    ///     .stage(StageSpec::with_stage("repeat", Repeat).pipe_with_next().stream_capacity(4))
    ///     .stage(StageSpec::with_stage("collect", Collect))
    ///     .build()?;
    /// let out = p.submit(b"ab")?.wait()?;
    /// assert_eq!(&out[..], b"3babab");
    /// # drop(out);
    /// # assert!(p.shutdown().was_graceful());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        let _ = (frame, stream);
        Err("this stage is the producer half of a pair but does not implement Stage::produce".into())
    }

    /// The consumer half's work, for the stage after a
    /// [`pipe_with_next`](crate::StageSpec::pipe_with_next) stage: reads the producer's
    /// bytes from `stream` while it writes them. `frame` is the item itself (the
    /// determiner is not asked: the producer's decides for the pair).
    ///
    /// Returning before end-of-file closes the stream: the producer's next write
    /// fails, and the producer's error fails the item.
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        let _ = (frame, stream);
        Err("this stage is the consumer half of a pair but does not implement Stage::consume".into())
    }

    /// Consumer half, once both halves succeeded: brings the producer's results into
    /// the item. `producer` is the producer's frame as its `produce` left it. The
    /// default keeps the item as the consumer left it.
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        let _ = (frame, producer);
        Ok(())
    }
}

impl<S: Stage + ?Sized> Stage for Box<S> {
    fn wants(&mut self, frame: &mut Frame<'_>) -> bool {
        (**self).wants(frame)
    }
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        (**self).process(frame)
    }
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        (**self).produce(frame, stream)
    }
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        (**self).consume(frame, stream)
    }
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        (**self).merge_producer(frame, producer)
    }
}

/// A stage made of closures: see [`stage_fn`].
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

/// Makes a stage from its parameters (bytes chosen by the caller of `StageSpec::params`).
pub type MakeStage = fn(&[u8]) -> Result<Box<dyn Stage>, BoxError>;

/// A stage registered by name; see [`register_stage!`](crate::register_stage).
#[derive(Debug)]
pub struct StageFactory {
    /// The name pipelines refer to.
    pub name: &'static str,
    /// Builds an instance from parameter bytes; an `Err` means the parameters are bad.
    pub make: MakeStage,
}

/// Every registered stage of this executable.
#[linkme::distributed_slice]
pub static STAGES: [StageFactory];

/// The factory registered under `name`, if any.
pub fn find_stage(name: &str) -> Option<&'static StageFactory> {
    STAGES.iter().find(|f| f.name == name)
}

/// A stage worker processes can build by name, with typed parameters: its
/// registered [`NAME`](Self::NAME), its [`Params`](Self::Params) and how it is built
/// from them. Register it once with [`register!`](crate::register); place it with
/// [`StageSpec::process`](crate::StageSpec::process)`::<S>(params)` (or `thread`).
///
/// ```
/// use ringpipe_engine::{register, BoxError, Frame, Pipeline, Registered, Stage, StageSpec};
///
/// /// Adds a constant to every byte.
/// struct Add(u8);
///
/// impl Stage for Add {
///     fn process(&mut self, f: &mut Frame<'_>) -> Result<(), BoxError> {
///         f.bytes_mut().iter_mut().for_each(|b| *b = b.wrapping_add(self.0));
///         Ok(())
///     }
/// }
///
/// impl Registered for Add {
///     const NAME: &'static str = "doc.add";
///     type Params = u8;
///     fn from_params(k: u8) -> Result<Self, BoxError> {
///         Ok(Add(k))
///     }
/// }
///
/// register!(Add);
///
/// let p = Pipeline::builder().stage(StageSpec::thread::<Add>(2)).build()?;
/// assert_eq!(&p.submit(b"abc")?.wait()?[..], b"cde");
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Registered: Stage + Sized + 'static {
    /// The name it is registered under; unique in the program.
    const NAME: &'static str;
    /// What it is built from. They cross into the worker process as bytes.
    type Params: Params;
    /// Builds the stage (in its worker process, or on a thread of the parent); an
    /// error fails `build()` with [`BuildError::StageInit`](crate::BuildError::StageInit).
    fn from_params(params: Self::Params) -> Result<Self, BoxError>;
}

/// Stage parameters as they cross into a worker process: encoded by the parent,
/// decoded by the worker. Implemented for `()`, the integer types (little-endian),
/// `bool`, `Vec<u8>` and `String`; implement it for a struct of your own.
pub trait Params: Sized {
    /// The bytes that stand for these parameters.
    fn encode(&self) -> Vec<u8>;
    /// Reads them back; bytes [`encode`](Self::encode) did not make are an error.
    fn decode(bytes: &[u8]) -> Result<Self, BoxError>;
}

impl Params for () {
    fn encode(&self) -> Vec<u8> {
        Vec::new()
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match bytes {
            [] => Ok(()),
            _ => Err(format!("this stage takes no parameters, got {} bytes", bytes.len()).into()),
        }
    }
}

macro_rules! int_params {
    ($($t:ty),*) => {$(
        impl Params for $t {
            fn encode(&self) -> Vec<u8> {
                self.to_le_bytes().to_vec()
            }
            fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
                let bytes = bytes.try_into().map_err(|_| {
                    format!("expected {} parameter bytes, got {}", std::mem::size_of::<$t>(), bytes.len())
                })?;
                Ok(<$t>::from_le_bytes(bytes))
            }
        }
    )*};
}
int_params!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Params for bool {
    fn encode(&self) -> Vec<u8> {
        vec![u8::from(*self)]
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match bytes {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err("expected one parameter byte, 0 or 1".into()),
        }
    }
}

impl Params for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(bytes.to_vec())
    }
}

impl Params for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

/// Builds a [`Registered`] stage from parameter bytes (what [`register!`](crate::register)
/// registers).
#[doc(hidden)]
pub fn __make_registered<S: Registered>(params: &[u8]) -> Result<Box<dyn Stage>, BoxError> {
    Ok(Box::new(S::from_params(S::Params::decode(params)?)?))
}

/// Boxes the result of a stage constructor (used by [`register_stage!`](crate::register_stage)).
#[doc(hidden)]
pub fn __box_stage<S: Stage + 'static>(made: Result<S, BoxError>) -> Result<Box<dyn Stage>, BoxError> {
    made.map(|s| Box::new(s) as Box<dyn Stage>)
}

/// Registers [`Registered`] stages, so worker processes can build them by name.
///
/// ```
/// # use ringpipe_engine::{register, BoxError, Frame, Registered, Stage};
/// # struct Noop;
/// # impl Stage for Noop { fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> { Ok(()) } }
/// # impl Registered for Noop {
/// #     const NAME: &'static str = "doc.noop";
/// #     type Params = ();
/// #     fn from_params((): ()) -> Result<Self, BoxError> { Ok(Noop) }
/// # }
/// register!(Noop);
/// ```
#[macro_export]
macro_rules! register {
    ($($stage:ty),+ $(,)?) => {$(
        const _: () = {
            #[$crate::__linkme::distributed_slice($crate::__STAGES)]
            #[linkme(crate = $crate::__linkme)]
            static STAGE: $crate::__StageFactory = $crate::__StageFactory {
                name: <$stage as $crate::Registered>::NAME,
                make: $crate::__make_registered::<$stage>,
            };
        };
    )+};
}

/// Registers a stage under a name by its constructor from parameter bytes: the
/// dynamic form of [`register!`](crate::register), for stages made by a closure.
///
/// The constructor gets the stage's parameter bytes and returns
/// `Result<impl Stage, BoxError>`; an error there fails `build()` with
/// [`BuildError::StageInit`](crate::BuildError::StageInit).
///
/// ```
/// use ringpipe_engine::{register_stage, stage_fn, Frame};
/// register_stage!("add", |params: &[u8]| {
///     let k = *params.first().ok_or("`add` needs one parameter byte")?;
///     Ok(stage_fn(move |f: &mut Frame<'_>| {
///         f.bytes_mut().iter_mut().for_each(|b| *b = b.wrapping_add(k));
///         Ok(())
///     }))
/// });
/// ```
#[macro_export]
macro_rules! register_stage {
    ($id:ident, $name:expr, $make:expr) => {
        $crate::register_stage!($name, $make);
    };
    ($name:expr, $make:expr) => {
        const _: () = {
            #[$crate::__linkme::distributed_slice($crate::__STAGES)]
            #[linkme(crate = $crate::__linkme)]
            static STAGE: $crate::__StageFactory = $crate::__StageFactory {
                name: $name,
                make: {
                    fn make(
                        params: &[u8],
                    ) -> ::std::result::Result<::std::boxed::Box<dyn $crate::Stage>, $crate::BoxError>
                    {
                        $crate::__box_stage(($make)(params))
                    }
                    make
                },
            };
        };
    };
}
