//! Where everything sits in the segment, computed with checked arithmetic.
//!
//! ```text
//! 0        SegmentHeader      (Pod, written once by the parent before any worker starts)
//! 128      Control            (atomics: pipeline state)
//! 256      Journal × stages   (atomics: what each runner holds, for restarts)
//! ...      Counters × stages  (atomics: what each runner has done, for statistics)
//! ...      u32 × slots        (atomics: which reordering runner holds each slot, for restarts)
//! ...      StageRecord × stages  (Pod)
//! ...      blob               (stage names and parameters, bytes)
//! ...      ring × rings       (RingHeader + capacity × u64), 128-aligned
//! ...      streams            (per producer/consumer pair: PairHeader + ring bytes), 128-aligned
//! ...      slot × slots       (SlotHeader + error text + payload), 128-aligned
//! ```
//!
//! A worker never trusts the offsets it reads: it recomputes the layout from the
//! counts in the header (themselves range-checked) and requires every field to match.

use bytemuck::{Pod, Zeroable};

pub use super::error::LayoutError;

use super::counters::Counters;
use super::journal::Journal;
use crate::pair::PairHeader;
use crate::ring::RingHeader;

/// The first eight bytes of every ringpipe segment.
pub const MAGIC: [u8; 8] = *b"RINGPIPE";
/// Bumped whenever the layout below changes.
pub const VERSION: u32 = 8;
/// Most stages in one pipeline (the per-item "stages run" bitmap has this many bits),
/// and most stage records (one per replica) in one segment.
pub const MAX_STAGES: usize = 256;
/// Most rings in one segment (replicated stages next to each other are joined by a
/// ring per pair of replicas).
pub const MAX_RINGS: usize = 8192;
/// Most replicas of one stage.
pub const MAX_REPLICAS: usize = 64;
/// [`StageRecord::flags`]: the stage takes its input in submission order (by
/// [`SlotHeader::seq`]) from its several input rings.
pub const FLAG_ORDERED_INPUT: u32 = 1;
/// [`StageRecord::flags`]: the runner (a replica) keeps an item's place in its input
/// ring until it has handed the item on, so the writer choosing the least loaded
/// replica counts the item being worked on. Without it, the place goes back as the
/// item is taken (what a pool's parent relies on to tell a dead worker's held task
/// from those it never touched).
pub const FLAG_HOLD_INPUT: u32 = 2;
/// Most frame slots in one segment.
pub const MAX_SLOTS: usize = 1 << 20;
/// Largest payload of one frame: 1 GiB.
pub const MAX_FRAME_CAPACITY: usize = 1 << 30;
/// Bytes of error text a stage failure can record on its item.
pub const ERROR_CAPACITY: usize = 448;
/// Largest byte ring of one producer/consumer pair: 1 GiB.
pub const MAX_STREAM_CAPACITY: usize = 1 << 30;

/// [`StageRecord::role`] of a plain stage.
pub const ROLE_PLAIN: u32 = 0;
/// [`StageRecord::role`] of the producer half of a pair (its stream fields are set).
pub const ROLE_PRODUCER: u32 = 1;
/// [`StageRecord::role`] of the consumer half of a pair (it uses the previous stage's stream).
pub const ROLE_CONSUMER: u32 = 2;

const ALIGN: u64 = 128;
const CONTROL_OFFSET: u64 = 128;
const JOURNALS_OFFSET: u64 = 256;
const MAX_BLOB: u64 = 1 << 30;

