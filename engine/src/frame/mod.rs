//! Frames: a work item's bytes in a slot of the shared segment.
//!
//! Ownership of a slot travels with its descriptor through the rings (see the Safety
//! section of `memory::segment`). [`OwnedSlot`] is that ownership as a type: it is made
//! only from a descriptor popped off a ring, from the parent's free list, or from a
//! stage's spare, and it is not `Clone`. Holding one is what makes handing out
//! `&mut [u8]` into shared memory sound, so this is the only module above `memory`
//! that needs `unsafe`.

use bytemuck::Pod;

use crate::memory::{Segment, SlotFailure, SlotHeader, ERROR_CAPACITY, MAX_STAGES};

/// Status of an item that a stage failed.
pub(crate) const STATUS_FAILED: u32 = 1;

/// Exclusive ownership of one frame slot (index checked against the layout).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OwnedSlot(u32);

/// A descriptor read from a ring that names no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadDescriptor(pub u64);

impl OwnedSlot {
    /// Takes ownership of the slot a popped descriptor names.
    pub(crate) fn from_descriptor(seg: &Segment, desc: u64) -> Result<Self, BadDescriptor> {
        match u32::try_from(desc) {
            Ok(i) if (i as usize) < seg.layout().slot_count() => Ok(Self(i)),
            _ => Err(BadDescriptor(desc)),
        }
    }

    /// Mints the ownership token for slot `index` (`None` if it is out of range).
    ///
    /// # Safety
    ///
    /// The caller owns slot `index` and no other `OwnedSlot` for it exists, in this
    /// process or another: it is one of the slots the layout gives the caller (the
    /// parent's free frames at build, a record's spare or partner slot for the runner
    /// of that record), or one a dead runner held, which only its replacement or the
    /// parent settling its death may take. Two tokens for one slot would hand out two
    /// `&mut` to the same bytes.
    pub(crate) unsafe fn assigned(seg: &Segment, index: u32) -> Option<Self> {
        ((index as usize) < seg.layout().slot_count()).then_some(Self(index))
    }

    /// Gives up ownership, as the descriptor to push.
    pub(crate) fn into_descriptor(self) -> u64 {
        self.0.into()
    }

    pub(crate) fn index(&self) -> u32 {
        self.0
    }

    fn parts(&self, seg: &Segment) -> crate::memory::SlotParts {
        seg.slot_parts(self.0 as usize).expect("slot index was checked against this segment")
    }

    /// The header, copied out once.
    pub(crate) fn header(&self, seg: &Segment) -> SlotHeader {
        // SAFETY: we own the slot (module docs); the header is Pod so any bytes are a
        // valid value; read once into a local (segment Safety rules 1 and 3).
        unsafe { std::ptr::read_volatile(self.parts(seg).header.as_ptr()) }
    }

    pub(crate) fn set_header(&mut self, seg: &Segment, header: &SlotHeader) {
        // SAFETY: we own the slot, so nobody else reads or writes this header now.
        unsafe { std::ptr::write_volatile(self.parts(seg).header.as_ptr(), *header) }
    }

    /// Starts a new item in the slot: its header, and a cleared failure record.
    pub(crate) fn reset(&mut self, seg: &Segment, header: &SlotHeader) {
        self.set_header(seg, header);
        self.set_failure(seg, &SlotFailure::default());
    }

    /// Stamps the item's submission order (the parent, as it launches the item).
    pub(crate) fn set_seq(&mut self, seg: &Segment, seq: u64) {
        let header = self.parts(seg).header.as_ptr();
        // SAFETY: we own the slot, so nobody else reads or writes this header now; the
        // field is in bounds and aligned, being a field of an in-bounds header.
        unsafe { std::ptr::addr_of_mut!((*header).seq).write_volatile(seq) }
    }

    /// The failure record, copied out once (meaningful when the header's status is
    /// failed).
    pub(crate) fn failure(&self, seg: &Segment) -> SlotFailure {
        // SAFETY: as in `header`.
        unsafe { std::ptr::read_volatile(self.parts(seg).failure.as_ptr()) }
    }

    pub(crate) fn set_failure(&mut self, seg: &Segment, failure: &SlotFailure) {
        // SAFETY: as in `set_header`.
        unsafe { std::ptr::write_volatile(self.parts(seg).failure.as_ptr(), *failure) }
    }

