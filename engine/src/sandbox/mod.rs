//! Sandboxed process stages: what a stage that parses untrusted bytes may reach.
//!
//! A [`Sandbox`] is declared on a process stage
//! ([`StageSpec::sandbox`](crate::StageSpec::sandbox)) and applied by the worker
//! itself, first thing after exec: before it starts a thread, before it reads the
//! segment, long before its first item. The parent passes it in the worker's
//! environment, not in shared memory, so a worker that scribbles on the segment
//! cannot loosen its replacement's sandbox. In order ([`apply`]):
//!
//! 1. resource limits, soft and hard (a process cannot raise its hard limits): private
//!    writable memory (`RLIMIT_DATA`, the memory cap), file size (`RLIMIT_FSIZE`, 0 by
//!    default), core dumps 0;
//! 2. Landlock: no filesystem access, no TCP bind or connect, no signals or abstract
//!    Unix sockets outside the worker (best effort: what this kernel's ABI knows);
//! 3. `PR_SET_NO_NEW_PRIVS`, then no new file descriptors (`RLIMIT_NOFILE` 0);
//! 4. a seccomp-bpf allow-list of what the stage loop needs ([`filter`]); any other
//!    system call kills the process with `SIGSYS`.
//!
//! The worker reports what this kernel enforced ([`SandboxReport`]); a violation kills
//! only that worker, and the item it held fails with a [`Violation`] naming the limit.

pub(crate) mod apply;
pub(crate) mod filter;

use std::fmt;

/// Environment variable carrying a worker's sandbox (see [`Sandbox::to_env`]).
pub(crate) const SANDBOX_ENV: &str = "RINGPIPE_SANDBOX";

/// What a sandboxed process stage may reach
/// ([`StageSpec::sandbox`](crate::StageSpec::sandbox)).
///
/// Each worker applies it itself, first thing after exec: before it starts a thread,
/// before it reads a byte of the shared segment, long before its first item. In
/// order: resource limits, soft and hard (memory cap as `RLIMIT_DATA`, file size,
/// no core dumps); Landlock (no filesystem access, no TCP bind or connect, no signals
/// or abstract Unix sockets outside; best effort by kernel ABI); `PR_SET_NO_NEW_PRIVS`;
/// no new file descriptors (`RLIMIT_NOFILE` 0); a seccomp-bpf allow-list of what the
/// stage loop needs (read, write, memory without `PROT_EXEC`, futex, clocks, threads,
/// exit), where any other system call (`open`, `socket`, `fork`, `execve`...) kills the
/// worker. The parent passes it in the worker's environment, never in shared memory.
///
/// [`strict`](Sandbox::strict) turns everything on; the builder methods loosen or
/// tighten it.
///
/// ```
/// use ringpipe_engine::{Sandbox, StageSpec};
/// let unzstd = StageSpec::process_named("unzstd")
///     .sandbox(Sandbox::strict().memory_cap(256 << 20).require_full());
/// assert_eq!(unzstd.sandbox_spec().and_then(Sandbox::memory_limit), Some(256 << 20));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a sandbox does nothing until it is given to `StageSpec::sandbox`"]
pub struct Sandbox {
    memory: Option<u64>,
    file_size: u64,
    landlock: bool,
    seccomp: bool,
    required: bool,
}

impl Sandbox {
    /// The memory cap of [`strict`](Self::strict) unless [`memory_cap`](Self::memory_cap)
    /// says otherwise: 1 GiB of private writable memory.
    pub const DEFAULT_MEMORY_CAP: u64 = 1 << 30;

    /// Everything on: a memory cap of [`DEFAULT_MEMORY_CAP`](Self::DEFAULT_MEMORY_CAP),
    /// no file may grow (file size limit 0), no core dumps, no new file descriptors,
    /// no new privileges, Landlock, and the seccomp allow-list. Best effort: on a
    /// kernel that cannot give part of it the stage still builds, and
    /// [`Pipeline::sandbox_reports`](crate::Pipeline::sandbox_reports) says what is
    /// missing, unless [`require_full`](Self::require_full).
    pub fn strict() -> Self {
        Self {
            memory: Some(Self::DEFAULT_MEMORY_CAP),
            file_size: 0,
            landlock: true,
            seccomp: true,
            required: false,
        }
    }