/// The segment's fixed header. Written once by the parent before any worker exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// `size_of::<SegmentHeader>()` of the writer.
    pub header_size: u32,
    /// Bytes in the whole segment.
    pub segment_size: u64,
    /// Stage records (one per replica of each stage), in `1..=MAX_STAGES`.
    pub stage_count: u32,
    /// Rings, in `2..=MAX_RINGS`: `stage_count + 1` for a pipeline without replicas,
    /// `2 × workers` for a pool.
    pub ring_count: u32,
    /// Descriptors per ring, a power of two `>= slot_count`.
    pub ring_capacity: u32,
    /// Frame slots, in `1..=MAX_SLOTS`.
    pub slot_count: u32,
    /// Payload bytes per slot, in `0..=MAX_FRAME_CAPACITY`.
    pub slot_capacity: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Bytes of stage names and parameters.
    pub blob_size: u64,
    /// Offset of the stage table.
    pub stages_offset: u64,
    /// Offset of the blob.
    pub blob_offset: u64,
    /// Offset of ring 0.
    pub rings_offset: u64,
    /// Bytes from one ring to the next.
    pub ring_stride: u64,
    /// Offset of the streams region.
    pub streams_offset: u64,
    /// Bytes of the streams region.
    pub streams_size: u64,
    /// Offset of slot 0.
    pub slots_offset: u64,
    /// Bytes from one slot to the next.
    pub slot_stride: u64,
}

/// One runner (a stage, or one replica of a replicated stage) as the segment
/// describes it to workers: its code, its slots, and which rings it reads and writes.
///
/// A runner reads `input_count` rings, `input_ring + k × input_stride`, and writes
/// `output_count` rings, `output_ring + k`; publishing to output `k` rings the wake
/// word of ring `wake_ring + k` (the ring its reader parks on).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StageRecord {
    /// Offset of the stage's registered name within the blob.
    pub name_offset: u64,
    /// Offset of the stage's parameters within the blob.
    pub params_offset: u64,
    /// Length of the name.
    pub name_len: u32,
    /// Length of the parameters.
    pub params_len: u32,
    /// The first ring the runner reads.
    pub input_ring: u32,
    /// The first ring the runner writes.
    pub output_ring: u32,
    /// The slot the runner owns as its spare for frame replacement.
    pub spare_slot: u32,
    /// `ROLE_PLAIN`, `ROLE_PRODUCER` or `ROLE_CONSUMER`.
    pub role: u32,
    /// Producer only: offset of the pair's region within the streams region.
    pub stream_offset: u64,
    /// Producer only: bytes of the pair's ring, in `1..=MAX_STREAM_CAPACITY`.
    pub stream_capacity: u64,
    /// Producer only: the slot holding the producer half's copy of the item.
    pub partner_slot: u32,
    /// The first ring whose wake word the runner notifies when it publishes output:
    /// its output rings' own, or a doorbell several rings share (a pool's parent).
    pub wake_ring: u32,
    /// Publish output after at most this many items (0: the default, 16). A pool
    /// publishes every item, so a dead worker holds at most one unfinished task.
    pub publish_every: u32,
    /// The stage this runner is a replica of: the bit it sets in
    /// [`SlotHeader::ran`] and the index a failure names.
    pub stage: u32,
    /// Rings the runner reads, in `1..=MAX_REPLICAS`.
    pub input_count: u32,
    /// Ring-index step between its input rings.
    pub input_stride: u32,
    /// Rings the runner writes, in `1..=MAX_REPLICAS`.
    pub output_count: u32,
    /// [`FLAG_ORDERED_INPUT`] and [`FLAG_HOLD_INPUT`] bits.
    pub flags: u32,
}

impl Default for StageRecord {
    /// A plain stage reading and writing one ring each (ring 0 to ring 1, waking ring 1).
    fn default() -> Self {
        Self {
            output_ring: 1,
            wake_ring: 1,
            input_count: 1,
            input_stride: 1,
            output_count: 1,
            ..Zeroable::zeroed()
        }
    }
}

