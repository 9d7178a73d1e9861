//! Creating, sealing, mapping and validating the shared segment.
//!
//! # Safety of the shared mapping
//!
//! The segment is mapped by the parent and every worker process. Rust's aliasing rules
//! cannot see other processes, so the engine keeps these rules, and every `unsafe`
//! block that touches the mapping refers back here:
//!
//! 1. **Bounds.** Every pointer is derived from a [`Layout`] that was computed locally
//!    (parent) or recomputed from range-checked counts and compared field by field
//!    (worker); indices are checked against it before use.
//! 2. **Atomics for shared state.** Words two processes touch concurrently (ring
//!    positions, ring slots, wait words, the pipeline state) are atomics.
//! 3. **Ownership travels with descriptors.** A frame slot's header and bytes are
//!    touched only by the process holding its descriptor, which it got from a ring pop
//!    (Acquire) and gives up with a ring publish (Release). A peer that breaks this is
//!    buggy; what it can cause is wrong bytes, which readers validate: headers are
//!    copied out once (`read_volatile`) and checked before use.
//! 4. **Size.** The memfd is sealed against shrinking and growing before any worker
//!    maps it, and its pages are allocated up front, so no access can SIGBUS.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

pub use super::error::SegmentError;
use super::layout::{
    Layout, LayoutError, SegmentHeader, SlotFailure, SlotHeader, StageRecord, FLAG_HOLD_INPUT,
    FLAG_ORDERED_INPUT, MAX_REPLICAS, MAX_STAGES, MAX_STREAM_CAPACITY, ROLE_CONSUMER, ROLE_PLAIN,
    ROLE_PRODUCER,
};
use crate::sync::{AtomicU32, Ordering};

/// The pipeline runs.
pub const STATE_RUNNING: u32 = 0;
/// The parent asked everyone to stop after the rings are drained.
pub const STATE_SHUTDOWN: u32 = 1;
/// A peer died or memory was corrupted: everyone stops now.
pub const STATE_BROKEN: u32 = 2;

/// Shared, mutable control words at a fixed offset.
#[repr(C)]
#[derive(Debug)]
pub struct Control {
    state: AtomicU32,
}

impl Control {
    /// One of `STATE_*`.
    pub fn state(&self) -> u32 {
        // Acquire pairs with the Release in `set_state`: a worker that sees SHUTDOWN
        // also sees everything the parent wrote before it.
        self.state.load(Ordering::Acquire)
    }

    /// Moves to `state` unless the pipeline is already broken (broken is final).
    pub fn set_state(&self, state: u32) {
        // Release pairs with the Acquire in `state`.
        let _ = self
            .state
            .fetch_update(Ordering::Release, Ordering::Relaxed, |s| (s != STATE_BROKEN).then_some(state));
    }
}

/// One mapped segment. See the module docs for the rules of the shared mapping.
#[derive(Debug)]
pub struct Segment {
    backing: Backing,
    layout: Layout,
}

/// The memory behind a segment.
#[derive(Debug)]
enum Backing {
    /// A sealed memfd, mapped shared: what pipelines use.
    Memfd { map: MmapRaw, fd: OwnedFd },
    /// Zeroed, page-aligned heap memory: lets the code above run under Miri, which
    /// cannot map files.
    #[cfg(any(test, feature = "unstable-fuzzing"))]
    Heap { base: NonNull<u8>, alloc: std::alloc::Layout },
}

// SAFETY: the heap backing is a plain allocation owned by the segment, accessed under
// the same rules as the mapping (module docs); MmapRaw and OwnedFd are Send + Sync.
unsafe impl Send for Backing {}
// SAFETY: as above.
unsafe impl Sync for Backing {}

impl Drop for Backing {
    fn drop(&mut self) {
        #[cfg(any(test, feature = "unstable-fuzzing"))]
        if let Backing::Heap { base, alloc } = self {
            // SAFETY: allocated in `Segment::on_heap` with exactly this layout, freed once.
            unsafe { std::alloc::dealloc(base.as_ptr(), *alloc) };
        }
    }
}

const SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::SEAL);

