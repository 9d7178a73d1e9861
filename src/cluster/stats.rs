//! Each host's share of a [`ClusterPool`](super::ClusterPool)'s work.

/// One host's share of the work a [`ClusterPool`](super::ClusterPool) did, as the
/// master counted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostShare {
    /// The host's rank.
    pub rank: i32,
    /// The host's name.
    pub host: String,
    /// Tasks sent to it.
    pub sent: u64,
    /// Results it returned, failed ones included.
    pub done: u64,
    /// Of those, tasks that failed there.
    pub failed: u64,
    /// Task bytes sent to it.
    pub bytes_in: u64,
    /// Result bytes it returned.
    pub bytes_out: u64,
    /// The master counted it lost: it went silent holding tasks, which failed with
    /// [`ClusterError::HostLost`](super::ClusterError::HostLost).
    pub lost: bool,
}

/// Every host's share of a [`ClusterPool`](super::ClusterPool)'s work:
/// [`ClusterPool::stats`](super::ClusterPool::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// By rank.
    pub hosts: Vec<HostShare>,
}

impl ClusterStats {
    /// Results returned by all hosts together.
    pub fn done(&self) -> u64 {
        self.hosts.iter().map(|h| h.done).sum()
    }
}

impl std::fmt::Display for ClusterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.done().max(1) as f64;
        writeln!(
            f,
            "{:>4}  {:<16} {:>10} {:>6} {:>7} {:>12} {:>12}",
            "rank", "host", "tasks", "share", "failed", "bytes in", "bytes out"
        )?;
        for h in &self.hosts {
            writeln!(
                f,
                "{:>4}  {:<16} {:>10} {:>5.1}% {:>7} {:>12} {:>12}{}",
                h.rank,
                h.host,
                h.done,
                100.0 * h.done as f64 / total,
                h.failed,
                h.bytes_in,
                h.bytes_out,
                if h.lost { "  lost" } else { "" }
            )?;
        }
        Ok(())
    }
}