/// Metadata at the start of every frame slot. Written only by the slot's current
/// owner; read once into a local and validated by the next.
///
/// It is one cache line, and holds only what every item's trip touches: the header
/// travels between processes with each item, so each line more is a coherence miss
/// more per item on both sides. What only a failure needs is in the [`SlotFailure`]
/// that follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotHeader {
    /// Payload bytes in use, `<= slot_capacity`.
    pub len: u32,
    /// 0 = fine so far, 1 = a stage failed (the slot's [`SlotFailure`] says how).
    pub status: u32,
    /// The parent's ticket for this item.
    pub ticket: u32,
    /// Generation of that ticket, so a stale descriptor is recognised.
    pub generation: u32,
    /// Submission order, counted by the parent from 0: how a stage that reads several
    /// replicas' rings puts items back in order.
    pub seq: u64,
    /// The stage record of the runner that last ran a stage on the item, plus one
    /// (0: none ran). Informational: a worker may scribble on it, so readers treat
    /// an unknown record as none.
    pub ran_by: u32,
    /// That runner's process id.
    pub ran_by_pid: u32,
    /// Bit `i` set: stage `i` ran on this item.
    pub ran: [u64; MAX_STAGES / 64],
}

const _: () = assert!(std::mem::size_of::<SlotHeader>() == 64, "a slot header is one cache line");

/// How an item failed: follows the [`SlotHeader`] in its slot, meaningful only when
/// the header's `status` is 1. The parent zeroes it as it submits the item, so an
/// item that does not fail never moves this line between processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotFailure {
    /// Index of the failed stage.
    pub failed_stage: u32,
    /// Bytes of error text, `<= ERROR_CAPACITY`.
    pub error_len: u32,
    /// When the failure is a worker's death: the dead process's id (0 otherwise).
    pub died_pid: u32,
    /// When that worker was killed for running past its stage's timeout: the timeout
    /// in milliseconds (0 otherwise).
    pub timeout_ms: u32,
    /// When a failure is a sandboxed worker's death: the limit it hit (a
    /// [`Violation`](crate::Violation)'s code, 0 otherwise).
    pub violation: u32,
    /// Its detail: a forbidden system call's number plus one (0: none or unknown).
    pub violation_detail: u32,
}

/// The validated shape of a segment. Every accessor's bounds come from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    header: SegmentHeader,
}

fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

fn check(what: &'static str, value: u64, min: u64, max: u64) -> Result<(), LayoutError> {
    if value < min || value > max {
        return Err(LayoutError::OutOfRange { what, value, max });
    }
    Ok(())
}

impl Layout {
    /// Computes the layout for `stage_count` stages, `slot_count` slots of
    /// `slot_capacity` payload bytes, and a blob of `blob_size` bytes (tests: stages in
    /// a line).
    #[cfg(test)]
    pub fn compute(
        stage_count: usize,
        slot_count: usize,
        slot_capacity: usize,
        blob_size: usize,
    ) -> Result<Self, LayoutError> {
        Self::with_streams(stage_count, slot_count, slot_capacity, blob_size, 0)
    }

    /// Like [`compute`](Self::compute), with a streams region of `streams_size` bytes for
    /// the byte rings of producer/consumer pairs (see [`pair_size`](Self::pair_size)).
    #[cfg(test)]
    pub fn with_streams(
        stage_count: usize,
        slot_count: usize,
        slot_capacity: usize,
        blob_size: usize,
        streams_size: u64,
    ) -> Result<Self, LayoutError> {
        Self::with_rings(stage_count, stage_count + 1, slot_count, slot_capacity, blob_size, streams_size)
    }