impl Segment {
    /// Creates an anonymous memfd of the layout's size, allocates its pages (so a
    /// shortage is an error now, not a SIGBUS later), seals it against resizing, maps
    /// it and writes the header.
    pub fn create(layout: Layout) -> Result<Self, SegmentError> {
        let size = layout.size() as u64;
        let info = rustix::system::sysinfo();
        let total = (info.totalram as u64)
            .saturating_add(info.totalswap as u64)
            .saturating_mul(info.mem_unit.max(1) as u64);
        if size > total {
            // fallocate would first eat every free page; refuse at once instead.
            return Err(SegmentError::NoMemory {
                requested: size,
                source: std::io::Error::from_raw_os_error(rustix::io::Errno::NOMEM.raw_os_error()),
            });
        }
        let fd = rustix::fs::memfd_create("ringpipe", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| SegmentError::Create(e.into()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| SegmentError::Create(e.into()))?;
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size)
            .map_err(|e| SegmentError::NoMemory { requested: size, source: e.into() })?;
        rustix::fs::fcntl_add_seals(&fd, SEALS).map_err(|e| SegmentError::Create(e.into()))?;
        let map = MmapOptions::new().len(layout.size()).map_raw(&fd).map_err(SegmentError::Map)?;
        let segment = Self { backing: Backing::Memfd { map, fd }, layout };
        // SAFETY: offset 0 holds a SegmentHeader (layout); the mapping is fresh, so no
        // other process can see it yet (rule 1).
        unsafe { segment.ptr::<SegmentHeader>(0).as_ptr().write(*layout.header()) };
        Ok(segment)
    }

