//! Test support for TPM-backed tests: `Swtpm`, a private software TPM per test (killed on drop),
//! or the TPM named by `MIG_TEST_TCTI` (e.g. `device:/dev/tpmrm0`) when that is set.
//!
//! Also small TPM manipulations tests need (extend a PCR, change the owner password), done over
//! a separate connection.
//!
//! swtpm serves ONE client connection at a time: a second client (another `Tpm`, `migctl`
//! while `migd` runs, `raw_context`) blocks until the first disconnects. Drop the `Tpm` (or stop
//! migd) first; a real TPM behind `/dev/tpmrm0` has no such limit.
//!
//! Run: `cargo test -p hardware-tests` (each test starts its own swtpm, in parallel), or
//! `MIG_TEST_TCTI=device:/dev/tpmrm0 cargo test -p hardware-tests` against a real TPM. Tests
//! that would change a real TPM's state (owner password, lockout, reset) always use swtpm;
//! against a real TPM the PCR test extends only PCR 16 (the debug PCR).

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tss_esapi::handles::{AuthHandle, ObjectHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest, DigestValues};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;
use zeroize::Zeroizing;

/// Environment variable naming an existing TPM to test against instead of swtpm.
pub const TCTI_ENV: &str = "MIG_TEST_TCTI";

const START_ATTEMPTS: usize = 10;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running software TPM (or the external TPM from `MIG_TEST_TCTI`). Dropping it kills swtpm
/// and deletes its state.
pub struct Swtpm {
    process: Option<Child>,
    port: u16,
    /// Holds `state/` (swtpm's NVRAM) and `swtpm.log`.
    dir: tempfile::TempDir,
    external: Option<String>,
}

impl std::fmt::Debug for Swtpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swtpm").field("tcti", &self.tcti()).finish()
    }
}

impl Swtpm {
    /// The TPM for one test: the one in `MIG_TEST_TCTI` if set, else a fresh swtpm.
    pub fn start() -> io::Result<Swtpm> {
        quiet_tss_logs();
        match std::env::var(TCTI_ENV) {
            Ok(tcti) if !tcti.is_empty() => Ok(Swtpm {
                process: None,
                port: 0,
                dir: tempfile::tempdir()?,
                external: Some(tcti),
            }),
            _ => Swtpm::start_software(),
        }
    }

    /// Always a fresh swtpm, for tests that change TPM state a real TPM must keep (owner
    /// password) or need a TPM reset.
    pub fn start_software() -> io::Result<Swtpm> {
        quiet_tss_logs();
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("state"))?;
        let mut swtpm = Swtpm {
            process: None,
            port: 0,
            dir,
            external: None,
        };
        swtpm.spawn(None)?;
        Ok(swtpm)
    }

    /// The TCTI string for `mig::tpm::TpmSettings` or `migd.toml`.
    pub fn tcti(&self) -> String {
        match &self.external {
            Some(tcti) => tcti.clone(),
            None => format!("swtpm:host=127.0.0.1,port={}", self.port),
        }
    }

    /// True when testing against `MIG_TEST_TCTI` rather than a private swtpm.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// swtpm's NVRAM directory (None for an external TPM).
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.external
            .is_none()
            .then(|| self.dir.path().join("state"))
    }

    /// Settings for `mig::tpm::Tpm::connect` on this TPM.
    pub fn settings(&self, pcrs: &[u8]) -> mig::tpm::TpmSettings {
        mig::tpm::TpmSettings {
            tcti: self.tcti(),
            pcrs: pcrs.to_vec(),
            owner_auth: None,
        }
    }

    /// Stops swtpm and starts it again on the same state: a TPM reset (PCRs cleared, loaded
    /// objects gone, seeds and NV kept), like a reboot. Keeps the port when it can; read
    /// `tcti()` again afterwards. Not possible on an external TPM.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.external.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cannot restart an external TPM (MIG_TEST_TCTI)",
            ));
        }
        if let Some(mut child) = self.process.take() {
            // SIGTERM lets swtpm write its state out, as a clean shutdown would.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            child.wait()?;
        }
        let port = self.port;
        self.spawn(Some(port))
    }

    fn spawn(&mut self, preferred_port: Option<u16>) -> io::Result<()> {
        let state = self.dir.path().join("state");
        let mut last_error = None;
        for attempt in 0..START_ATTEMPTS {
            let port = match (attempt, preferred_port) {
                (0, Some(port)) => port,
                _ => free_port_pair()?,
            };
            let log = File::create(self.dir.path().join("swtpm.log"))?;
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    self.process = Some(child);
                    self.port = port;
                    return Ok(());
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("swtpm did not start")))
    }

    /// Opens a raw tss-esapi context on this TPM (no `Tpm` may be connected to swtpm meanwhile).
    pub fn raw_context(&self) -> io::Result<Context> {
        let conf = TctiNameConf::from_str(&self.tcti())
            .map_err(|e| io::Error::other(format!("bad TCTI: {e}")))?;
        Context::new(conf).map_err(|e| io::Error::other(format!("open TPM: {e}")))
    }

    /// Extends SHA-256 PCR `pcr` with SHA-256(`data`), as a boot component measurement would.
    pub fn extend_pcr(&self, pcr: u8, data: &[u8]) -> io::Result<()> {
        let mut context = self.raw_context()?;
        let handle = PcrHandle::try_from(u32::from(pcr)).map_err(tpm_io)?;
        let digest = Digest::try_from(Sha256::digest(data).to_vec()).map_err(tpm_io)?;
        let mut values = DigestValues::new();
        values.set(HashingAlgorithm::Sha256, digest);
        context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(tpm_io)
    }

    /// Changes the owner hierarchy password from `old` to `new` (empty = none).
    pub fn set_owner_auth(&self, old: &[u8], new: &[u8]) -> io::Result<()> {
        if self.external.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "refusing to change the owner password of a real TPM",
            ));
        }
        let mut context = self.raw_context()?;
        context
            .tr_set_auth(ObjectHandle::Owner, Auth::try_from(old).map_err(tpm_io)?)
            .map_err(tpm_io)?;
        let new = Auth::try_from(new).map_err(tpm_io)?;
        context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.hierarchy_change_auth(AuthHandle::Owner, new)
            })
            .map_err(tpm_io)
    }

    /// Where swtpm writes its output, for a failing test to show.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("swtpm.log")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Owner password helper for `TpmSettings::owner_auth`.
pub fn owner_auth(secret: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    Some(Zeroizing::new(secret.to_vec()))
}

fn tpm_io(e: tss_esapi::Error) -> io::Error {
    io::Error::other(format!("TPM: {e}"))
}

/// A port P with P+1 also free (swtpm's control channel), chosen by the kernel.
pub fn free_port_pair() -> io::Result<u16> {
    for _ in 0..50 {
        let data = TcpListener::bind("127.0.0.1:0")?;
        let port = data.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free pair of TCP ports for swtpm"))
}

/// Waits until both swtpm ports accept connections, or swtpm exits (port taken).
fn wait_ready(child: &mut Child, port: u16) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("swtpm exited early: {status}")));
        }
        let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
        if up(port + 1) && up(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "swtpm did not open its ports in time",
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Silences tpm2-tss's own logging to stderr unless the caller chose a level.
pub fn quiet_tss_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+NONE");
        }
    });
}

/// Path helper: `dir/tpm/NAME`, the key files tests corrupt.
pub fn key_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(mig::tpm::KEY_DIR).join(name)
}

pub mod appliance;
pub mod load;
pub mod measure;