    /// The general form: `stage_count` stage records and `ring_count` rings (at most
    /// [`MAX_RINGS`]) for stages wired other than in a line (replicas, or a pool: an
    /// input and an output ring per worker).
    pub fn with_rings(
        stage_count: usize,
        ring_count: usize,
        slot_count: usize,
        slot_capacity: usize,
        blob_size: usize,
        streams_size: u64,
    ) -> Result<Self, LayoutError> {
        check("stage count", stage_count as u64, 1, MAX_STAGES as u64)?;
        check("ring count", ring_count as u64, 2, MAX_RINGS as u64)?;
        let max_streams = (MAX_STAGES as u64 / 2) * Self::pair_size(MAX_STREAM_CAPACITY as u64);
        check("streams size", streams_size, 0, max_streams)?;
        if streams_size % ALIGN != 0 {
            return Err(LayoutError::Inconsistent("streams_size (not 128-aligned)"));
        }
        check("slot count", slot_count as u64, 1, MAX_SLOTS as u64)?;
        check("frame capacity", slot_capacity as u64, 0, MAX_FRAME_CAPACITY as u64)?;
        check("stage names and parameters size", blob_size as u64, 0, MAX_BLOB)?;
        let ring_capacity = (slot_count as u64).next_power_of_two();
        let ring_count = ring_count as u64;
        let header_size = std::mem::size_of::<SegmentHeader>() as u64;
        let of = |_| LayoutError::TooLarge;
        let per_record = (std::mem::size_of::<Journal>() + std::mem::size_of::<Counters>()) as u64;
        let holders_bytes = 4 * slot_count as u64;
        let stages_offset = align_up(JOURNALS_OFFSET + stage_count as u64 * per_record + holders_bytes)
            .ok_or(LayoutError::TooLarge)?;
        let stages_bytes = (stage_count as u64)
            .checked_mul(std::mem::size_of::<StageRecord>() as u64)
            .ok_or(LayoutError::TooLarge)?;
        let blob_offset = stages_offset.checked_add(stages_bytes).ok_or(LayoutError::TooLarge)?;
        let rings_offset =
            blob_offset.checked_add(blob_size as u64).and_then(align_up).ok_or(LayoutError::TooLarge)?;
        let ring_stride = ring_capacity
            .checked_mul(8)
            .and_then(|b| b.checked_add(std::mem::size_of::<RingHeader>() as u64))
            .and_then(align_up)
            .ok_or(LayoutError::TooLarge)?;
        let streams_offset = ring_stride
            .checked_mul(ring_count)
            .and_then(|b| b.checked_add(rings_offset))
            .ok_or(LayoutError::TooLarge)?;
        let slots_offset = streams_offset.checked_add(streams_size).ok_or(LayoutError::TooLarge)?;
        let slot_stride = ((std::mem::size_of::<SlotHeader>()
            + std::mem::size_of::<SlotFailure>()
            + ERROR_CAPACITY) as u64)
            .checked_add(slot_capacity as u64)
            .and_then(align_up)
            .ok_or(LayoutError::TooLarge)?;
        let segment_size = slot_stride
            .checked_mul(slot_count as u64)
            .and_then(|b| b.checked_add(slots_offset))
            .ok_or(LayoutError::TooLarge)?;
        isize::try_from(segment_size).map_err(of)?;
        Ok(Self {
            header: SegmentHeader {
                magic: MAGIC,
                version: VERSION,
                header_size: header_size as u32,
                segment_size,
                stage_count: stage_count as u32,
                ring_count: ring_count as u32,
                ring_capacity: ring_capacity as u32,
                slot_count: slot_count as u32,
                slot_capacity: slot_capacity as u32,
                reserved: 0,
                blob_size: blob_size as u64,
                stages_offset,
                blob_offset,
                rings_offset,
                ring_stride,
                streams_offset,
                streams_size,
                slots_offset,
                slot_stride,
            },
        })
    }

