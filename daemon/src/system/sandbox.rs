//! The Landlock file-system sandbox migd enters once the TPM is open: from then on the process
//! can reach only the paths listed here, whatever a bug or an attacker asks for.
//!
//! Enforces: file-system access (open, create, remove, rename, truncate, device ioctl, execute)
//! pinned to Landlock ABI 5 features, best effort on older kernels (logged). Does not restrict
//! network sockets (systemd's RestrictAddressFamilies does), nor file descriptors already open
//! before the sandbox (the TPM device, listeners), nor connecting to Unix sockets.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, LandlockStatus, PathBeneath, PathFd, RestrictSelfAttr,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};

use super::SystemError;
use crate::config::Config;

/// The Landlock feature set we ask for. Pinned (not "newest"), so a kernel upgrade cannot
/// silently start denying something migd needs (e.g. ABI 9's Unix-socket connect control
/// would break sd_notify).
const HANDLED_ABI: ABI = ABI::V5;

/// How a path may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxAccess {
    /// Read files; list directories.
    ReadOnly,
    /// Also create, write, truncate, rename and remove beneath it (no execute, no device nodes).
    ReadWrite,
    /// A device node: read, write, ioctl.
    Device,
}

/// One allowed path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRule {
    /// File or directory (directories cover everything beneath them).
    pub path: PathBuf,
    /// What is allowed.
    pub access: SandboxAccess,
    /// Why migd needs it after start (logged and documented).
    pub why: String,
    /// Missing path is an error (true) or skipped with a note (false).
    pub required: bool,
}

/// The set of allowed paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    rules: Vec<SandboxRule>,
}

/// What was enforced, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// "fully enforced", "enforced (all file-system rights)" (only the all-threads sync is
    /// missing), "PARTIALLY enforced (…)" or "NOT enforced".
    pub enforcement: &'static str,
    /// Whether any Landlock restriction is in force on this thread.
    pub enforced: bool,
    /// The kernel's Landlock status as the crate saw it.
    pub kernel: String,
    /// Whether the kernel applied it to every thread of the process (Landlock ABI 8), not just
    /// this thread and its future children.
    pub all_threads: bool,
    /// Paths allowed (path, access).
    pub allowed: Vec<(PathBuf, SandboxAccess)>,
    /// Optional paths skipped because they do not exist.
    pub skipped: Vec<PathBuf>,
}

impl SandboxReport {
    /// One log line saying what was enforced.
    pub fn summary(&self) -> String {
        let list = |a: SandboxAccess| {
            self.allowed
                .iter()
                .filter(|(_, x)| *x == a)
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "landlock sandbox {} (kernel: {}; {}); read-write: [{}]; device: [{}]; read-only: [{}]{}",
            self.enforcement,
            self.kernel,
            if self.all_threads {
                "all threads"
            } else {
                "this thread and threads it starts"
            },
            list(SandboxAccess::ReadWrite),
            list(SandboxAccess::Device),
            list(SandboxAccess::ReadOnly),
            if self.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; absent, skipped: [{}]",
                    self.skipped
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )
    }
}

