//! Per-stage statistics: what each stage did and where its time went.
//!
//! Every runner counts its items and bytes and cuts its time into *busy*, *starved*
//! (waiting for input) and *blocked* (waiting on the next stage), privately, and
//! stores its totals to its block in the segment every 16 items, every 256 KiB and
//! whenever it waits (see `worker::meter`). [`Pipeline::stats`](super::Pipeline::stats)
//! adds up the blocks of each stage's replicas: reading them never stops a stage.

use std::fmt;
use std::time::Duration;

/// What one stage (all its replicas together) has done since the pipeline started.
///
/// Times add up over replicas: a stage with 2 replicas busy all of a 3 s run shows
/// 6 s busy. A worker process's time runs whether or not the OS gives it a core, so
/// on an oversubscribed machine busy time includes time spent descheduled.
///
/// ```
/// use std::time::Duration;
/// use ringpipe_engine::StageStats;
/// let s = StageStats {
///     name: "zstd".into(),
///     replicas: 2,
///     on_thread: false,
///     items: 10,
///     bytes_in: 10 << 20,
///     bytes_out: 3 << 20,
///     busy: Duration::from_secs(3),
///     starved: Duration::from_secs(1),
///     blocked: Duration::ZERO,
/// };
/// assert_eq!(s.busy_fraction(), 0.75);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageStats {
    /// The stage's registered name.
    pub name: String,
    /// How many runners (replicas) it has.
    pub replicas: usize,
    /// It runs on threads of the parent rather than in worker processes.
    pub on_thread: bool,
    /// Items that went through it, including those it skipped or that arrived failed.
    pub items: u64,
    /// Bytes of those items as they arrived (for a pair's consumer, plus the bytes
    /// read from the stream).
    pub bytes_in: u64,
    /// Bytes of those items as they went on (for a pair's producer, plus the bytes
    /// written to the stream).
    pub bytes_out: u64,
    /// Time with an item in hand.
    pub busy: Duration,
    /// Time waiting for input: an empty input ring, a stream without bytes, a
    /// producer that has not finished.
    pub starved: Duration,
    /// Time waiting on the next stage: a full stream ring, or a consumer still
    /// holding the previous item. Handing an item on never waits (every ring has room
    /// for every frame), so only a pair's producer is ever blocked; back-pressure
    /// reaches the submitter instead ([`PipelineStats::submit_waited`]).
    pub blocked: Duration,
}

impl StageStats {
    /// The share of its runners' time spent busy, in `0.0..=1.0` (0 before any time
    /// was counted).
    pub fn busy_fraction(&self) -> f64 {
        busy_share(self.busy, self.starved, self.blocked)
    }
}

/// `busy` as a share of all three, in `0.0..=1.0` (0 when none was counted).
pub(crate) fn busy_share(busy: Duration, starved: Duration, blocked: Duration) -> f64 {
    let total = busy.saturating_add(starved).saturating_add(blocked);
    if total.is_zero() {
        return 0.0;
    }
    busy.as_secs_f64() / total.as_secs_f64()
}

/// The index of the highest share above 0, if any: the bottleneck.
pub(crate) fn busiest(shares: impl Iterator<Item = f64>) -> Option<usize> {
    shares.enumerate().filter(|&(_, f)| f > 0.0).max_by(|(_, a), (_, b)| a.total_cmp(b)).map(|(i, _)| i)
}

/// A snapshot of every stage's [`StageStats`], from [`Pipeline::stats`](super::Pipeline::stats).
///
/// Its `Display` is a table, one row per stage, with the bottleneck marked:
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// let p = Pipeline::builder()
///     .stage(StageSpec::with_stage("double", stage_fn(|f| {
///         let twice = f.bytes().repeat(2);
///         f.set_len(twice.len())?;
///         f.bytes_mut().copy_from_slice(&twice);
///         Ok(())
///     })))
///     .build()?;
/// for _ in 0..3 {
///     p.submit(b"abc")?.wait()?;
/// }
/// let stats = p.stats();
/// assert_eq!(stats.stages[0].items, 3);
/// assert_eq!((stats.stages[0].bytes_in, stats.stages[0].bytes_out), (9, 18));
/// println!("{stats}");
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineStats {
    /// Time since the pipeline was built.
    pub elapsed: Duration,
    /// Time callers spent blocked on the pipeline: submitting while `max_in_flight`
    /// items were in flight, or in [`map`](super::Pipeline::map) waiting for the
    /// oldest result. Near `elapsed` (per submitting thread), the stages are the
    /// bottleneck; near 0, whatever feeds the pipeline is.
    pub submit_waited: Duration,
    /// One entry per stage, in pipeline order.
    pub stages: Vec<StageStats>,
}

impl PipelineStats {
    /// The stage whose runners were busiest (the highest
    /// [`busy_fraction`](StageStats::busy_fraction)), if any stage counted any time.
    pub fn bottleneck(&self) -> Option<usize> {
        busiest(self.stages.iter().map(StageStats::busy_fraction))
    }
}