    /// Caps the worker's private writable memory (heap, stacks, private mappings, not
    /// the shared segment) at `bytes`. An allocation past it fails, the worker aborts,
    /// and the item fails with [`Violation::MemoryCap`].
    pub fn memory_cap(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// No memory cap.
    pub fn unlimited_memory(mut self) -> Self {
        self.memory = None;
        self
    }

    /// Lets the worker write files through inherited descriptors up to `bytes` (default
    /// 0). Writing past it kills the worker: [`Violation::FileSize`].
    ///
    /// The only descriptor a sandboxed worker inherits that can be a file is the
    /// parent's standard output (its standard error is a pipe the parent copies to its
    /// own, up to 1 MiB per worker, so a panic message never meets this limit). When the
    /// parent's standard output is a regular file (`prog > log`), the limit applies to
    /// it: a stage that prints there needs room here.
    pub fn file_size_limit(mut self, bytes: u64) -> Self {
        self.file_size = bytes;
        self
    }

    /// Leaves Landlock out (the seccomp allow-list still forbids opening files).
    pub fn without_landlock(mut self) -> Self {
        self.landlock = false;
        self
    }

    /// Leaves the seccomp allow-list out: any system call is allowed, and Landlock and
    /// the resource limits are what confine the stage.
    pub fn without_seccomp(mut self) -> Self {
        self.seccomp = false;
        self
    }

    /// Refuses to build ([`BuildError::SandboxIncomplete`](crate::BuildError::SandboxIncomplete))
    /// when this kernel cannot enforce everything asked for, instead of running with
    /// what it can.
    pub fn require_full(mut self) -> Self {
        self.required = true;
        self
    }

    /// The memory cap, if any.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory
    }

    /// The file size limit.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// True if built with [`require_full`](Self::require_full).
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// The form the worker reads from [`SANDBOX_ENV`].
    pub(crate) fn to_env(&self) -> String {
        let memory = self.memory.map_or_else(|| "-".to_owned(), |m| m.to_string());
        format!("m={memory},f={},l={},s={}", self.file_size, u8::from(self.landlock), u8::from(self.seccomp))
    }

    /// Parses [`to_env`](Self::to_env)'s form.
    pub(crate) fn from_env(s: &str) -> Result<Self, String> {
        let bad = || format!("bad {SANDBOX_ENV} value {s:?}");
        let mut sandbox = Self::strict();
        for field in s.split(',') {
            let (key, value) = field.split_once('=').ok_or_else(bad)?;
            let flag = || match value {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(bad()),
            };
            match key {
                "m" if value == "-" => sandbox.memory = None,
                "m" => sandbox.memory = Some(value.parse().map_err(|_| bad())?),
                "f" => sandbox.file_size = value.parse().map_err(|_| bad())?,
                "l" => sandbox.landlock = flag()?,
                "s" => sandbox.seccomp = flag()?,
                _ => return Err(bad()),
            }
        }
        Ok(sandbox)
    }
}

/// What Landlock enforced on a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Landlock {
    /// Everything asked for (no filesystem, no TCP, no signals or abstract sockets
    /// outside): the kernel's Landlock ABI is at least 6.
    Full {
        /// The Landlock ABI version used.
        abi: u8,
    },
    /// Part of it: an older ABI (filesystem from 1, TCP from 4, scopes from 6).
    Partial {
        /// The Landlock ABI version used.
        abi: u8,
    },
    /// This kernel has no Landlock, or it is disabled.
    Unavailable,
    /// Not asked for ([`Sandbox::without_landlock`]).
    Off,
}

/// What the sandbox of one stage's workers enforced on this kernel, as the worker
/// found it when it applied it.
///
/// ```
/// use ringpipe_engine::{Landlock, SandboxReport};
/// fn describe(r: &SandboxReport) -> String {
///     match r.landlock {
///         Landlock::Full { abi } | Landlock::Partial { abi } => format!("{}: Landlock ABI {abi}", r.name),
///         _ => format!("{}: no Landlock; missing {:?}", r.name, r.missing()),
///     }
/// }
/// # let _ = describe;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxReport {
    /// Stage index.
    pub stage: usize,
    /// Stage name.
    pub name: String,
    /// What Landlock enforced.
    pub landlock: Landlock,
    /// The seccomp allow-list is installed.
    pub seccomp: bool,
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// The memory cap in bytes, if any.
    pub memory_cap: Option<u64>,
    /// The file size limit in bytes.
    pub file_size_limit: u64,
    /// No new file descriptors can be opened (`RLIMIT_NOFILE` is 0).
    pub no_new_files: bool,
    /// Core dumps are off.
    pub no_core_dumps: bool,
    asked: Sandbox,
}

