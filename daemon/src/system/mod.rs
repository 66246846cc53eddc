//! How migd lives as a system service: systemd notify and watchdog, signals, and process
//! hardening (no core dumps, non-dumpable, memory locking, user switch, Landlock sandbox).
//!
//! Start-up order that migd's `main` follows (each step's reason in its function's docs):
//! 1. [`Config::load`](crate::config::Config::load); 2. [`disable_core_dumps`] before any
//!    secret is in memory; 3. [`drop_privileges`] when started as root, so every file made from
//!    here on belongs to the service user; 4. [`lock_memory`] (warn only; after the user switch,
//!    as the switch loses CAP_IPC_LOCK); 5. open the TPM on
//!    its thread (tpm2-tss loads its TCTI library at run time), unseal, open the replica;
//! 6. [`Sandbox::restrict_current_thread`] on the main thread and on the TPM thread, *before*
//!    the tokio runtime is built, so every runtime thread inherits the sandbox; 7. build the
//!    runtime, bind listeners and the admin socket, [`notify::ready`], run
//!    [`notify::watchdog_loop`] and [`Signals`].

pub mod atomic_file;
pub mod harden;
pub mod journal;
pub mod notify;
pub mod sandbox;
pub mod signals;

pub use harden::{
    disable_core_dumps, disable_huge_pages, drop_privileges, harden_process, is_dumpable,
    lock_memory, DroppedTo, HardeningReport,
};
pub use sandbox::{Sandbox, SandboxAccess, SandboxReport, SandboxRule};
pub use signals::{SignalEvent, Signals};

/// Why a system-level step failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A notification to systemd could not be sent.
    #[error("cannot notify systemd ({state})")]
    Notify {
        /// What was being sent.
        state: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the {signal} handler")]
    Signal {
        /// SIGHUP, SIGTERM or SIGINT.
        signal: &'static str,
        /// tokio's error.
        source: std::io::Error,
    },
    /// A hardening call failed.
    #[error("process hardening failed: {operation}")]
    Harden {
        /// The call that failed.
        operation: &'static str,
        /// The OS error.
        source: nix::Error,
    },
    /// The configured service user does not exist.
    #[error("service user {user:?} does not exist (create it, or fix service.user in the config)")]
    NoSuchUser {
        /// The name from the config.
        user: String,
    },
    /// Looking up the user database failed.
    #[error("cannot look up user {user:?}")]
    UserLookup {
        /// The name looked up.
        user: String,
        /// The OS error.
        source: nix::Error,
    },
    /// After switching user, root could be regained: refuse to run.
    #[error("dropped to uid {uid} but could switch back to root; refusing to run")]
    PrivilegesNotDropped {
        /// The uid switched to.
        uid: u32,
    },
    /// The Landlock sandbox could not be set up or applied.
    #[error("landlock sandbox: {operation}")]
    Landlock {
        /// The step that failed.
        operation: String,
        /// The crate's error.
        source: landlock::RulesetError,
    },
    /// A path the sandbox must allow does not exist.
    #[error("landlock sandbox: {} ({why}) cannot be opened", path.display())]
    SandboxPath {
        /// The path.
        path: std::path::PathBuf,
        /// Why the sandbox allows it.
        why: String,
        /// The open error.
        source: landlock::PathFdError,
    },
}
