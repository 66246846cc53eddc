//! migctl: provision and administer the MIG appliance.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use migctl::cli::{Cli, Command};

/// tpm2-tss prints its own warnings to stderr unless told not to; it reads only the environment.
#[allow(
    clippy::disallowed_methods,
    reason = "runs at the start of main, before any thread exists to read the environment"
)]
fn quiet_tss_logs() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
}

fn main() -> ExitCode {
    quiet_tss_logs();
    let Cli { config, command } = Cli::parse();
    // Dispatch here, so that the console and the demo use the commands and not the reverse.
    let result = match command {
        Command::Console { progress } => migctl::console::run(&config, progress.as_deref()),
        #[cfg(feature = "demo")]
        Command::Demo {
            dir,
            patients,
            detach,
        } => migctl::demo::run(&dir, patients, detach),
        command => migctl::commands::run(&config, command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("migctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