impl SandboxReport {
    pub(crate) fn new(stage: usize, name: String, asked: &Sandbox, enforced: Enforced) -> Self {
        Self {
            stage,
            name,
            landlock: enforced.landlock,
            seccomp: enforced.seccomp,
            no_new_privs: enforced.no_new_privs,
            memory_cap: asked.memory,
            file_size_limit: asked.file_size,
            no_new_files: true,
            no_core_dumps: true,
            asked: asked.clone(),
        }
    }

    /// What was asked for and is not enforced on this kernel (empty when complete).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.asked.landlock {
            match self.landlock {
                Landlock::Full { .. } | Landlock::Off => {}
                Landlock::Partial { .. } => missing.push("part of Landlock (ABI below 6)"),
                Landlock::Unavailable => missing.push("Landlock"),
            }
        }
        if self.asked.seccomp && !self.seccomp {
            missing.push("seccomp");
        }
        if !self.no_new_privs {
            missing.push("no_new_privs");
        }
        missing
    }

    /// True if everything asked for is enforced.
    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let landlock = match self.landlock {
            Landlock::Full { abi } => format!("Landlock ABI {abi}"),
            Landlock::Partial { abi } => format!("Landlock ABI {abi} (partial)"),
            Landlock::Unavailable => "no Landlock".into(),
            Landlock::Off => "Landlock off".into(),
        };
        let memory =
            self.memory_cap.map_or_else(|| "no memory cap".into(), |m| format!("memory cap {}", bytes(m)));
        write!(
            f,
            "stage {} (`{}`): {landlock}, seccomp {}, {memory}, file size limit {}, no new files, no core dumps",
            self.stage,
            self.name,
            if self.seccomp { "on" } else { "off" },
            bytes(self.file_size_limit)
        )
    }
}

/// `n` bytes in words: whole MiB as MiB, else bytes.
fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} B")
    }
}

/// What a worker found enforced, sent to the parent with its ready signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Enforced {
    pub landlock: Landlock,
    pub seccomp: bool,
    pub no_new_privs: bool,
}

impl Enforced {
    /// `S<landlock>,<abi>,<seccomp>,<no_new_privs>` (the handshake's report line).
    pub(crate) fn encode(&self) -> String {
        let (code, abi) = match self.landlock {
            Landlock::Full { abi } => ('F', abi),
            Landlock::Partial { abi } => ('P', abi),
            Landlock::Unavailable => ('U', 0),
            Landlock::Off => ('O', 0),
        };
        format!("S{code},{abi},{},{}\n", u8::from(self.seccomp), u8::from(self.no_new_privs))
    }

    pub(crate) fn decode(line: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(line.strip_prefix(b"S")?).ok()?;
        let mut it = text.split(',');
        let (code, abi) = (it.next()?, it.next()?.parse().ok()?);
        let landlock = match code {
            "F" => Landlock::Full { abi },
            "P" => Landlock::Partial { abi },
            "U" => Landlock::Unavailable,
            "O" => Landlock::Off,
            _ => return None,
        };
        let flag = |s: Option<&str>| match s? {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let (seccomp, no_new_privs) = (flag(it.next())?, flag(it.next())?);
        it.next().is_none().then_some(Self { landlock, seccomp, no_new_privs })
    }
}

/// The sandbox limit a worker hit: how it died, while holding the item.
///
/// ```
/// use ringpipe_engine::{ItemError, Violation};
/// fn why(e: &ItemError) -> Option<String> {
///     let ItemError::Stage { failure, .. } = e else { return None };
///     Some(match failure.violation? {
///         Violation::Syscall { number } => format!("tried forbidden system call {number:?}"),
///         Violation::MemoryCap { cap } => format!("needed more than its {cap}-byte cap"),
///         Violation::FileSize { limit } => format!("wrote a file past {limit} bytes"),
///         _ => "hit a sandbox limit".into(),
///     })
/// }
/// # let _ = why;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A system call outside the allow-list: the kernel stopped it before it ran and
    /// the worker died of `SIGSYS`. Its `Display` names the call (`openat`, `socket`,
    /// `clone`...).
    Syscall {
        /// The call's number on this architecture, as the worker's `SIGSYS` handler
        /// reported it (`None` if the worker died before it could say).
        number: Option<u32>,
    },
    /// An allocation past the memory cap failed and the worker aborted (`SIGABRT`).
    MemoryCap {
        /// The cap in bytes.
        cap: u64,
    },
    /// A write past the file size limit: the kernel killed the worker (`SIGXFSZ`).
    FileSize {
        /// The limit in bytes.
        limit: u64,
    },
}