    /// The whole payload area (capacity bytes).
    pub(crate) fn payload<'s>(&'s self, seg: &'s Segment) -> &'s [u8] {
        let p = self.parts(seg);
        // SAFETY: in bounds by the layout; we own the slot so no one writes it while
        // the shared borrow of `self` lives; u8 has no invalid values.
        unsafe { std::slice::from_raw_parts(p.payload.as_ptr(), p.capacity) }
    }

    /// The whole payload area, mutably.
    pub(crate) fn payload_mut<'s>(&'s mut self, seg: &'s Segment) -> &'s mut [u8] {
        let p = self.parts(seg);
        // SAFETY: as in `payload`, and the exclusive borrow of `self` makes this the
        // only reference into the slot.
        unsafe { std::slice::from_raw_parts_mut(p.payload.as_ptr(), p.capacity) }
    }

    /// The recorded error text, `len` clamped to the area.
    pub(crate) fn error_text(&self, seg: &Segment, len: u32) -> String {
        let len = (len as usize).min(ERROR_CAPACITY);
        // SAFETY: the error area is ERROR_CAPACITY bytes in bounds; we own the slot.
        let bytes = unsafe { std::slice::from_raw_parts(self.parts(seg).error.as_ptr(), len) };
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Records `msg` (truncated on a char boundary), returning the bytes written.
    pub(crate) fn set_error_text(&mut self, seg: &Segment, msg: &str) -> u32 {
        let mut n = msg.len().min(ERROR_CAPACITY);
        while !msg.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: n <= ERROR_CAPACITY bytes in bounds; we own the slot.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), self.parts(seg).error.as_ptr(), n);
        }
        n as u32
    }
}

