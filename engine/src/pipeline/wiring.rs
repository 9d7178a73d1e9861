//! Which rings join which runners, for stages with any number of replicas.
//!
//! Boundary `b` sits before stage `b` (boundary 0 is the parent's submissions,
//! boundary `n` the parent's results). It has one ring per pair of (writer, reader):
//! `up(b) × down(b)` rings, where `up` counts the runners writing it (the parent
//! counts as one) and `down` those reading it. Ring `(i, j)` of boundary `b`, from
//! writer `i` to reader `j`, is `base(b) + i × down(b) + j`, so:
//!
//! - reader `j` reads `base(b) + j`, stepping by `down(b)`;
//! - writer `i` writes the `down(b)` rings from `base(b) + i × down(b)`;
//! - every ring to reader `j` rings the wake word of ring `(0, j)`, which is where
//!   reader `j` parks.

use crate::memory::{StageRecord, FLAG_HOLD_INPUT, FLAG_ORDERED_INPUT};

/// The rings of a pipeline whose stage `s` has `replicas[s]` runners.
#[derive(Debug)]
pub(crate) struct Wiring {
    replicas: Vec<usize>,
    /// First ring of each boundary, and one past the last ring at the end.
    base: Vec<usize>,
    ordered: Vec<bool>,
}

/// One runner: stage `stage`'s replica `replica`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunnerId {
    pub stage: usize,
    pub replica: usize,
}

impl Wiring {
    /// `replicas[s] >= 1` runners for stage `s`; `ordered[s]`: a replicated stage `s`
    /// hands its items on in submission order.
    pub(crate) fn new(replicas: &[usize], ordered: &[bool]) -> Self {
        debug_assert!(replicas.iter().all(|&r| r >= 1) && replicas.len() == ordered.len());
        let mut wiring = Self { replicas: replicas.to_vec(), base: vec![0], ordered: ordered.to_vec() };
        for b in 0..=replicas.len() {
            let next = wiring.base[b] + wiring.up(b) * wiring.down(b);
            wiring.base.push(next);
        }
        wiring
    }

    fn stages(&self) -> usize {
        self.replicas.len()
    }

    /// Writers of boundary `b`.
    fn up(&self, b: usize) -> usize {
        if b == 0 {
            1
        } else {
            self.replicas[b - 1]
        }
    }

    /// Readers of boundary `b`.
    fn down(&self, b: usize) -> usize {
        self.replicas.get(b).copied().unwrap_or(1)
    }

    /// Rings in all.
    pub(crate) fn ring_count(&self) -> usize {
        self.base[self.stages() + 1]
    }

