//! The worker's side: apply a [`Sandbox`] to this process, still single-threaded.

use landlock::{
    Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI,
};
use rustix::process::{setrlimit, Resource, Rlimit};

use super::{filter, Enforced, Landlock, Sandbox};

/// Applies `sandbox` to the calling process and returns what was enforced. Call it
/// before any thread starts (Landlock and the resource limits then hold for every
/// thread the worker makes, and the seccomp filter is synchronised to all anyway).
///
/// Landlock and seccomp are best effort: a kernel without them (or a container that
/// forbids them) gives a worker without them, and the report says so. An error means
/// a resource limit or no_new_privs, which every Linux kernel has, was refused: the
/// worker must not go on.
pub(crate) fn apply(sandbox: &Sandbox) -> Result<Enforced, String> {
    let limit = |resource, what: &str, value: u64| {
        setrlimit(resource, Rlimit { current: Some(value), maximum: Some(value) })
            .map_err(|e| format!("cannot set the sandbox's {what} limit: {e}"))
    };
    limit(Resource::Core, "core dump", 0)?;
    limit(Resource::Fsize, "file size", sandbox.file_size)?;
    if let Some(cap) = sandbox.memory {
        limit(Resource::Data, "memory", cap)?;
    }
    let landlock = if sandbox.landlock { landlock() } else { Landlock::Off };
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    // Last of the limits: creating the Landlock ruleset needed a descriptor.
    limit(Resource::Nofile, "open files", 0)?;
    let no_new_privs = rustix::thread::no_new_privs().unwrap_or(false);
    let seccomp = sandbox.seccomp && filter::install().is_ok();
    Ok(Enforced { landlock, seccomp, no_new_privs })
}

/// The Landlock ABI at which everything the sandbox asks for is known.
const FULL_ABI: ABI = ABI::V6;

/// Forbids every filesystem access, TCP bind and connect, and signals and abstract
/// Unix sockets outside this process, as far as this kernel's Landlock knows them.
fn landlock() -> Landlock {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI::V5))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI::V4)))
        .and_then(|r| r.scope(Scope::from_all(FULL_ABI)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self());
    let Ok(status) = status else { return Landlock::Unavailable };
    let LandlockStatus::Available { effective_abi, .. } = status.landlock else {
        return Landlock::Unavailable;
    };
    let abi = effective_abi as u8;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Landlock::Full { abi },
        RulesetStatus::PartiallyEnforced => Landlock::Partial { abi },
        RulesetStatus::NotEnforced => Landlock::Unavailable,
    }
}
