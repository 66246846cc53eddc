//! Test support for TPM-backed tests: `Swtpm`, a private software TPM per test (killed on drop),
//! or the TPM named by `MIG_TEST_TCTI` (e.g. `device:/dev/tpmrm0`) when that is set. The
//! launcher is `mig_testkit::Swtpm`; this adds what needs the `mig` library.
//!
//! swtpm serves ONE client connection at a time: a second client (another `Tpm`, `migctl`
//! while `migd` runs, `raw_context`) blocks until the first disconnects. Drop the `Tpm` (or stop
//! migd) first; a real TPM behind `/dev/tpmrm0` has no such limit.
//!
//! Run: `cargo test -p hardware-tests` (each test starts its own swtpm, in parallel), or
//! `MIG_TEST_TCTI=device:/dev/tpmrm0 cargo test -p hardware-tests` against a real TPM. Tests
//! that would change a real TPM's state (owner password, lockout, reset) always use swtpm;
//! against a real TPM the PCR test extends only PCR 16 (the debug PCR).
#![forbid(unsafe_code)]

use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use mig_testkit::ports::free_port_pair;
pub use mig_testkit::swtpm::TCTI_ENV;

/// A `mig_testkit::Swtpm` that also gives `mig::tpm::TpmSettings` for itself.
#[derive(Debug)]
pub struct Swtpm(mig_testkit::Swtpm);

impl Swtpm {
    /// The TPM for one test: the one in `MIG_TEST_TCTI` if set, else a fresh swtpm.
    pub fn start() -> io::Result<Swtpm> {
        mig_testkit::Swtpm::start().map(Swtpm)
    }

    /// Always a fresh swtpm, for tests that change TPM state a real TPM must keep (owner
    /// password) or need a TPM reset.
    pub fn start_software() -> io::Result<Swtpm> {
        mig_testkit::Swtpm::start_software().map(Swtpm)
    }

    /// Settings for `mig::tpm::Tpm::connect` on this TPM.
    pub fn settings(&self, pcrs: &[u8]) -> mig::tpm::TpmSettings {
        mig::tpm::TpmSettings {
            tcti: self.tcti(),
            pcrs: pcrs.to_vec(),
            owner_auth: None,
        }
    }
}

impl Deref for Swtpm {
    type Target = mig_testkit::Swtpm;

    fn deref(&self) -> &mig_testkit::Swtpm {
        &self.0
    }
}

impl DerefMut for Swtpm {
    fn deref_mut(&mut self) -> &mut mig_testkit::Swtpm {
        &mut self.0
    }
}

/// Owner password helper for `TpmSettings::owner_auth`.
pub fn owner_auth(secret: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    Some(Zeroizing::new(secret.to_vec()))
}

/// Path helper: `dir/tpm/NAME`, the key files tests corrupt.
pub fn key_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(mig::tpm::KEY_DIR).join(name)
}

pub mod appliance;
pub mod load;
pub mod measure;
