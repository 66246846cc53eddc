//! `migctl`: the provisioning console and admin CLI for the MIG appliance. Each subcommand
//! parses its arguments and calls into the `mig` library, where the work is done and tested.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "migctl",
    version,
    about = "Provisioning and administration for the MIG appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic GP practice as FHIR R4 Bulk Data NDJSON (one file per resource type),
    /// the same for the same seed, ready for `migctl import`.
    DemoData {
        /// How many patients (at most 90,909; the first 18 are the fixed demo cases).
        #[arg(long, default_value_t = 1000)]
        patients: u64,
        /// Seed for the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory to write into (created if missing; NDJSON files there are replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("migctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::DemoData {
            patients,
            seed,
            out,
        } => demo_data(patients, seed, out),
    }
}

fn demo_data(patients: u64, seed: u64, out: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let summary = mig::synthetic::write_practice(&out, patients, seed)?;
    let seconds = started.elapsed().as_secs_f64();
    print!("{summary}");
    println!(
        "in {seconds:.1} s ({:.0} resources/s)",
        summary.resources as f64 / seconds.max(1e-9)
    );
    let demos: Vec<_> = mig::synthetic::demo_patients()
        .into_iter()
        .filter(|demo| demo.index < patients)
        .collect();
    if !demos.is_empty() {
        println!("demo patients:");
        for demo in demos {
            println!(
                "  {}  {:<5} {}",
                demo.nhs_number, demo.patient_id, demo.description
            );
        }
    }
    Ok(())
}
