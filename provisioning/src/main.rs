//! migctl: provision and administer the MIG appliance.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use migctl::cli::{Cli, Command};

fn main() -> ExitCode {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
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
