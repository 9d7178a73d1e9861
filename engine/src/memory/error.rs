//! Why a segment cannot be laid out, created, opened or trusted.

/// Why a layout cannot be built or trusted.
///
/// ```
/// use ringpipe_engine::{BuildError, LayoutError, Pipeline, StageSpec};
/// let err = Pipeline::builder().stage(StageSpec::thread_named("any")).max_in_flight(0).build().unwrap_err();
/// assert!(matches!(err, BuildError::Config(LayoutError::OutOfRange { what: "max_in_flight", .. })));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// A count or size is outside its range.
    OutOfRange {
        /// Which quantity.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The sizes add up past what a segment can hold.
    TooLarge,
    /// The header does not start with ringpipe's magic number: not a ringpipe segment.
    BadMagic,
    /// The segment was written by another layout version.
    VersionMismatch {
        /// Ours.
        expected: u32,
        /// The segment's.
        found: u32,
    },
    /// A header field disagrees with the layout its counts imply.
    Inconsistent(&'static str),
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfRange { what, value, max } => {
                write!(f, "{what} is {value}, outside the allowed range (at most {max})")
            }
            Self::TooLarge => write!(f, "the segment would exceed the address space"),
            Self::BadMagic => write!(f, "not a ringpipe segment (bad magic)"),
            Self::VersionMismatch { expected, found } => write!(
                f,
                "segment layout version {found}, this binary speaks {expected}: \
                 parent and worker must be built from the same ringpipe"
            ),
            Self::Inconsistent(field) => {
                write!(f, "segment header field `{field}` is inconsistent (corrupt segment)")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

/// Why a segment could not be created or opened.
///
/// ```
/// use ringpipe_engine::{BuildError, SegmentError};
/// fn explain(e: &BuildError) -> &'static str {
///     match e {
///         BuildError::Segment(SegmentError::NoMemory { .. }) => "lower max_in_flight or frame_capacity",
///         BuildError::Segment(_) => "the shared segment could not be made",
///         _ => "something else",
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SegmentError {
    /// The memfd could not be created or sized.
    Create(std::io::Error),
    /// Not enough memory (or room in the memfd's tmpfs) for the requested size.
    NoMemory {
        /// Bytes asked for.
        requested: u64,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The segment could not be mapped.
    Map(std::io::Error),
    /// The segment is not one this binary can use.
    Layout(LayoutError),
    /// The memfd is missing its seals: another process could shrink it under us.
    NotSealed,
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Create(e) => write!(f, "cannot create the shared segment: {e}"),
            Self::NoMemory { requested, source } => write!(
                f,
                "cannot allocate a {requested}-byte shared segment ({source}); \
                 lower max_in_flight or frame_capacity, or free memory"
            ),
            Self::Map(e) => write!(f, "cannot map the shared segment: {e}"),
            Self::Layout(e) => write!(f, "invalid shared segment: {e}"),
            Self::NotSealed => write!(f, "the shared segment is not sealed against resizing"),
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Create(e) | Self::Map(e) | Self::NoMemory { source: e, .. } => Some(e),
            Self::Layout(e) => Some(e),
            Self::NotSealed => None,
        }
    }
}

impl From<LayoutError> for SegmentError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}