    /// Checks a header read from a segment of `actual_size` bytes: magic, version, and
    /// every field equal to what its counts imply.
    pub fn validate(found: &SegmentHeader, actual_size: u64) -> Result<Self, LayoutError> {
        if found.magic != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if found.version != VERSION {
            return Err(LayoutError::VersionMismatch { expected: VERSION, found: found.version });
        }
        let layout = Self::with_rings(
            found.stage_count as usize,
            found.ring_count as usize,
            found.slot_count as usize,
            found.slot_capacity as usize,
            usize::try_from(found.blob_size).map_err(|_| LayoutError::TooLarge)?,
            found.streams_size,
        )?;
        let h = &layout.header;
        let fields: [(&'static str, u64, u64); 9] = [
            ("header_size", h.header_size.into(), found.header_size.into()),
            ("segment_size", h.segment_size, found.segment_size),
            ("ring_count", h.ring_count.into(), found.ring_count.into()),
            ("ring_capacity", h.ring_capacity.into(), found.ring_capacity.into()),
            ("rings_offset", h.rings_offset, found.rings_offset),
            ("streams_offset", h.streams_offset, found.streams_offset),
            ("slots_offset", h.slots_offset, found.slots_offset),
            ("slot_stride", h.slot_stride, found.slot_stride),
            ("ring_stride", h.ring_stride, found.ring_stride),
        ];
        for (name, want, got) in fields {
            if want != got {
                return Err(LayoutError::Inconsistent(name));
            }
        }
        if h.stages_offset != found.stages_offset || h.blob_offset != found.blob_offset {
            return Err(LayoutError::Inconsistent("stages_offset"));
        }
        if actual_size != h.segment_size {
            return Err(LayoutError::Inconsistent("segment_size (file size differs)"));
        }
        Ok(layout)
    }

    /// The header this layout writes.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }
    /// Total bytes.
    pub fn size(&self) -> usize {
        self.header.segment_size as usize
    }
    /// Number of stages.
    pub fn stage_count(&self) -> usize {
        self.header.stage_count as usize
    }
    /// Number of rings.
    pub fn ring_count(&self) -> usize {
        self.header.ring_count as usize
    }
    /// Descriptors per ring.
    pub fn ring_capacity(&self) -> u64 {
        self.header.ring_capacity.into()
    }
    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.header.slot_count as usize
    }
    /// Payload bytes per slot.
    pub fn slot_capacity(&self) -> usize {
        self.header.slot_capacity as usize
    }
    /// Bytes of the blob.
    pub fn blob_size(&self) -> usize {
        self.header.blob_size as usize
    }
    /// Bytes of the streams region.
    pub fn streams_size(&self) -> u64 {
        self.header.streams_size
    }
    /// Bytes one pair's region takes for a ring of `capacity` bytes: its control block
    /// and ring, rounded up to a cache line so the next pair starts aligned.
    pub const fn pair_size(capacity: u64) -> u64 {
        let raw = std::mem::size_of::<PairHeader>() as u64 + capacity;
        (raw + ALIGN - 1) & !(ALIGN - 1)
    }
    pub(crate) fn streams_offset(&self) -> usize {
        self.header.streams_offset as usize
    }
    pub(crate) fn control_offset(&self) -> usize {
        CONTROL_OFFSET as usize
    }
    pub(crate) fn journal_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.stage_count());
        JOURNALS_OFFSET as usize + i * std::mem::size_of::<Journal>()
    }
    /// Offset of stage record `i`'s statistics block.
    pub(crate) fn counters_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.stage_count());
        self.journal_offset(0)
            + self.stage_count() * std::mem::size_of::<Journal>()
            + i * std::mem::size_of::<Counters>()
    }
    /// Offset of slot `i`'s holder word (see [`Segment::holder`](super::Segment::holder)).
    pub(crate) fn holder_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.slot_count());
        let records = self.stage_count() * (std::mem::size_of::<Journal>() + std::mem::size_of::<Counters>());
        JOURNALS_OFFSET as usize + records + 4 * i
    }
    pub(crate) fn stage_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.stage_count());
        self.header.stages_offset as usize + i * std::mem::size_of::<StageRecord>()
    }
    pub(crate) fn blob_offset(&self) -> usize {
        self.header.blob_offset as usize
    }
    pub(crate) fn ring_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.ring_count());
        (self.header.rings_offset + i as u64 * self.header.ring_stride) as usize
    }
    pub(crate) fn slot_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.slot_count());
        (self.header.slots_offset + i as u64 * self.header.slot_stride) as usize
    }
}
