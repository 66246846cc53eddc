//! A software TPM (swtpm) on loopback TCP ports, one per caller: for a test (killed and deleted
//! when dropped) or for `migctl demo` (detached, stopped later through its pid file). Tests may
//! name a real TPM instead with `MIG_TEST_TCTI` (e.g. `device:/dev/tpmrm0`).
//!
//! swtpm serves ONE client connection at a time: a second client (another `Tpm`, `migctl`
//! while `migd` runs, [`Swtpm::raw_context`]) blocks until the first disconnects. A real TPM
//! behind `/dev/tpmrm0` has no such limit.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};
use tss_esapi::handles::{AuthHandle, ObjectHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest, DigestValues};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

use crate::ports::free_port_pair;

/// Environment variable naming an existing TPM to test against instead of swtpm.
pub const TCTI_ENV: &str = "MIG_TEST_TCTI";

const START_ATTEMPTS: usize = 10;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running software TPM (or the external TPM from `MIG_TEST_TCTI`). Dropping it kills swtpm;
/// one made by [`Swtpm::start`] or [`Swtpm::start_software`] also deletes its state.
pub struct Swtpm {
    process: Option<Child>,
    port: u16,
    /// Holds `swtpm/` (swtpm's NVRAM), `swtpm.log` and `swtpm.pid`.
    dir: PathBuf,
    /// Its own process group, so a Ctrl-C meant for the demo does not reach it.
    own_group: bool,
    _temp: Option<tempfile::TempDir>,
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
        match std::env::var(TCTI_ENV) {
            Ok(tcti) if !tcti.is_empty() => {
                let temp = tempfile::tempdir()?;
                Ok(Swtpm {
                    process: None,
                    port: 0,
                    dir: temp.path().to_owned(),
                    own_group: false,
                    _temp: Some(temp),
                    external: Some(tcti),
                })
            }
            _ => Swtpm::start_software(),
        }
    }

    /// Always a fresh swtpm in a temporary folder, for tests that change TPM state a real TPM
    /// must keep (owner password) or need a TPM reset.
    pub fn start_software() -> io::Result<Swtpm> {
        let temp = tempfile::tempdir()?;
        let mut swtpm = Swtpm::launch(temp.path(), false)?;
        swtpm._temp = Some(temp);
        Ok(swtpm)
    }

    /// A swtpm keeping its state in `dir/swtpm`, its output in `dir/swtpm.log` and its pid in
    /// `dir/swtpm.pid`, in its own process group: the demo's, which [`Swtpm::detach`]es it.
    pub fn start_in(dir: &Path) -> io::Result<Swtpm> {
        Swtpm::launch(dir, true)
    }

    fn launch(dir: &Path, own_group: bool) -> io::Result<Swtpm> {
        std::fs::create_dir_all(dir.join("swtpm"))?;
        let mut swtpm = Swtpm {
            process: None,
            port: 0,
            dir: dir.to_owned(),
            own_group,
            _temp: None,
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

    /// The data port (control is the next one); 0 for an external TPM.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when testing against `MIG_TEST_TCTI` rather than a private swtpm.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// swtpm's NVRAM directory (None for an external TPM).
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.external.is_none().then(|| self.dir.join("swtpm"))
    }

    /// Where swtpm writes its output, for a failing test to show.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("swtpm.log")
    }

    /// Where swtpm's pid is written, for [`stop_pid_file`].
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("swtpm.pid")
    }

    /// Leaves swtpm running after this value is gone (and after this process exits); stop it
    /// with [`stop_pid_file`] on [`Swtpm::pid_file`].
    pub fn detach(mut self) {
        self.process = None;
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
            let _ = kill(pid_of(&child), Signal::SIGTERM);
            child.wait()?;
        }
        let port = self.port;
        self.spawn(Some(port))
    }

    fn spawn(&mut self, preferred_port: Option<u16>) -> io::Result<()> {
        let state = self.dir.join("swtpm");
        let mut last_error = None;
        for attempt in 0..START_ATTEMPTS {
            let port = match (attempt, preferred_port) {
                (0, Some(port)) => port,
                _ => free_port_pair()?,
            };
            let log = File::create(self.log_path())?;
            let mut command = Command::new("swtpm");
            command
                .args(["socket", "--tpm2", "--server"])
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if self.own_group {
                command.process_group(0);
            }
            let mut child = command.spawn().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting swtpm (apt-get install swtpm swtpm-tools): {e}"),
                )
            })?;
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    std::fs::write(self.pid_file(), child.id().to_string())?;
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
            .map_err(|e| io::Error::other(format!("bad TCTI {}: {e}", self.tcti())))?;
        Context::new(conf).map_err(|e| io::Error::other(format!("open TPM {}: {e}", self.tcti())))
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
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(self.pid_file());
        }
    }
}

/// Sends SIGTERM to the process whose pid `path` holds (a detached swtpm, the demo's migd) and
/// removes the file. Nothing to do when the file is missing.
pub fn stop_pid_file(path: &Path) {
    if let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let _ = std::fs::remove_file(path);
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn tpm_io(e: tss_esapi::Error) -> io::Error {
    io::Error::other(format!("TPM: {e}"))
}

/// Waits until both swtpm ports accept connections, or swtpm exits (port taken).
fn wait_ready(child: &mut Child, port: u16) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "swtpm exited early on port {port}: {status}"
            )));
        }
        let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
        if up(port + 1) && up(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("swtpm did not open ports {port} and {} in time", port + 1),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