    /// Every runner, stage by stage: its position is its stage record's index.
    pub(crate) fn runners(&self) -> impl Iterator<Item = RunnerId> + '_ {
        self.replicas
            .iter()
            .enumerate()
            .flat_map(|(stage, &n)| (0..n).map(move |replica| RunnerId { stage, replica }))
    }

    /// True if the reader of boundary `b` must put items back in order: more than one
    /// writer (an ordered replicated stage) and a single reader. Between two replicated
    /// stages order is restored further on, where a single reader takes them.
    fn ordered_at(&self, b: usize) -> bool {
        self.up(b) > 1 && self.down(b) == 1 && self.ordered[b - 1]
    }

    /// The ring fields of `runner`'s stage record.
    pub(crate) fn record(&self, runner: RunnerId, base: StageRecord) -> StageRecord {
        let (s, j) = (runner.stage, runner.replica);
        let out = s + 1;
        StageRecord {
            stage: s as u32,
            input_ring: (self.base[s] + j) as u32,
            input_count: self.up(s) as u32,
            input_stride: self.down(s) as u32,
            output_ring: (self.base[out] + j * self.down(out)) as u32,
            output_count: self.down(out) as u32,
            wake_ring: self.base[out] as u32,
            flags: if self.ordered_at(s) { FLAG_ORDERED_INPUT } else { 0 }
                | if self.replicas[s] > 1 { FLAG_HOLD_INPUT } else { 0 },
            ..base
        }
    }

    /// The rings the parent writes submissions to, one per replica of stage 0.
    pub(crate) fn submission_rings(&self) -> std::ops::Range<usize> {
        self.base[0]..self.base[1]
    }

    /// The rings the parent takes results from, one per replica of the last stage, and
    /// whether it must put them back in order.
    pub(crate) fn result_rings(&self) -> (std::ops::Range<usize>, bool) {
        let n = self.stages();
        (self.base[n]..self.base[n + 1], self.ordered_at(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_replicas_is_one_ring_per_boundary() {
        let w = Wiring::new(&[1, 1, 1], &[true; 3]);
        assert_eq!(w.ring_count(), 4);
        let records: Vec<_> = w.runners().map(|r| w.record(r, StageRecord::default())).collect();
        for (s, r) in records.iter().enumerate() {
            assert_eq!((r.input_ring, r.output_ring, r.wake_ring), (s as u32, s as u32 + 1, s as u32 + 1));
            assert_eq!((r.input_count, r.output_count, r.flags), (1, 1, 0));
        }
        assert_eq!(w.submission_rings(), 0..1);
        assert_eq!(w.result_rings(), (3..4, false));
    }

    #[test]
    fn replicated_neighbours_are_joined_by_a_mesh() {
        // parent -> A×2 -> B×3 -> C×1 -> parent
        let w = Wiring::new(&[2, 3, 1], &[true, true, true]);
        // Boundaries: 1×2, 2×3, 3×1, 1×1 rings.
        assert_eq!(w.ring_count(), 2 + 6 + 3 + 1);
        let r: Vec<_> = w.runners().map(|id| (id, w.record(id, StageRecord::default()))).collect();
        assert_eq!(r.len(), 6);
        // A's replica 1 reads ring 1 and writes rings 2 + 3 .. 2 + 6 of boundary 1.
        let (_, a1) = r[1];
        assert_eq!((a1.input_ring, a1.input_count, a1.output_ring, a1.output_count), (1, 1, 5, 3));
        assert_eq!(a1.wake_ring, 2, "output k rings the wake word of ring (0, k)");
        // B's replica 2 reads rings 2 + 2 and 2 + 3 + 2, unordered (B is replicated too).
        let (id, b2) = r[4];
        assert_eq!(id, RunnerId { stage: 1, replica: 2 });
        assert_eq!((b2.input_ring, b2.input_count, b2.input_stride, b2.flags), (4, 2, 3, FLAG_HOLD_INPUT));
        assert_eq!((b2.output_ring, b2.output_count), (8 + 2, 1));
        // C reads all three of B's rings, in order.
        let (_, c) = r[5];
        assert_eq!((c.input_ring, c.input_count, c.input_stride, c.flags), (8, 3, 1, FLAG_ORDERED_INPUT));
        assert_eq!(w.result_rings(), (11..12, false));
        // Every ring has exactly one writer and one reader.
        let mut writers = vec![0; w.ring_count()];
        let mut readers = vec![0; w.ring_count()];
        for ring in w.submission_rings() {
            writers[ring] += 1;
        }
        readers[w.result_rings().0.start] += 1;
        for (_, rec) in &r {
            for k in 0..rec.input_count {
                readers[(rec.input_ring + k * rec.input_stride) as usize] += 1;
            }
            for k in 0..rec.output_count {
                writers[(rec.output_ring + k) as usize] += 1;
            }
        }
        assert!(writers.iter().chain(&readers).all(|&c| c == 1), "{writers:?} {readers:?}");
    }

    #[test]
    fn the_parent_reorders_behind_a_replicated_last_stage_unless_unordered() {
        let w = Wiring::new(&[1, 4], &[true, true]);
        assert_eq!(w.result_rings(), (5..9, true));
        let w = Wiring::new(&[1, 4], &[true, false]);
        assert_eq!(w.result_rings(), (5..9, false));
    }
}
