//! `migctl console`: the first-boot wizard (being written; see issue 8).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};

pub fn run(_config_path: &Path, _progress: Option<&Path>) -> Result<ExitCode> {
    bail!("the console wizard is not available in this build; use the migctl commands (see docs/operations.md)")
}
