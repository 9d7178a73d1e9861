//! Describing a producer/consumer pair: one builder element made of a
//! [`ProducerSpec`] and a [`ConsumerSpec`].

use super::spec::{Placement, StageEvent, StageSpec, DEFAULT_STREAM_CAPACITY};
use crate::stage::{Consumer, Params, Producer, Registered, StageCode, StageKind};

/// A producer/consumer pair, before it is built (`atbu.mp_pipeline`'s
/// `is_pipe_with_next_stage`): for each item both halves run at the same time, the
/// [`Producer`] writing a byte stream and the [`Consumer`] reading it, through a byte
/// ring in the shared segment. Either half may be a process or a thread.
///
/// The producer's determiner decides for the pair. The item leaves the pair when both
/// halves are done, with the consumer's frame, into which
/// [`Consumer::merge_producer`] brings the producer's results. In stage indices
/// (statistics, [`StageFailure::stage`](crate::StageFailure::stage), events) a pair
/// counts as two stages: its producer, then its consumer. Each half runs once: a
/// pair has no replicas and no timeout.
///
/// ```
/// use ringpipe_engine::{ConsumerSpec, PairSpec, ProducerSpec};
/// let pair = PairSpec::new(ProducerSpec::process_named("read-file"), ConsumerSpec::thread_named("compress"))
///     .stream_capacity(256 << 10);
/// assert_eq!(pair.capacity(), 256 << 10);
/// ```
#[must_use = "a pair spec does nothing until it is given to `Builder::pair`"]
pub struct PairSpec {
    pub(crate) producer: StageSpec,
    pub(crate) consumer: StageSpec,
}

impl PairSpec {
    /// The pair of `producer` and `consumer`, with a stream ring of
    /// [`DEFAULT_STREAM_CAPACITY`] bytes.
    pub fn new(producer: ProducerSpec, consumer: ConsumerSpec) -> Self {
        let mut producer = producer.0;
        producer.stream = Some(DEFAULT_STREAM_CAPACITY);
        Self { producer, consumer: consumer.0 }
    }

    /// Bytes of the stream's ring (1 to [`MAX_STREAM_CAPACITY`](crate::MAX_STREAM_CAPACITY);
    /// otherwise [`BuildError::BadStreamCapacity`](crate::BuildError::BadStreamCapacity)).
    /// Streams of any length pass through any ring size; a larger ring lets the
    /// halves run apart for longer.
    pub fn stream_capacity(mut self, bytes: usize) -> Self {
        self.producer.stream = Some(bytes);
        self
    }

    /// Bytes of the stream's ring.
    pub fn capacity(&self) -> usize {
        self.producer.stream.unwrap_or(DEFAULT_STREAM_CAPACITY)
    }
}

/// Generates the placement constructors and setters shared by the two halves.
macro_rules! half_spec {
    ($spec:ident, $trait:ident, $kind:ident, $with:ident, $what:literal) => {
        impl $spec {
            #[doc = concat!("`", stringify!($trait), "` `T` built from `params`, in its own worker process.")]
            pub fn process<T: Registered + $trait>(params: T::Params) -> Self {
                Self::process_named(T::NAME).params(params.encode())
            }

            #[doc = concat!("`", stringify!($trait), "` `T` built from `params`, on a thread of the parent.")]
            pub fn thread<T: Registered + $trait>(params: T::Params) -> Self {
                Self::thread_named(T::NAME).params(params.encode())
            }

            #[doc = concat!("The ", $what, " registered as `name`, in its own worker process; its")]
            /// parameter bytes come from [`params`](Self::params). A name registered as
            /// something else is [`BuildError::WrongKind`](crate::BuildError::WrongKind).
            pub fn process_named(name: &str) -> Self {
                Self(StageSpec::new(name, StageKind::$kind, Placement::Process))
            }

            #[doc = concat!("The ", $what, " registered as `name`, on a thread of the parent.")]
            pub fn thread_named(name: &str) -> Self {
                Self(StageSpec::new(name, StageKind::$kind, Placement::Thread))
            }

            #[doc = concat!("Any ", $what, " value (closures included) on a thread of the parent;")]
            /// `name` is used in errors and events.
            pub fn $with(name: &str, code: impl $trait + 'static) -> Self {
                let code = StageCode::$kind(Box::new(code));
                Self(StageSpec::new(name, StageKind::$kind, Placement::ThreadWith(code)))
            }

            /// Parameter bytes given to the registered constructor.
            pub fn params(self, params: impl Into<Vec<u8>>) -> Self {
                Self(self.0.params(params))
            }

            /// A callback run in the parent for this half of every item; see
            /// [`OnComplete`](crate::OnComplete).
            pub fn on_complete(self, f: impl Fn(&StageEvent<'_>) + Send + Sync + 'static) -> Self {
                Self(self.0.on_complete(f))
            }

            /// Runs this half's worker process in `sandbox`; see
            /// [`StageSpec::sandbox`](crate::StageSpec::sandbox).
            pub fn sandbox(self, sandbox: crate::Sandbox) -> Self {
                Self(self.0.sandbox(sandbox))
            }

            /// True if it runs in a worker process.
            pub fn is_process(&self) -> bool {
                self.0.is_process()
            }

            /// Its name.
            pub fn name(&self) -> &str {
                self.0.name()
            }
        }
    };
}

/// The first half of a [`PairSpec`]: which [`Producer`] and where it runs.
///
/// ```
/// # use ringpipe_engine::{BoxError, Frame, Producer, Registered};
/// # use ringpipe_engine::stream::StreamWriter;
/// # struct ReadFile;
/// # impl Producer for ReadFile {
/// #     fn produce(&mut self, _: &mut Frame<'_>, _: &mut StreamWriter) -> Result<(), BoxError> { Ok(()) }
/// # }
/// # impl Registered for ReadFile {
/// #     const NAME: &'static str = "doc.read-file";
/// #     type Params = ();
/// #     fn from_params((): ()) -> Result<Self, BoxError> { Ok(ReadFile) }
/// # }
/// use ringpipe_engine::ProducerSpec;
/// let reader = ProducerSpec::process::<ReadFile>(());
/// assert!(reader.is_process() && reader.name() == "doc.read-file");
/// ```
#[must_use = "a producer spec does nothing until it is part of a `PairSpec`"]
pub struct ProducerSpec(StageSpec);

/// The second half of a [`PairSpec`]: which [`Consumer`] and where it runs.
///
/// ```
/// use ringpipe_engine::{consumer_fn, ConsumerSpec};
/// let count = ConsumerSpec::with_consumer("count", consumer_fn(|f, input| {
///     let n = std::io::copy(input, &mut std::io::sink())?;
///     *f.header_mut::<u64>()? = n;
///     Ok(())
/// }));
/// assert!(!count.is_process());
/// ```
#[must_use = "a consumer spec does nothing until it is part of a `PairSpec`"]
pub struct ConsumerSpec(StageSpec);

half_spec!(ProducerSpec, Producer, Producer, with_producer, "producer");
half_spec!(ConsumerSpec, Consumer, Consumer, with_consumer, "consumer");