impl Sandbox {
    /// An empty sandbox: applied as is, it denies every file-system access.
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// Allows `path` with `access`.
    pub fn allow(
        mut self,
        path: impl Into<PathBuf>,
        access: SandboxAccess,
        why: &str,
        required: bool,
    ) -> Sandbox {
        self.rules.push(SandboxRule {
            path: path.into(),
            access,
            why: why.to_string(),
            required,
        });
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[SandboxRule] {
        &self.rules
    }

    /// What migd needs after start, from its config (see SECURITY.md "Process hardening").
    pub fn for_config(config: &Config) -> Sandbox {
        use SandboxAccess::{Device, ReadOnly, ReadWrite};
        let mut s = Sandbox::new()
            .allow(
                &config.state_dir,
                ReadWrite,
                "state: keys, certificates, partners, replica, audit",
                true,
            )
            .allow(
                parent_or_self(&config.admin.socket),
                ReadWrite,
                "admin socket directory: create and remove the socket",
                true,
            );
        if !config.source_path.as_os_str().is_empty() {
            s = s.allow(
                &config.source_path,
                ReadOnly,
                "config file, re-read on SIGHUP",
                true,
            );
        }
        if let Some(dev) = config.tpm.tcti.device_path() {
            s = s.allow(dev, Device, "TPM device (device TCTI)", true);
        }
        if let Some(f) = &config.tpm.owner_auth_file {
            s = s.allow(f, ReadOnly, "TPM owner auth, for key re-creation", false);
        }
        if let Some(d) = &config.sensitive.extra_codes_dir {
            s = s.allow(
                d,
                ReadOnly,
                "practice sensitive-code lists, re-read on SIGHUP",
                false,
            );
        }
        s.allow(
            "/dev/urandom",
            ReadOnly,
            "randomness for SQLite/OpenSSL fallbacks that open it rather than call getrandom",
            false,
        )
        .allow(
            "/dev/null",
            Device,
            "libraries that redirect output to it",
            false,
        )
        .allow(
            "/proc",
            ReadOnly,
            "admin peers' supplementary groups (/proc/<pid>/status), own memory figures",
            false,
        )
        .allow(
            "/etc/passwd",
            ReadOnly,
            "user database for names in logs",
            false,
        )
        .allow("/etc/group", ReadOnly, "admin socket group lookup", false)
        .allow(
            "/etc/nsswitch.conf",
            ReadOnly,
            "how glibc looks users and groups up",
            false,
        )
    }

    /// Restricts the calling thread (and every thread it starts afterwards) to these paths,
    /// best effort: on a kernel without Landlock, or with an older ABI, it does what the
    /// kernel can and says so in the report (and the log). Asks the kernel to cover all threads
    /// (Landlock ABI 8); older kernels only restrict this thread, so call it on the main thread
    /// before the runtime's threads exist, and on every thread that already exists (the TPM
    /// thread). Irreversible; also sets no_new_privs.
    pub fn restrict_current_thread(&self) -> Result<SandboxReport, SystemError> {
        let ll = |operation: &str| {
            let operation = operation.to_string();
            move |source| SystemError::Landlock { operation, source }
        };
        let mut created = Ruleset::default()
            .handle_access(AccessFs::from_all(HANDLED_ABI))
            .map_err(ll("handle file-system access"))?
            .create()
            .map_err(ll("create ruleset"))?;
        let mut allowed = Vec::new();
        let mut skipped = Vec::new();
        for rule in &self.rules {
            let fd = match PathFd::new(&rule.path) {
                Ok(fd) => fd,
                Err(source) => {
                    if rule.required {
                        return Err(SystemError::SandboxPath {
                            path: rule.path.clone(),
                            why: rule.why.clone(),
                            source,
                        });
                    }
                    skipped.push(rule.path.clone());
                    continue;
                }
            };
            let is_dir = rule.path.is_dir();
            let access = access_for(rule.access, is_dir);
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(ll(&format!("allow {}", rule.path.display())))?;
            allowed.push((rule.path.clone(), rule.access));
        }
        let status: RestrictionStatus = created
            .all_threads(true)
            .map_err(ll("ask for all threads"))?
            .restrict_self()
            .map_err(ll("restrict self"))?;
        let kernel_has_all_rights = matches!(
            status.landlock,
            LandlockStatus::Available { effective_abi, .. } if effective_abi >= HANDLED_ABI
        );
        let (enforcement, enforced) = match status.ruleset {
            RulesetStatus::FullyEnforced => ("fully enforced", true),
            // Every file-system right is enforced; only the all-threads sync (ABI 8) is missing.
            RulesetStatus::PartiallyEnforced if kernel_has_all_rights && !status.all_threads => {
                ("enforced (all file-system rights)", true)
            }
            RulesetStatus::PartiallyEnforced => (
                "PARTIALLY enforced (this kernel's Landlock lacks some file-system rights)",
                true,
            ),
            RulesetStatus::NotEnforced => ("NOT enforced", false),
        };
        let report = SandboxReport {
            enforcement,
            enforced,
            kernel: format!("{:?}", status.landlock),
            all_threads: status.all_threads,
            allowed,
            skipped,
        };
        if enforced {
            tracing::info!("{}", report.summary());
        } else {
            tracing::warn!("{}", report.summary());
        }
        Ok(report)
    }
}

fn parent_or_self(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| p.to_path_buf())
}

/// Landlock rights for one rule. Files get file rights only (directory rights on a file are an
/// error to Landlock).
fn access_for(access: SandboxAccess, is_dir: bool) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(HANDLED_ABI);
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let wanted: BitFlags<AccessFs> = match access {
        SandboxAccess::ReadOnly => read,
        SandboxAccess::ReadWrite => {
            read | AccessFs::WriteFile
                | AccessFs::Truncate
                | AccessFs::RemoveDir
                | AccessFs::RemoveFile
                | AccessFs::MakeDir
                | AccessFs::MakeReg
                | AccessFs::MakeSock
                | AccessFs::Refer
        }
        SandboxAccess::Device => AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
    };
    let wanted = wanted & all;
    if is_dir {
        wanted
    } else {
        wanted & AccessFs::from_file(HANDLED_ABI)
    }
}
