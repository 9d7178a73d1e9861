//! The link-time table of registered stage code, typed registration
//! ([`Registered`], [`Params`]) and the macros that fill the table.

use super::{BoxError, Consumer, Producer, Stage, StageCode, StageKind};

/// Stage code registered by name; see [`register!`](crate::register).
#[derive(Debug)]
pub struct StageFactory {
    /// The name pipelines refer to.
    pub name: &'static str,
    /// What `make` builds.
    pub kind: StageKind,
    /// Builds an instance from parameter bytes; an `Err` means the parameters are bad.
    pub make: fn(&[u8]) -> Result<StageCode, BoxError>,
}

/// Every registered stage of this executable.
#[linkme::distributed_slice]
pub static STAGES: [StageFactory];

/// The factory registered under `name`, if any.
pub fn find_stage(name: &str) -> Option<&'static StageFactory> {
    STAGES.iter().find(|f| f.name == name)
}

/// Stage code worker processes can build by name, with typed parameters: its
/// registered [`NAME`](Self::NAME), its [`Params`](Self::Params) and how it is built
/// from them. Register it once with [`register!`](crate::register); place a
/// [`Stage`] with [`StageSpec::process`](crate::StageSpec::process)`::<S>(params)` (or
/// `thread`), a pair's halves with [`ProducerSpec`](crate::ProducerSpec) and
/// [`ConsumerSpec`](crate::ConsumerSpec).
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
pub trait Registered: Sized + 'static {
    /// The name it is registered under; unique in the program.
    const NAME: &'static str;
    /// What it is built from. They cross into the worker process as bytes.
    type Params: Params;
    /// Builds it (in its worker process, or on a thread of the parent); an
    /// error fails `build()` with [`BuildError::StageInit`](crate::BuildError::StageInit).
    fn from_params(params: Self::Params) -> Result<Self, BoxError>;
}

/// Stage parameters as they cross into a worker process: encoded by the parent,
/// decoded by the worker. Implemented for `()`, the integer types (little-endian),
/// `bool`, `Vec<u8>` and `String`; implement it for a struct of your own.
///
/// ```
/// use ringpipe_engine::{BoxError, Params};
/// /// A compression level and a dictionary id, as 8 bytes.
/// #[derive(Debug, PartialEq)]
/// struct Settings { level: i32, dict: u32 }
/// impl Params for Settings {
///     fn encode(&self) -> Vec<u8> {
///         [self.level.to_le_bytes(), self.dict.to_le_bytes()].concat()
///     }
///     fn decode(b: &[u8]) -> Result<Self, BoxError> {
///         let b: [u8; 8] = b.try_into().map_err(|_| "Settings takes 8 bytes")?;
///         Ok(Settings {
///             level: i32::from_le_bytes(b[..4].try_into()?),
///             dict: u32::from_le_bytes(b[4..].try_into()?),
///         })
///     }
/// }
/// let s = Settings { level: 3, dict: 7 };
/// assert_eq!(Settings::decode(&s.encode())?, s);
/// assert!(Settings::decode(&[1, 2]).is_err());
/// # Ok::<(), BoxError>(())
/// ```
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
pub fn __make_registered<S: Registered + Stage>(params: &[u8]) -> Result<StageCode, BoxError> {
    Ok(StageCode::Stage(Box::new(S::from_params(S::Params::decode(params)?)?)))
}

/// [`__make_registered`] for a pair's producer.
#[doc(hidden)]
pub fn __make_producer<P: Registered + Producer>(params: &[u8]) -> Result<StageCode, BoxError> {
    Ok(StageCode::Producer(Box::new(P::from_params(P::Params::decode(params)?)?)))
}

/// [`__make_registered`] for a pair's consumer.
#[doc(hidden)]
pub fn __make_consumer<C: Registered + Consumer>(params: &[u8]) -> Result<StageCode, BoxError> {
    Ok(StageCode::Consumer(Box::new(C::from_params(C::Params::decode(params)?)?)))
}

/// Boxes what a [`register_stage!`](crate::register_stage) constructor made.
#[doc(hidden)]
pub fn __box_stage<S: Stage + 'static>(made: Result<S, BoxError>) -> Result<StageCode, BoxError> {
    made.map(|s| StageCode::Stage(Box::new(s)))
}

/// [`__box_stage`] for a pair's producer.
#[doc(hidden)]
pub fn __box_producer<P: Producer + 'static>(made: Result<P, BoxError>) -> Result<StageCode, BoxError> {
    made.map(|p| StageCode::Producer(Box::new(p)))
}

/// [`__box_stage`] for a pair's consumer.
#[doc(hidden)]
pub fn __box_consumer<C: Consumer + 'static>(made: Result<C, BoxError>) -> Result<StageCode, BoxError> {
    made.map(|c| StageCode::Consumer(Box::new(c)))
}

/// Registers [`Registered`] code, so worker processes can build it by name: plain
/// stages as `register!(A, B)`, a pair's halves as `register!(producer: P)` and
/// `register!(consumer: C)`.
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
    (producer: $($code:ty),+ $(,)?) => {$(
        $crate::__register_factory!(<$code as $crate::Registered>::NAME, Producer, $crate::__make_producer::<$code>);
    )+};
    (consumer: $($code:ty),+ $(,)?) => {$(
        $crate::__register_factory!(<$code as $crate::Registered>::NAME, Consumer, $crate::__make_consumer::<$code>);
    )+};
    ($($code:ty),+ $(,)?) => {$(
        $crate::__register_factory!(<$code as $crate::Registered>::NAME, Stage, $crate::__make_registered::<$code>);
    )+};
}

/// One entry of the link-time table (what `register!` and `register_stage!` expand to).
#[doc(hidden)]
#[macro_export]
macro_rules! __register_factory {
    ($name:expr, $kind:ident, $make:expr) => {
        const _: () = {
            #[$crate::__linkme::distributed_slice($crate::__STAGES)]
            #[linkme(crate = $crate::__linkme)]
            static STAGE: $crate::__StageFactory =
                $crate::__StageFactory { name: $name, kind: $crate::StageKind::$kind, make: $make };
        };
    };
}

/// Registers stage code under a name by its constructor from parameter bytes: the
/// dynamic form of [`register!`](crate::register), for code made by a closure.
///
/// The constructor gets the parameter bytes and returns `Result<impl Stage, BoxError>`
/// (`register_stage!(producer: name, ..)`: `impl Producer`; `consumer:`
/// `impl Consumer`); an error there fails `build()` with
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
    (producer: $name:expr, $make:expr) => {
        $crate::register_stage!(@with __box_producer, Producer, $name, $make);
    };
    (consumer: $name:expr, $make:expr) => {
        $crate::register_stage!(@with __box_consumer, Consumer, $name, $make);
    };
    (@with $boxed:ident, $kind:ident, $name:expr, $make:expr) => {
        $crate::__register_factory!($name, $kind, {
            fn make(params: &[u8]) -> ::std::result::Result<$crate::__StageCode, $crate::BoxError> {
                $crate::$boxed(($make)(params))
            }
            make
        });
    };
    ($id:ident, $name:expr, $make:expr) => {
        $crate::register_stage!($name, $make);
    };
    ($name:expr, $make:expr) => {
        $crate::register_stage!(@with __box_stage, Stage, $name, $make);
    };
}
