//! Process hardening: no core dumps, not dumpable (no ptrace or /proc/pid/mem by same-uid
//! processes), memory locked against swap where allowed, and root dropped for the service user.
//!
//! Guards against: key material reaching disk through core dumps or swap, and another process
//! of the same user reading migd's memory. Does not guard against root or the kernel.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::unistd::{getgrouplist, setgid, setgroups, setuid, Gid, Uid, User};

use super::SystemError;

/// Sets RLIMIT_CORE to 0 (soft and hard, so it cannot be raised again) and marks the process
/// non-dumpable (PR_SET_DUMPABLE 0). Call first thing, before any secret is in memory.
/// Non-dumpable also makes `/proc/<pid>/` files root-owned and refuses ptrace from the same uid.
/// Note: a later setuid() resets dumpable, so [`drop_privileges`] calls this again.
pub fn disable_core_dumps() -> Result<(), SystemError> {
    // Under systemd LimitCORE=0 has already done this, and the unit's syscall filter may then
    // refuse setrlimit: only call it when there is something to change.
    let current = getrlimit(Resource::RLIMIT_CORE).map_err(|source| SystemError::Harden {
        operation: "getrlimit(RLIMIT_CORE)",
        source,
    })?;
    if current != (0, 0) {
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|source| SystemError::Harden {
            operation: "setrlimit(RLIMIT_CORE, 0)",
            source,
        })?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(|source| SystemError::Harden {
        operation: "prctl(PR_SET_DUMPABLE, 0)",
        source,
    })
}

/// Whether the process is dumpable (PR_GET_DUMPABLE).
pub fn is_dumpable() -> Result<bool, SystemError> {
    nix::sys::prctl::get_dumpable().map_err(|source| SystemError::Harden {
        operation: "prctl(PR_GET_DUMPABLE)",
        source,
    })
}

/// Turns transparent huge pages off for this process (PR_SET_THP_DISABLE). The allocator
/// advises huge pages for its arenas, so every page it returns to the kernel and touches again
/// costs a fault that zeroes 2 MiB, and resident memory grows in 2 MiB steps. With THP off an
/// uncached structured record took about a quarter less CPU and peak RSS fell by a quarter
/// (measured on a loaded machine; in the history of docs/performance.md). Call first thing in
/// `main`; it applies to every later page fault.
pub fn disable_huge_pages() -> Result<(), SystemError> {
    nix::sys::prctl::set_thp_disable(true).map_err(|source| SystemError::Harden {
        operation: "prctl(PR_SET_THP_DISABLE, 1)",
        source,
    })
}

/// Locks current and future memory into RAM so keys are never swapped out
/// (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`). MCL_ONFAULT locks pages as they are
/// touched, so reserved-but-unused memory (thread stacks, allocator arenas) is not made
/// resident. Fails when RLIMIT_MEMLOCK is below the process's mapped size: the unit sets
/// `LimitMEMLOCK=infinity`; callers warn and carry on (the appliance has no swap by default).
pub fn lock_memory() -> Result<(), SystemError> {
    let (soft, _) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|source| SystemError::Harden {
        operation: "getrlimit(RLIMIT_MEMLOCK)",
        source,
    })?;
    // With MCL_FUTURE, a finite limit turns later allocations into failures (and an abort)
    // rather than just an unlocked page. Root's CAP_IPC_LOCK would ignore the limit, but is
    // lost at drop_privileges, so the limit alone decides. Call after drop_privileges.
    if soft != RLIM_INFINITY {
        return Err(SystemError::Harden {
            operation: "mlockall skipped: RLIMIT_MEMLOCK is finite (set LimitMEMLOCK=infinity)",
            source: nix::Error::ENOMEM,
        });
    }
    // nix names MCL_CURRENT and MCL_FUTURE only; MCL_ONFAULT (Linux 4.4) is passed as a raw bit.
    let flags = MlockAllFlags::MCL_CURRENT
        | MlockAllFlags::MCL_FUTURE
        | MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
    mlockall(flags).map_err(|source| SystemError::Harden {
        operation: "mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)",
        source,
    })
}

/// Who the process became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTo {
    /// The user's uid.
    pub uid: u32,
    /// The user's primary gid.
    pub gid: u32,
    /// Every group the process now has (the user's supplementary groups, as in /etc/group,
    /// e.g. `tss` for the TPM device and `mig-admin` for the admin socket's group).
    pub groups: Vec<u32>,
}

/// When running as root, becomes `user`: supplementary groups from the group database
/// (setgroups), then the primary group (setgid), then the user (setuid), then checks that root
/// cannot be regained. Not root: does nothing and returns `None` (systemd already started us as
/// the service user). glibc applies set*id to every thread, but call this before starting any
/// anyway. Marks the process non-dumpable again, as setuid resets the flag.
pub fn drop_privileges(user: &str) -> Result<Option<DroppedTo>, SystemError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let entry = User::from_name(user)
        .map_err(|source| SystemError::UserLookup {
            user: user.to_string(),
            source,
        })?
        .ok_or_else(|| SystemError::NoSuchUser {
            user: user.to_string(),
        })?;
    let harden = |operation: &'static str| move |source| SystemError::Harden { operation, source };
    let name = std::ffi::CString::new(user).map_err(|_| SystemError::NoSuchUser {
        user: user.to_string(),
    })?;
    let groups: Vec<Gid> =
        getgrouplist(&name, entry.gid).map_err(harden("getgrouplist for the service user"))?;
    setgroups(&groups).map_err(harden("setgroups"))?;
    setgid(entry.gid).map_err(harden("setgid"))?;
    setuid(entry.uid).map_err(harden("setuid"))?;
    if !entry.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        return Err(SystemError::PrivilegesNotDropped {
            uid: entry.uid.as_raw(),
        });
    }
    nix::sys::prctl::set_dumpable(false)
        .map_err(harden("prctl(PR_SET_DUMPABLE, 0) after setuid"))?;
    tracing::info!(
        "switched from root to user {user} (uid {}, gid {})",
        entry.uid,
        entry.gid
    );
    Ok(Some(DroppedTo {
        uid: entry.uid.as_raw(),
        gid: entry.gid.as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
    }))
}

/// What [`harden_process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardeningReport {
    /// The user switched to, if started as root.
    pub dropped_to: Option<DroppedTo>,
    /// Whether memory is locked (false: see the warning in the log).
    pub memory_locked: bool,
}

/// Steps 2–4 of the start-up order (see `system`): core dumps off and non-dumpable (fatal on
/// failure), switch to `service_user` when root (fatal on failure; a warning when root and no
/// user is configured), then lock memory (a warning on failure).
pub fn harden_process(service_user: Option<&str>) -> Result<HardeningReport, SystemError> {
    disable_core_dumps()?;
    let dropped_to = match service_user {
        Some(user) => drop_privileges(user)?,
        None => {
            if Uid::effective().is_root() {
                tracing::warn!(
                    "running as root: set service.user in the config (the packaged unit runs \
                     migd as user mig)"
                );
            }
            None
        }
    };
    let memory_locked = match lock_memory() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "memory not locked, key pages could be swapped out: {}",
                crate::error::Chain(&e)
            );
            false
        }
    };
    Ok(HardeningReport {
        dropped_to,
        memory_locked,
    })
}