/// Why a frame operation was refused.
///
/// ```
/// use ringpipe_engine::{stage_fn, Frame, FrameError, Pipeline, StageSpec};
/// let grow = stage_fn(|f: &mut Frame<'_>| {
///     let err = f.set_len(f.capacity() + 1).unwrap_err(); // past the frame's capacity
///     assert!(matches!(err, FrameError::TooLarge { .. }));
///     Ok(())
/// });
/// let p = Pipeline::builder().stage(StageSpec::with_stage("grow", grow)).build()?;
/// assert!(p.submit(b"x")?.wait().is_ok());
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame cannot hold that many bytes.
    TooLarge {
        /// Bytes asked for.
        requested: usize,
        /// The frame capacity (set with `Builder::frame_capacity`).
        capacity: usize,
    },
    /// The frame is too short, or not aligned, for the requested header type.
    Header {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes the frame has.
        len: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { requested, capacity } => write!(
                f,
                "a frame of {requested} bytes does not fit the frame capacity of {capacity} bytes; \
                 raise it with Builder::frame_capacity"
            ),
            Self::Header { needed, len } => {
                write!(f, "the frame has {len} bytes, too few for a {needed}-byte header")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Views the start of `bytes` as a `H`.
pub(crate) fn header_of<H: Pod>(bytes: &[u8]) -> Result<&H, FrameError> {
    let needed = std::mem::size_of::<H>();
    bytes
        .get(..needed)
        .and_then(|b| bytemuck::try_from_bytes(b).ok())
        .ok_or(FrameError::Header { needed, len: bytes.len() })
}

/// Views the start of `bytes` as a mutable `H`, and the rest as bytes.
pub(crate) fn split_of<H: Pod>(bytes: &mut [u8]) -> Result<(&mut H, &mut [u8]), FrameError> {
    let needed = std::mem::size_of::<H>();
    let len = bytes.len();
    if len < needed {
        return Err(FrameError::Header { needed, len });
    }
    let (head, rest) = bytes.split_at_mut(needed);
    let head = bytemuck::try_from_bytes_mut(head).map_err(|_| FrameError::Header { needed, len })?;
    Ok((head, rest))
}

/// A stage's exclusive, mutable view of one work item.
///
/// The bytes live in shared memory; nothing is copied to give them to the stage.
/// The length can change within the frame's capacity, and
/// [`replace`](Frame::replace) writes a new frame from the old one without
/// allocating.
///
/// ```
/// use ringpipe_engine::{stage_fn, Frame};
/// // A stage that appends a byte to every item.
/// let _ = stage_fn(|f: &mut Frame<'_>| {
///     let n = f.len();
///     f.set_len(n + 1)?;
///     f.bytes_mut()[n] = b'!';
///     Ok(())
/// });
/// ```
pub struct Frame<'a> {
    seg: &'a Segment,
    slot: &'a mut OwnedSlot,
    spare: &'a mut OwnedSlot,
    len: usize,
}

impl<'a> Frame<'a> {
    pub(crate) fn new(
        seg: &'a Segment,
        slot: &'a mut OwnedSlot,
        spare: &'a mut OwnedSlot,
        len: usize,
    ) -> Self {
        debug_assert!(len <= seg.layout().slot_capacity());
        Self { seg, slot, spare, len }
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most bytes this frame can hold.
    pub fn capacity(&self) -> usize {
        self.seg.layout().slot_capacity()
    }

    /// The item's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.slot.payload(self.seg)[..self.len]
    }

    /// The item's bytes, mutably.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.slot.payload_mut(self.seg)[..self.len]
    }

    /// Changes the length. Bytes gained keep whatever the slot held before (they are
    /// initialised, but not zeroed): write them before reading them.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let grow = StageSpec::with_stage("grow", stage_fn(|f| {
    ///     let n = f.len();
    ///     f.set_len(n + 1)?; // new bytes are zero
    ///     f.bytes_mut()[n] = b'!';
    ///     Ok(())
    /// }));
    /// let p = Pipeline::builder().stage(grow).build()?;
    /// assert_eq!(&p.submit(b"hi")?.wait()?[..], b"hi!");
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_len(&mut self, len: usize) -> Result<(), FrameError> {
        if len > self.capacity() {
            return Err(FrameError::TooLarge { requested: len, capacity: self.capacity() });
        }
        self.len = len;
        Ok(())
    }

    /// The leading `H` of the frame (a `bytemuck::Pod` struct; frames are 128-byte aligned).
    pub fn header<H: Pod>(&self) -> Result<&H, FrameError> {
        header_of(self.bytes())
    }

    /// The leading `H`, mutably.
    ///
    /// See [`set_len`](Self::set_len) and [`Output::header`](crate::Output::header) for examples.
    pub fn header_mut<H: Pod>(&mut self) -> Result<&mut H, FrameError> {
        self.split::<H>().map(|(h, _)| h)
    }

    /// The leading `H` and the bytes after it, both mutably.
    pub fn split<H: Pod>(&mut self) -> Result<(&mut H, &mut [u8]), FrameError> {
        split_of(self.bytes_mut())
    }

    /// Replaces the frame by a new one written from it, without allocating: `write`
    /// gets the current bytes and a whole empty frame, and returns the new length (or
    /// an error, in which case the frame is unchanged). The engine swaps the two
    /// slots; the old one becomes this stage's spare.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, BoxError, Frame};
    /// // Reverse the bytes into a fresh frame.
    /// let _ = stage_fn(|f: &mut Frame<'_>| {
    ///     f.replace(|old, new| {
    ///         for (d, s) in new.iter_mut().zip(old.iter().rev()) { *d = *s; }
    ///         Ok::<_, BoxError>(old.len())
    ///     })
    /// });
    /// ```
    pub fn replace<E>(&mut self, write: impl FnOnce(&[u8], &mut [u8]) -> Result<usize, E>) -> Result<(), E>
    where
        E: From<FrameError>,
    {
        let old = &self.slot.payload(self.seg)[..self.len];
        let new = self.spare.payload_mut(self.seg);
        let len = write(old, new)?;
        if len > self.capacity() {
            return Err(FrameError::TooLarge { requested: len, capacity: self.capacity() }.into());
        }
        std::mem::swap(self.slot, self.spare);
        self.len = len;
        Ok(())
    }
}

/// A runner, as an item records who ran it: its stage record and its process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RanBy {
    pub record: u32,
    pub pid: u32,
}

/// Marks stage `stage` as run in `header`, by runner `by`.
pub(crate) fn mark_ran(header: &mut SlotHeader, stage: usize, by: RanBy) {
    debug_assert!(stage < MAX_STAGES);
    header.ran[stage / 64] |= 1 << (stage % 64);
    header.ran_by = by.record.saturating_add(1);
    header.ran_by_pid = by.pid;
}

/// Whether stage `stage` ran, per `header`.
pub(crate) fn has_run(header: &SlotHeader, stage: usize) -> bool {
    stage < MAX_STAGES && header.ran[stage / 64] & (1 << (stage % 64)) != 0
}

#[cfg(test)]
mod tests;
