//! A whole appliance for end-to-end tests: swtpm, `migctl init`, certificates, partners, and a
//! running `migd`, in a temporary folder; everything is stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::load::ClientTls;

pub use migctl::demo::Appliance;

/// The demo partners' certificate file names, as `TestAppliance::partner_tls` takes them.
pub const AMBULANCE: &str = "ambulance";
pub const OUT_OF_HOURS: &str = "out-of-hours";
pub const SOCIAL_CARE: &str = "social-care";

/// Where cargo put the workspace's binaries (next to the test executable's `deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A provisioned appliance with migd running (or stopped, between `stop` and `start`).
pub struct TestAppliance {
    pub app: Appliance,
    pub migd: Option<Child>,
    _dir: tempfile::TempDir,
}

impl TestAppliance {
    /// Provisions an appliance and loads `patients` synthetic patients (seed 1).
    pub fn start(patients: usize) -> Result<TestAppliance, String> {
        Self::start_with_env(patients, &[])
    }

    pub fn start_with_env(patients: usize, env: &[(&str, &str)]) -> Result<TestAppliance, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let app = migctl::demo::provision(&dir.path().join("appliance"), 0)
            .map_err(|e| format!("{e:#}"))?;
        let mut appliance = TestAppliance {
            app,
            migd: None,
            _dir: dir,
        };
        appliance.start_migd(env)?;
        if patients > 0 {
            migctl::demo::load_practice(&appliance.app, patients).map_err(|e| format!("{e:#}"))?;
        }
        Ok(appliance)
    }

    /// Starts migd (after `stop`), waiting until it is ready.
    pub fn start_migd(&mut self, env: &[(&str, &str)]) -> Result<(), String> {
        let child = migctl::demo::start_migd(&self.app, &binary("migd"), env)
            .map_err(|e| format!("{e:#}"))?;
        self.migd = Some(child);
        Ok(())
    }

    /// Sends SIGTERM and waits (up to 30 s) for migd to exit; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.migd.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.migd.as_ref().map(Child::id)
    }

    pub fn config_path(&self) -> &Path {
        &self.app.config_path
    }

    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.app.api_port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.app.dir.join("migd.log")).unwrap_or_default()
    }

    /// Client TLS material for a demo partner (`AMBULANCE`, …) or `clinical-system`.
    pub fn partner_tls(&self, who: &str) -> ClientTls {
        let read =
            |name: String| std::fs::read_to_string(self.app.pki.join(name)).unwrap_or_default();
        ClientTls {
            server_name: "localhost".into(),
            ca_pem: read("appliance-ca.pem".into()),
            cert_pem: read(format!("{who}.crt")),
            key_pem: read(format!("{who}.key")),
        }
    }

    /// Runs `migctl --config <this appliance> ARGS…`.
    pub fn migctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(binary("migctl"))
            .arg("--config")
            .arg(&self.app.config_path)
            .args(args)
            .output()
            .unwrap_or_else(|e| std::process::Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: e.to_string().into_bytes(),
            })
    }
}

impl Drop for TestAppliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.migd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.app.stop_tpm();
    }
}