impl Violation {
    /// What a worker of a stage with `sandbox` dying of `signal` violated, if anything;
    /// `forbidden` is the system call its `SIGSYS` handler reported.
    pub(crate) fn from_signal(sandbox: &Sandbox, signal: i32, forbidden: Option<u32>) -> Option<Self> {
        match signal {
            libc::SIGSYS if sandbox.seccomp => Some(Self::Syscall { number: forbidden }),
            libc::SIGXFSZ => Some(Self::FileSize { limit: sandbox.file_size }),
            libc::SIGABRT => sandbox.memory.map(|cap| Self::MemoryCap { cap }),
            _ => None,
        }
    }

    /// Its code in a slot header's `violation` field (0 is none), and the detail for
    /// `violation_detail` (a system call's number plus one, 0 if unknown).
    pub(crate) fn code(self) -> (u32, u32) {
        match self {
            Self::Syscall { number } => (1, number.map_or(0, |n| n.saturating_add(1))),
            Self::MemoryCap { .. } => (2, 0),
            Self::FileSize { .. } => (3, 0),
        }
    }

    /// The violation a header's code and detail name, with the stage's limits.
    pub(crate) fn from_code(code: u32, detail: u32, sandbox: Option<&Sandbox>) -> Option<Self> {
        let sandbox = sandbox?;
        match code {
            1 => Some(Self::Syscall { number: detail.checked_sub(1) }),
            2 => Some(Self::MemoryCap { cap: sandbox.memory.unwrap_or(0) }),
            3 => Some(Self::FileSize { limit: sandbox.file_size }),
            _ => None,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syscall { number: Some(n) } => match filter::syscall_name(*n) {
                Some(name) => {
                    write!(f, "system call `{name}` ({n}), outside the sandbox's allow-list (SIGSYS)")
                }
                None => write!(f, "system call {n}, outside the sandbox's allow-list (SIGSYS)"),
            },
            Self::Syscall { number: None } => {
                write!(f, "a system call outside the sandbox's allow-list (SIGSYS)")
            }
            Self::MemoryCap { cap } => {
                write!(f, "an allocation past the sandbox's memory cap of {cap} bytes (SIGABRT)")
            }
            Self::FileSize { limit } => {
                write!(f, "a write past the sandbox's file size limit of {limit} bytes (SIGXFSZ)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_form_round_trips_and_rejects_garbage() {
        for s in
            [Sandbox::strict(), Sandbox::strict().unlimited_memory().without_seccomp().file_size_limit(9)]
        {
            assert_eq!(Sandbox::from_env(&s.to_env()).unwrap(), Sandbox { required: false, ..s });
        }
        for bad in ["", "m=x", "l=2", "q=1", "m=1,f"] {
            assert!(Sandbox::from_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_report_line_round_trips() {
        for landlock in
            [Landlock::Full { abi: 7 }, Landlock::Partial { abi: 3 }, Landlock::Unavailable, Landlock::Off]
        {
            let e = Enforced { landlock, seccomp: true, no_new_privs: false };
            let line = e.encode();
            assert_eq!(Enforced::decode(line.trim_end().as_bytes()), Some(e));
        }
        assert_eq!(Enforced::decode(b"SF,7,1"), None);
        assert_eq!(Enforced::decode(b"SX,7,1,1"), None);
    }
}