    /// Maps a segment received from the parent, checking seals, size and header.
    pub fn open(fd: OwnedFd) -> Result<Self, SegmentError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| SegmentError::Map(e.into()))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(SegmentError::NotSealed);
        }
        let size = rustix::fs::fstat(&fd).map_err(|e| SegmentError::Map(e.into()))?.st_size;
        let size = u64::try_from(size).map_err(|_| LayoutError::TooLarge)?;
        let header_size = std::mem::size_of::<SegmentHeader>() as u64;
        if size < header_size {
            return Err(LayoutError::Inconsistent("segment_size (file smaller than a header)").into());
        }
        let len = usize::try_from(size).map_err(|_| LayoutError::TooLarge)?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&fd) // no new descriptor: a sandboxed worker may open none
            .map_err(SegmentError::Map)?;
        // SAFETY: the mapping is at least a header long (checked above) and page-aligned;
        // the header is Pod, so any bytes are a valid value; read once (rule 3).
        let header = unsafe { std::ptr::read_volatile(map.as_ptr().cast::<SegmentHeader>()) };
        let layout = Layout::validate(&header, size)?;
        Ok(Self { backing: Backing::Memfd { map, fd }, layout })
    }

    /// A segment on zeroed heap memory with the header written, for unit tests (so
    /// Miri can check the code that uses segments) and the fuzz target.
    #[cfg(any(test, feature = "unstable-fuzzing"))]
    pub(crate) fn on_heap(layout: Layout) -> Self {
        let alloc = std::alloc::Layout::from_size_align(layout.size(), 4096).expect("layout size fits");
        // SAFETY: the size is non-zero (a header at least).
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(alloc) }).expect("allocation succeeded");
        let segment = Self { backing: Backing::Heap { base, alloc }, layout };
        // SAFETY: offset 0 holds a SegmentHeader; the memory is fresh and ours.
        unsafe { segment.ptr::<SegmentHeader>(0).as_ptr().write(*layout.header()) };
        segment
    }

    /// Overwrites everything after the header with `bytes` (repeated), as a buggy or
    /// hostile process could: the fuzz target's input.
    #[cfg(any(test, feature = "unstable-fuzzing"))]
    pub(crate) fn scribble(&self, bytes: &[u8]) {
        let start = std::mem::size_of::<SegmentHeader>();
        if bytes.is_empty() {
            return;
        }
        for (i, b) in (start..self.layout.size()).zip(bytes.iter().cycle()) {
            // SAFETY: in bounds of the segment; a heap segment has no other user while
            // the fuzz input is written, and every byte pattern is valid for the Pod
            // and atomic types that live there.
            unsafe { self.base().add(i).write(*b) };
        }
    }

    fn base(&self) -> *mut u8 {
        match &self.backing {
            Backing::Memfd { map, .. } => map.as_mut_ptr(),
            #[cfg(any(test, feature = "unstable-fuzzing"))]
            Backing::Heap { base, .. } => base.as_ptr(),
        }
    }

    /// The memfd, for handing to workers.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.backing {
            Backing::Memfd { fd, .. } => fd.as_fd(),
            #[cfg(any(test, feature = "unstable-fuzzing"))]
            Backing::Heap { .. } => panic!("a heap segment (unit tests only) has no file descriptor"),
        }
    }

    /// The validated layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A typed pointer at `offset`.
    ///
    /// # Safety
    /// `offset + size_of::<T>()` is within the layout and `offset` is aligned for `T`.
    unsafe fn ptr<T>(&self, offset: usize) -> NonNull<T> {
        debug_assert!(offset + std::mem::size_of::<T>() <= self.layout.size());
        // SAFETY: caller guarantees the offset is in bounds of the mapping.
        let p = unsafe { self.base().add(offset) };
        debug_assert_eq!(p as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: derived from a non-null mapping base.
        unsafe { NonNull::new_unchecked(p.cast()) }
    }

    /// The shared control words.
    pub fn control(&self) -> &Control {
        // SAFETY: the layout reserves an aligned Control at control_offset; all-zero
        // bytes are a valid Control; it is only accessed atomically (rule 2).
        unsafe { self.ptr::<Control>(self.layout.control_offset()).as_ref() }
    }

    /// Runner `i`'s journal (what it holds, for the parent to recover after its death).
    pub(crate) fn journal(&self, i: usize) -> &super::Journal {
        assert!(i < self.layout.stage_count());
        // SAFETY: the layout reserves an aligned Journal per stage record at
        // journal_offset(i); all-zero bytes are a valid Journal; it is only accessed
        // atomically (rule 2).
        unsafe { self.ptr::<super::Journal>(self.layout.journal_offset(i)).as_ref() }
    }

    /// Stage record `i`'s statistics: written by its runner, read by the parent.
    pub(crate) fn counters(&self, i: usize) -> &super::Counters {
        assert!(i < self.layout.stage_count());
        // SAFETY: the layout reserves an aligned Counters per stage record at
        // counters_offset(i), in bounds by the assert; all-zero bytes are a valid
        // Counters; it is only accessed atomically (rule 2).
        unsafe { self.ptr::<super::Counters>(self.layout.counters_offset(i)).as_ref() }
    }

    /// Slot `i`'s holder word: `record + 1` while the reordering runner of stage
    /// record `record` keeps the slot's item off its rings, waiting for its turn; 0
    /// otherwise. Only that runner writes it (and the parent, once it died), so after a
    /// death the parent and the replacement find the items it held.
    pub(crate) fn holder(&self, i: usize) -> &crate::sync::AtomicU32 {
        assert!(i < self.layout.slot_count());
        // SAFETY: the layout reserves a 4-aligned u32 per slot at holder_offset(i), in
        // bounds by the assert; all-zero bytes are valid; only accessed atomically (rule 2).
        unsafe { self.ptr::<crate::sync::AtomicU32>(self.layout.holder_offset(i)).as_ref() }
    }

    /// Writes stage `i`'s record. Parent only, before the worker that reads it starts
    /// (a pool rewrites a dead worker's record before starting its replacement).
    pub fn write_stage(&self, i: usize, record: StageRecord) {
        assert!(i < self.layout.stage_count());
        // SAFETY: in bounds by the assert and the layout; no worker exists yet (rule 3).
        unsafe { self.ptr::<StageRecord>(self.layout.stage_offset(i)).as_ptr().write(record) };
    }

    /// Writes the blob of names and parameters. Parent only, before any worker starts.
    pub fn write_blob(&self, blob: &[u8]) {
        assert_eq!(blob.len(), self.layout.blob_size());
        // SAFETY: the layout reserves blob_size bytes at blob_offset; no worker exists yet.
        unsafe {
            let dst = self.ptr::<u8>(self.layout.blob_offset()).as_ptr();
            std::ptr::copy_nonoverlapping(blob.as_ptr(), dst, blob.len());
        }
    }

    /// Stage `i`'s record, copied out and checked against the layout.
    pub fn stage(&self, i: usize) -> Result<StageRecord, LayoutError> {
        if i >= self.layout.stage_count() {
            return Err(LayoutError::OutOfRange {
                what: "stage index",
                value: i as u64,
                max: self.layout.stage_count() as u64 - 1,
            });
        }
        // SAFETY: in bounds (checked above); Pod, so any bytes are valid; read once.
        let r =
            unsafe { std::ptr::read_volatile(self.ptr::<StageRecord>(self.layout.stage_offset(i)).as_ptr()) };
        let blob = self.layout.blob_size() as u64;
        let fits = |off: u64, len: u32| off.checked_add(len.into()).is_some_and(|end| end <= blob);
        if !fits(r.name_offset, r.name_len) || !fits(r.params_offset, r.params_len) {
            return Err(LayoutError::Inconsistent("stage name/params range"));
        }
        if !self.rings_fit(&r) {
            return Err(LayoutError::Inconsistent("stage rings"));
        }
        if r.stage as usize >= MAX_STAGES || r.flags & !(FLAG_ORDERED_INPUT | FLAG_HOLD_INPUT) != 0 {
            return Err(LayoutError::Inconsistent("stage index or flags"));
        }
        if r.spare_slot as usize >= self.layout.slot_count() {
            return Err(LayoutError::Inconsistent("stage spare slot"));
        }
        match r.role {
            ROLE_PLAIN => {}
            ROLE_PRODUCER => {
                // The capacity is checked before it is used in arithmetic.
                let capacity_ok = (1..=MAX_STREAM_CAPACITY as u64).contains(&r.stream_capacity);
                if i + 1 >= self.layout.stage_count()
                    || !capacity_ok
                    || r.stream_offset % 128 != 0
                    || r.stream_offset
                        .checked_add(Layout::pair_size(r.stream_capacity))
                        .is_none_or(|end| end > self.layout.streams_size())
                {
                    return Err(LayoutError::Inconsistent("stage stream range"));
                }
                if r.partner_slot as usize >= self.layout.slot_count() || r.partner_slot == r.spare_slot {
                    return Err(LayoutError::Inconsistent("stage partner slot"));
                }
            }
            ROLE_CONSUMER if i > 0 && r.stage > 0 => {}
            _ => return Err(LayoutError::Inconsistent("stage role")),
        }
        Ok(r)
    }

    /// True if every ring `r` names is in the layout, its counts are in range, and it
    /// does not write its own first input.
    fn rings_fit(&self, r: &StageRecord) -> bool {
        let rings = self.layout.ring_count() as u64;
        let counts = |n: u32| (1..=MAX_REPLICAS as u32).contains(&n);
        let last_input =
            u64::from(r.input_ring) + u64::from(r.input_count.saturating_sub(1)) * u64::from(r.input_stride);
        counts(r.input_count)
            && counts(r.output_count)
            && (r.input_count == 1 || r.input_stride > 0)
            && last_input < rings
            && u64::from(r.output_ring) + u64::from(r.output_count) <= rings
            && u64::from(r.wake_ring) + u64::from(r.output_count) <= rings
            && r.input_ring != r.output_ring
    }

    /// Checks every stage record, and that the pairs' stream regions follow one another
    /// without overlapping (a worker runs this once, before it serves).
    pub fn check_stages(&self) -> Result<(), LayoutError> {
        let mut end = 0;
        for i in 0..self.layout.stage_count() {
            let r = self.stage(i)?;
            if r.role == ROLE_PRODUCER {
                if r.stream_offset < end {
                    return Err(LayoutError::Inconsistent("stage stream ranges overlap"));
                }
                end = r.stream_offset + Layout::pair_size(r.stream_capacity);
            }
            if r.role == ROLE_CONSUMER && self.stage(i - 1)?.role != ROLE_PRODUCER {
                return Err(LayoutError::Inconsistent("consumer stage without a producer before it"));
            }
        }
        Ok(())
    }

    /// The pair whose producer half is described by `producer` (a record [`stage`]
    /// returned, so its stream range is inside the streams region).
    ///
    /// [`stage`]: Self::stage
    pub(crate) fn pair(self: &std::sync::Arc<Self>, producer: &StageRecord) -> crate::pair::PairRef {
        assert_eq!(producer.role, ROLE_PRODUCER);
        let at = self.layout.streams_offset() + producer.stream_offset as usize;
        let data_at = at + std::mem::size_of::<crate::pair::PairHeader>();
        assert!(data_at as u64 + producer.stream_capacity <= self.layout.size() as u64);
        let (header, data) = (at, data_at);
        // SAFETY: `stage` checked the region lies in the streams region, 128-aligned
        // (rule 1); atomics and ring bytes used by the pair protocol; we own the memory.
        unsafe {
            crate::pair::PairRef::new(
                self.ptr(header),
                self.ptr(data),
                producer.stream_capacity,
                self.clone(),
            )
        }
    }

    /// Copies `len` blob bytes at `offset` (a range a validated [`StageRecord`] gave).
    pub fn blob(&self, offset: u64, len: u32) -> Result<Vec<u8>, LayoutError> {
        let end = offset.checked_add(len.into()).ok_or(LayoutError::TooLarge)?;
        if end > self.layout.blob_size() as u64 {
            return Err(LayoutError::Inconsistent("blob range"));
        }
        let mut out = vec![0; len as usize];
        // SAFETY: range checked against the blob just above; the blob is written once
        // before workers start and never again.
        unsafe {
            let src = self.ptr::<u8>(self.layout.blob_offset() + offset as usize).as_ptr();
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len());
        }
        Ok(out)
    }

    /// The control block of ring `i` (for waking its consumer).
    pub(crate) fn ring_header(&self, i: usize) -> &crate::ring::RingHeader {
        // SAFETY: ring_parts gives an in-bounds, aligned RingHeader; it holds only
        // atomics, so shared references from any number of processes are fine (rule 2).
        unsafe { self.ring_parts(i).0.as_ref() }
    }

    /// The two ends of ring `i`. The engine's roles keep the ring single-producer,
    /// single-consumer: the parent produces into ring 0 and consumes the last ring,
    /// stage `i` consumes ring `i` and produces into ring `i + 1`, and the builder
    /// gives each stage to exactly one thread or process. A caller drops the end its
    /// role does not own without using it.
    pub(crate) fn ring(
        self: &std::sync::Arc<Self>,
        i: usize,
    ) -> (crate::ring::Producer, crate::ring::Consumer) {
        let (header, slots) = self.ring_parts(i);
        let capacity = self.layout.ring_capacity();
        // SAFETY: header and slots are in bounds and aligned (rule 1) and live as long as
        // the Arc'd segment passed as owner; capacity is a power of two (Layout::compute);
        // single producer/consumer by the roles above; the memfd starts zeroed.
        unsafe { crate::ring::from_raw(header, slots, capacity, self.clone()) }
    }

    /// The writing end of ring `ring`, whose publishes wake whoever parks on ring
    /// `wake`'s word (the ring itself, or a doorbell its reader shares with others).
    pub(crate) fn producer_to(
        self: &std::sync::Arc<Self>,
        ring: usize,
        wake: usize,
    ) -> crate::ring::Producer {
        let producer = self.ring(ring).0;
        if wake == ring {
            return producer;
        }
        let doorbell = self.ring_parts(wake).0;
        // SAFETY: `ring_parts` checked `wake` against the layout; the doorbell lives in
        // this segment, which `producer` keeps alive.
        unsafe { producer.with_doorbell(doorbell) }
    }

    /// The header and slot array of ring `i`.
    pub(crate) fn ring_parts(
        &self,
        i: usize,
    ) -> (NonNull<crate::ring::RingHeader>, NonNull<crate::sync::AtomicU64>) {
        assert!(i < self.layout.ring_count());
        let at = self.layout.ring_offset(i);
        // SAFETY: the layout reserves a 128-aligned RingHeader followed by ring_capacity
        // u64 slots at ring_offset(i) (rule 1).
        unsafe { (self.ptr(at), self.ptr(at + std::mem::size_of::<crate::ring::RingHeader>())) }
    }

    /// Slot `i`'s header, payload and error area, if `i` is a slot.
    pub(crate) fn slot_parts(&self, i: usize) -> Option<SlotParts> {
        if i >= self.layout.slot_count() {
            return None;
        }
        let at = self.layout.slot_offset(i);
        let header_len = std::mem::size_of::<SlotHeader>();
        let error_at = header_len + std::mem::size_of::<SlotFailure>();
        // SAFETY: the layout reserves header, failure record, error area and
        // slot_capacity payload bytes at slot_offset(i), which is 128-aligned (rule 1).
        unsafe {
            Some(SlotParts {
                header: self.ptr(at),
                failure: self.ptr(at + header_len),
                error: self.ptr(at + error_at),
                payload: self.ptr(at + error_at + super::ERROR_CAPACITY),
                capacity: self.layout.slot_capacity(),
            })
        }
    }
}

/// Raw pointers into one slot; what they may be used for is the frame module's business.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotParts {
    pub header: NonNull<SlotHeader>,
    pub failure: NonNull<SlotFailure>,
    pub error: NonNull<u8>,
    pub payload: NonNull<u8>,
    pub capacity: usize,
}