impl fmt::Display for PipelineStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = (1 << 20) as f64;
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(0).max(5);
        writeln!(
            f,
            "{:>2}  {:<width$}  {:<10}  {:>10}  {:>11}  {:>11}  {:>6}  {:>8}  {:>8}",
            "#", "stage", "runs on", "items", "MiB in", "MiB out", "busy", "starved", "blocked"
        )?;
        let bottleneck = self.bottleneck();
        for (i, s) in self.stages.iter().enumerate() {
            let runs_on = format!("{} x{}", if s.on_thread { "thread" } else { "process" }, s.replicas);
            let pct = |d: Duration| {
                let total = s.busy.as_secs_f64() + s.starved.as_secs_f64() + s.blocked.as_secs_f64();
                if total == 0.0 {
                    0.0
                } else {
                    100.0 * d.as_secs_f64() / total
                }
            };
            write!(
                f,
                "{i:>2}  {:<width$}  {runs_on:<10}  {:>10}  {:>11.1}  {:>11.1}  {:>5.1}%  {:>7.1}%  {:>7.1}%",
                s.name,
                s.items,
                s.bytes_in as f64 / MIB,
                s.bytes_out as f64 / MIB,
                pct(s.busy),
                pct(s.starved),
                pct(s.blocked),
            )?;
            if bottleneck == Some(i) {
                write!(f, "  <- bottleneck")?;
            }
            writeln!(f)?;
        }
        let waited = if self.elapsed.is_zero() {
            0.0
        } else {
            100.0 * self.submit_waited.as_secs_f64() / self.elapsed.as_secs_f64()
        };
        write!(f, "callers waited on the pipeline {waited:.1}% of {:.2?}", self.elapsed)
    }
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use crate::memory::Tally;
    use crate::stage::CHAIN;
    use crate::{Chain, Pipeline, StageSpec};

    #[test]
    fn scribbled_counters_saturate_instead_of_panicking() {
        let empty_chain = StageSpec::thread_named(CHAIN).params(Chain::params::<&str, &[u8]>([])).replicas(2);
        let p = Pipeline::builder().stage(empty_chain).build().unwrap();
        let max = u64::MAX;
        let junk =
            Tally { items: max, bytes_in: max, bytes_out: 1, busy_ns: max, starved_ns: max, blocked_ns: 0 };
        for record in 0..2 {
            p.shared.seg.counters(record).store(&junk);
        }
        let stats = p.stats();
        assert_eq!((stats.stages[0].items, stats.stages[0].bytes_out), (max, 2));
        assert!(stats.stages[0].busy_fraction() <= 1.0);
        assert!(!stats.to_string().is_empty());
        p.shutdown();
    }
}

impl super::Pipeline {
    /// What every stage has done so far: items, bytes, and its runners' time busy,
    /// starved and blocked (see [`PipelineStats`] for an example). Cheap enough to
    /// call many times a second: it reads a few words per runner and stops nothing.
    /// Item and byte counts include every item that came out of the pipeline (a
    /// runner stores them before it hands items on); times lag by at most 16 items or
    /// 256 KiB of a runner's work, and are complete once it waits. A replaced
    /// worker's successor continues its predecessor's totals (less what it counted
    /// and had not stored yet).
    pub fn stats(&self) -> PipelineStats {
        stats_of(&self.shared)
    }
}

/// [`Pipeline::stats`] from the pipeline's shared state (the view's publisher reads it
/// too).
pub(crate) fn stats_of(shared: &super::Shared) -> PipelineStats {
    {
        let seg = &shared.seg;
        let stages = shared
            .stages
            .iter()
            .map(|info| {
                let mut s = StageStats {
                    name: info.name.clone(),
                    replicas: info.records.len(),
                    on_thread: info.on_thread,
                    items: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    busy: Duration::ZERO,
                    starved: Duration::ZERO,
                    blocked: Duration::ZERO,
                };
                // Saturating: the words are shared memory a buggy worker may have
                // scribbled on, and a statistic must not panic the parent.
                for t in info.records.clone().map(|r| seg.counters(r).load()) {
                    s.items = s.items.saturating_add(t.items);
                    s.bytes_in = s.bytes_in.saturating_add(t.bytes_in);
                    s.bytes_out = s.bytes_out.saturating_add(t.bytes_out);
                    s.busy = s.busy.saturating_add(Duration::from_nanos(t.busy_ns));
                    s.starved = s.starved.saturating_add(Duration::from_nanos(t.starved_ns));
                    s.blocked = s.blocked.saturating_add(Duration::from_nanos(t.blocked_ns));
                }
                s
            })
            .collect();
        PipelineStats {
            elapsed: shared.started.elapsed(),
            submit_waited: Duration::from_nanos(
                shared.submit_waited_ns.load(std::sync::atomic::Ordering::Relaxed),
            ),
            stages,
        }
    }
}
