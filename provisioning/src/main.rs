//! migctl: provision and administer the MIG appliance.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let cli = migctl::cli::Cli::parse();
    match migctl::commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("migctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
