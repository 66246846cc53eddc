//! `migctl console`: the first-boot wizard for practice IT staff on the appliance's console.
//! It walks the `migctl` steps (init, csr, cert install, trust add, partner add) with plain
//! prompts, re-asks on any bad answer, and keeps its progress in a file so a rerun resumes.
//!
//! Every step calls the same function the matching `migctl` command calls, so the wizard
//! validates exactly what the commands validate; it adds no rule of its own beyond "not empty".
//! The progress file holds answers and step names only (no keys, no certificates).

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use strum::IntoEnumIterator;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::{InitArgs, PartnerAddArgs};
use crate::commands;
use mig::config::{Asid, Config, FhirBase, OdsCode, PcrSelection, Tcti};
use mig::registry;
use mig::system::atomic_file::{self, Existing};
use mig_policy::fhir::Section;
use mig_policy::PartnerType;

/// The progress file's name, next to the config unless `--progress` says otherwise.
pub const PROGRESS_FILE: &str = "console-progress.json";
/// Exit status when the operator stopped (Ctrl-D) or left a step for later; progress is saved.
pub const EXIT_UNFINISHED: u8 = 3;
const PROGRESS_VERSION: u32 = 1;

/// The steps, in order: (key kept in the progress file, title shown).
const STEPS: [(&str, &str); 8] = [
    ("practice", "The practice"),
    ("asid", "The appliance's ASID"),
    ("network", "Network"),
    ("tpm", "TPM, then initialise the appliance"),
    ("csr", "Certificate signing request"),
    ("certificate", "The appliance's certificate"),
    ("partners", "Partner CA and partners"),
    ("summary", "Summary and confirmation"),
];
const INIT_STEP: usize = 3;
const CERT_STEP: usize = 5;
const SUMMARY_STEP: usize = 7;

/// What can stop the wizard besides a failing `migctl` step.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Standard input closed at a prompt (Ctrl-D): the operator chose to stop.
    #[error("input closed at a prompt")]
    Stopped,
    /// Reading from or writing to the terminal failed.
    #[error("terminal {operation}")]
    Terminal {
        operation: &'static str,
        source: std::io::Error,
    },
    /// The progress file cannot be read, understood or written.
    #[error("progress file {}: {reason}", path.display())]
    Progress { path: PathBuf, reason: String },
    /// The progress file cannot be saved.
    #[error("cannot save the wizard's progress")]
    SaveProgress(#[source] atomic_file::WriteError),
}

/// What the wizard remembers between runs. No secrets: answers, step names, file paths.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    version: u32,
    /// Keys of the completed steps.
    done: BTreeSet<String>,
    answers: Answers,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Answers {
    ods: Option<String>,
    name: Option<String>,
    asid: Option<String>,
    listen: Option<String>,
    upstream_listen: Option<String>,
    fhir_base: Option<String>,
    admin_socket: Option<String>,
    tcti: Option<String>,
    pcrs: Option<String>,
    state_dir: Option<String>,
    csr_subject: Option<String>,
    csr_file: Option<String>,
    certificate_file: Option<String>,
    trusted_cas: Vec<String>,
    partners: Vec<String>,
}

/// How a step ended.
enum Outcome {
    Done,
    /// Left for a later run (only the certificate step: the CA may take days).
    Later,
    /// Go back to this step index (the operator wants to change something).
    Redo(usize),
}

/// `migctl console [--progress FILE]`.
pub fn run(config_path: &Path, progress: Option<&Path>) -> Result<ExitCode> {
    let progress_path = match progress {
        Some(path) => path.to_owned(),
        None => config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(PROGRESS_FILE),
    };
    let stdin = std::io::stdin();
    let mut wizard = Wizard {
        input: stdin.lock(),
        config_path: config_path.to_owned(),
        progress_path: progress_path.clone(),
        progress: load_progress(&progress_path)?,
    };
    match wizard.run() {
        Ok(code) => Ok(code),
        Err(e) if matches!(e.downcast_ref(), Some(ConsoleError::Stopped)) => {
            println!();
            println!(
                "Stopped: progress saved, run migctl console again to continue ({}).",
                progress_path.display()
            );
            Ok(ExitCode::from(EXIT_UNFINISHED))
        }
        Err(e) => Err(e),
    }
}

fn load_progress(path: &Path) -> Result<Progress, ConsoleError> {
    let bad = |reason: String| ConsoleError::Progress {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress {
            version: PROGRESS_VERSION,
            ..Progress::default()
        }),
        Err(e) => Err(bad(format!("cannot read it: {e}"))),
        Ok(bytes) => {
            let progress: Progress = serde_json::from_slice(&bytes).map_err(|e| {
                bad(format!(
                    "not a progress file ({e}); move it away to start again"
                ))
            })?;
            if progress.version != PROGRESS_VERSION {
                return Err(bad(format!(
                    "written by another version ({}); move it away to start again",
                    progress.version
                )));
            }
            Ok(progress)
        }
    }
}

/// Writes the progress atomically, readable by its owner only.
fn save_progress(path: &Path, progress: &Progress) -> Result<(), ConsoleError> {
    let bad = |reason: String| ConsoleError::Progress {
        path: path.to_owned(),
        reason,
    };
    let text = serde_json::to_string_pretty(progress).map_err(|e| bad(e.to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
    let text = text + "\n";
    atomic_file::write(path, text.as_bytes(), 0o600, Existing::Replace, |_| Ok(()))
        .map_err(ConsoleError::SaveProgress)
}

struct Wizard<R: BufRead> {
    input: R,
    config_path: PathBuf,
    progress_path: PathBuf,
    progress: Progress,
}

fn flush() -> Result<(), ConsoleError> {
    std::io::stdout()
        .flush()
        .map_err(|source| ConsoleError::Terminal {
            operation: "write",
            source,
        })
}

/// The host part of a FHIR base URL (`https://host:port/path`).
fn url_host(url: &str) -> String {
    FhirBase::from_str(url)
        .map(|b| b.host().to_owned())
        .unwrap_or_default()
}

impl<R: BufRead> Wizard<R> {
    fn done(&self, step: usize) -> bool {
        self.progress.done.contains(STEPS[step].0)
    }

    fn mark(&mut self, step: usize, done: bool) -> Result<(), ConsoleError> {
        let key = STEPS[step].0.to_owned();
        if done {
            self.progress.done.insert(key);
        } else {
            self.progress.done.remove(&key);
        }
        self.save()
    }

    fn save(&self) -> Result<(), ConsoleError> {
        save_progress(&self.progress_path, &self.progress)
    }

    /// One line from the operator, trimmed; Enter alone gives `default` (or "").
    fn ask(&mut self, question: &str, default: Option<&str>) -> Result<String, ConsoleError> {
        match default.filter(|d| !d.is_empty()) {
            Some(d) => print!("{question} [{d}]: "),
            None => print!("{question}: "),
        }
        flush()?;
        let mut line = String::new();
        let read = self
            .input
            .read_line(&mut line)
            .map_err(|source| ConsoleError::Terminal {
                operation: "read",
                source,
            })?;
        if read == 0 {
            return Err(ConsoleError::Stopped);
        }
        let answer = line.trim();
        Ok(if answer.is_empty() {
            default.unwrap_or_default().to_owned()
        } else {
            answer.to_owned()
        })
    }

    /// Asks until `check` accepts the answer, explaining each refusal.
    fn ask_valid<T>(
        &mut self,
        question: &str,
        default: Option<&str>,
        mut check: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<T, ConsoleError> {
        loop {
            let answer = self.ask(question, default)?;
            match check(&answer) {
                Ok(value) => return Ok(value),
                Err(why) => println!("  Not accepted: {why}. Please try again."),
            }
        }
    }

    fn yes_no(&mut self, question: &str, default: bool) -> Result<bool, ConsoleError> {
        let hint = if default { "Y/n" } else { "y/N" };
        self.ask_valid(&format!("{question} [{hint}]"), None, |a| {
            match a.to_ascii_lowercase().as_str() {
                "" => Ok(default),
                "y" | "yes" => Ok(true),
                "n" | "no" => Ok(false),
                _ => Err(format!("{a:?}: answer y or n")),
            }
        })
    }

    fn config(&self) -> Result<Config> {
        Config::load(&self.config_path).with_context(|| {
            format!(
                "reading the config {} written at step 4",
                self.config_path.display()
            )
        })
    }

    fn run(&mut self) -> Result<ExitCode> {
        println!("MIG appliance first-boot setup");
        println!("==============================");
        println!("This sets up the appliance in {} steps. Press Enter to accept a suggestion shown in [brackets].", STEPS.len());
        println!("Press Ctrl-D at any question to stop; what is done is kept and running `migctl console` again continues.");
        println!(
            "(Config: {}; progress: {})",
            self.config_path.display(),
            self.progress_path.display()
        );
        if self.config_path.exists() && !self.done(INIT_STEP) {
            println!(
                "\n{} already exists, so this appliance is already initialised: steps 1 to 4 are skipped.",
                self.config_path.display()
            );
            for (key, _) in STEPS.iter().take(INIT_STEP + 1) {
                self.progress.done.insert((*key).to_owned());
            }
            self.save()?;
        }
        if self.done(INIT_STEP) && !self.config_path.exists() {
            return Err(anyhow!(
                "the progress file {} says the appliance was initialised, but its config {} is missing; \
                 check --config, or move the progress file away to start again",
                self.progress_path.display(),
                self.config_path.display()
            ));
        }
        let mut later = BTreeSet::new();
        let mut step = 0;
        while step < STEPS.len() {
            let (_, title) = STEPS[step];
            if self.done(step) {
                println!(
                    "\nStep {} of {}: {title}: already done, skipping.",
                    step + 1,
                    STEPS.len()
                );
                step += 1;
                continue;
            }
            if later.contains(&step) {
                println!(
                    "\nStep {} of {}: {title}: left for later.",
                    step + 1,
                    STEPS.len()
                );
                step += 1;
                continue;
            }
            let heading = format!("Step {} of {}: {title}", step + 1, STEPS.len());
            println!("\n{heading}\n{}", "-".repeat(heading.len()));
            let outcome = match step {
                0 => self.practice()?,
                1 => self.asid()?,
                2 => self.network()?,
                3 => self.tpm_and_init()?,
                4 => self.csr()?,
                5 => self.certificate()?,
                6 => self.partners()?,
                _ => self.summary(!later.is_empty())?,
            };
            match outcome {
                Outcome::Done => {
                    if step != SUMMARY_STEP || later.is_empty() {
                        self.mark(step, true)?;
                    }
                    step += 1;
                }
                Outcome::Later => {
                    later.insert(step);
                    step += 1;
                }
                Outcome::Redo(to) => {
                    for (key, _) in STEPS.iter().skip(to) {
                        self.progress.done.remove(*key);
                    }
                    later.clear();
                    self.save()?;
                    step = to;
                }
            }
        }
        println!();
        if later.is_empty() {
            println!("The appliance is provisioned.");
            println!("Next:");
            println!(
                "  systemctl enable --now migd     start the appliance service (and at every boot)"
            );
            println!("  migctl check                    every check should say ok");
            println!("  migctl status                   what the running appliance is doing");
            Ok(ExitCode::SUCCESS)
        } else {
            println!("Nearly there: the appliance's certificate is not installed yet.");
            println!(
                "When your certificate authority sends it, run `migctl console` again (or `migctl cert install FILE`)."
            );
            Ok(ExitCode::from(EXIT_UNFINISHED))
        }
    }

    fn practice(&mut self) -> Result<Outcome> {
        println!("The practice's ODS code is its NHS organisation code, e.g. A81001.");
        let previous = self.progress.answers.ods.clone();
        let ods = self.ask_valid("Practice ODS code", previous.as_deref(), |a| {
            OdsCode::from_str(&a.to_ascii_uppercase())
                .map(|o| o.to_string())
                .map_err(|e| e.0)
        })?;
        let previous = self.progress.answers.name.clone();
        let name = self.ask_valid(
            "Practice name (as partners should see it)",
            previous.as_deref(),
            |a| {
                if a.is_empty() {
                    Err("the name is empty".to_owned())
                } else {
                    Ok(a.to_owned())
                }
            },
        )?;
        self.progress.answers.ods = Some(ods);
        self.progress.answers.name = Some(name);
        Ok(Outcome::Done)
    }

    fn asid(&mut self) -> Result<Outcome> {
        println!("The ASID (Accredited System ID) is the 12-digit number NHS England issued for this appliance.");
        let previous = self.progress.answers.asid.clone();
        let asid = self.ask_valid("ASID", previous.as_deref(), |a| {
            let digits: String = a.chars().filter(|c| !c.is_whitespace()).collect();
            Asid::from_str(&digits)
                .map(|a| a.to_string())
                .map_err(|e| e.0)
        })?;
        self.progress.answers.asid = Some(asid);
        Ok(Outcome::Done)
    }

    fn network(&mut self) -> Result<Outcome> {
        let answers = self.progress.answers.clone();
        println!("Partners (ambulance, out-of-hours, ...) connect to the appliance on this address and port.");
        let listen: std::net::SocketAddr = self.ask_valid(
            "Partner listener address",
            Some(answers.listen.as_deref().unwrap_or("0.0.0.0:8443")),
            |a| {
                a.parse()
                    .map_err(|_| format!("{a:?} is not an address and port like 0.0.0.0:8443"))
            },
        )?;
        println!("If the practice's clinical system pushes updates to the appliance, give the address it connects to (e.g. 0.0.0.0:8444).");
        let upstream = self.ask_valid(
            "Clinical system listener address (Enter for none)",
            answers.upstream_listen.as_deref(),
            |a| {
                if a.is_empty() || a.eq_ignore_ascii_case("none") {
                    return Ok(None);
                }
                a.parse::<std::net::SocketAddr>()
                    .map(|s| Some(s.to_string()))
                    .map_err(|_| format!("{a:?} is not an address and port like 0.0.0.0:8444"))
            },
        )?;
        println!("The FHIR base URL is the address partners use for this appliance; it must start with https://.");
        let default_base = answers.fhir_base.clone().unwrap_or_else(|| {
            format!(
                "https://{}:{}/fhir",
                crate::commands::hostname(),
                listen.port()
            )
        });
        let fhir_base = self.ask_valid("FHIR base URL", Some(&default_base), |a| {
            FhirBase::from_str(a)
                .map(|b| b.to_string())
                .map_err(|e| e.0)
        })?;
        println!("migctl talks to the running appliance through a local socket; keep the suggestion unless told otherwise.");
        let admin_socket = self.ask_valid(
            "Admin socket",
            Some(
                answers
                    .admin_socket
                    .as_deref()
                    .unwrap_or("/run/mig/admin.sock"),
            ),
            |a| {
                if Path::new(a).is_absolute() {
                    Ok(a.to_owned())
                } else {
                    Err(format!("{a:?} is not a full path starting with /"))
                }
            },
        )?;
        let answers = &mut self.progress.answers;
        answers.listen = Some(listen.to_string());
        answers.upstream_listen = upstream;
        answers.fhir_base = Some(fhir_base);
        answers.admin_socket = Some(admin_socket);
        Ok(Outcome::Done)
    }

    fn tpm_and_init(&mut self) -> Result<Outcome> {
        loop {
            let answers = self.progress.answers.clone();
            println!("The TPM is the security chip that holds the appliance's keys.");
            let found: Vec<&str> = ["/dev/tpmrm0", "/dev/tpm0"]
                .into_iter()
                .filter(|d| Path::new(d).exists())
                .collect();
            let suggestion = match found.first() {
                Some(device) => {
                    println!(
                        "Found {}: the usual choice is device:{}.",
                        found.join(" and "),
                        device
                    );
                    Some(format!("device:{device}"))
                }
                None => {
                    println!("No TPM device (/dev/tpmrm0) was found on this machine: check the TPM is enabled in the firmware setup.");
                    println!("Other choices: tabrmd (the TPM access broker), swtpm:host=H,port=P (a software TPM, for testing only).");
                    Some("device:/dev/tpmrm0".to_owned())
                }
            };
            let tcti = self.ask_valid(
                "TPM access (TCTI)",
                answers.tcti.as_deref().or(suggestion.as_deref()),
                |a| Tcti::from_str(a).map(|t| t.to_string()).map_err(|e| e.0),
            )?;
            println!("The replica's key is sealed to these PCRs (measurements of the boot); sha256:7 is the Secure Boot state.");
            let pcrs = self.ask_valid(
                "PCRs",
                Some(answers.pcrs.as_deref().unwrap_or("sha256:7")),
                |a| {
                    PcrSelection::from_str(a)
                        .map(|p| p.to_string())
                        .map_err(|e| e.0)
                },
            )?;
            println!("The state directory holds the encrypted replica, the audit trail and the registry.");
            let state_dir = self.ask_valid(
                "State directory",
                Some(answers.state_dir.as_deref().unwrap_or("/var/lib/mig")),
                |a| {
                    if Path::new(a).is_absolute() {
                        Ok(a.to_owned())
                    } else {
                        Err(format!("{a:?} is not a full path starting with /"))
                    }
                },
            )?;
            {
                let answers = &mut self.progress.answers;
                answers.tcti = Some(tcti);
                answers.pcrs = Some(pcrs);
                answers.state_dir = Some(state_dir);
            }
            self.save()?;
            let args = self.init_args()?;
            println!("\nReady to initialise the appliance:");
            println!("  practice          {} ({})", args.name, args.ods);
            println!("  ASID              {}", args.asid);
            println!("  partner listener  {}", args.listen);
            println!(
                "  clinical system   {}",
                args.upstream_listen.as_deref().unwrap_or("none")
            );
            println!(
                "  FHIR base URL     {}",
                args.fhir_base.as_deref().unwrap_or("")
            );
            println!("  TPM               {} (PCRs {})", args.tcti, args.pcrs);
            println!("  state directory   {}", args.state_dir.display());
            println!("  config file       {}", self.config_path.display());
            println!("This creates the TPM keys and the encrypted replica; it cannot be undone from here.");
            if !self.yes_no("Initialise now?", true)? {
                println!(
                    "Then let's go through the steps again; your answers are the suggestions."
                );
                return Ok(Outcome::Redo(0));
            }
            match commands::init(&self.config_path, &args) {
                Ok(_) => {
                    println!("Initialised.");
                    return Ok(Outcome::Done);
                }
                Err(e) => {
                    println!("  Initialisation failed: {e:#}");
                    println!("  Check the TPM setting (is the TPM enabled, is the device there?) and the state directory, then try again.");
                }
            }
        }
    }

    fn init_args(&self) -> Result<InitArgs> {
        let a = &self.progress.answers;
        let need = |value: &Option<String>, what: &str| {
            value
                .clone()
                .ok_or_else(|| anyhow!("the progress file has no {what}; answer step again"))
        };
        Ok(InitArgs {
            state_dir: PathBuf::from(need(&a.state_dir, "state directory")?),
            ods: need(&a.ods, "ODS code")?,
            name: need(&a.name, "practice name")?,
            asid: need(&a.asid, "ASID")?,
            tcti: need(&a.tcti, "TCTI")?,
            listen: need(&a.listen, "partner listener")?,
            upstream_listen: a.upstream_listen.clone(),
            admin_socket: PathBuf::from(need(&a.admin_socket, "admin socket")?),
            fhir_base: Some(need(&a.fhir_base, "FHIR base URL")?),
            pcrs: need(&a.pcrs, "PCRs")?,
            // Not asked at the console: set extracts.sub_icb when the practice starts sending
            // statistical extracts (docs/operations.md).
            sub_icb: None,
            metrics_listen: None,
        })
    }

    fn csr(&mut self) -> Result<Outcome> {
        let config = self.config()?;
        let host = url_host(config.appliance.fhir_base.as_str());
        println!("The certificate signing request (CSR) asks a certificate authority for the appliance's certificate.");
        println!(
            "Its subject names the appliance, e.g. CN={host},O={},C=GB.",
            config.appliance.name
        );
        let previous = self.progress.answers.csr_subject.clone();
        let default = previous.unwrap_or_else(|| format!("CN={host}"));
        let (subject, pem) = loop {
            let subject = self.ask("Subject", Some(&default))?;
            match commands::csr(&config, &subject) {
                Ok(pem) => break (subject, pem),
                Err(e) => println!("  Not accepted: {e:#}. Please try again."),
            }
        };
        println!("Where should the request be written? A USB stick is usual, e.g. /media/usb/appliance.csr.");
        let file = self.ask_valid(
            "File for the request (Enter to only show it on screen)",
            self.progress.answers.csr_file.clone().as_deref(),
            |a| {
                if a.is_empty() {
                    return Ok(None);
                }
                // A folder (the USB stick's mount point) gets the usual file name.
                let mut path = PathBuf::from(a);
                if path.is_dir() {
                    path.push("appliance.csr");
                }
                registry::write_atomic(&path, pem.as_bytes())
                    .map(|_| Some(path.display().to_string()))
                    .map_err(|e| format!("cannot write it: {}", mig::error::Chain(&e)))
            },
        )?;
        let show = match &file {
            Some(path) => {
                println!("Wrote the request to {path}.");
                self.yes_no("Show it on screen too?", false)?
            }
            None => true,
        };
        if show {
            println!("\n{}", pem.trim_end());
            println!();
        }
        println!("Send the request to your certificate authority. When the certificate comes back, continue with step 6.");
        self.progress.answers.csr_subject = Some(subject);
        self.progress.answers.csr_file = file;
        Ok(Outcome::Done)
    }

    fn certificate(&mut self) -> Result<Outcome> {
        let config = self.config()?;
        println!("Give the file the certificate authority sent back: the appliance's certificate first, then the");
        println!("certificates of the authority that issued it (PEM text starting with -----BEGIN CERTIFICATE-----).");
        println!(
            "If you do not have it yet, type skip: running `migctl console` again comes back here."
        );
        loop {
            let answer = self.ask("Certificate chain file (or skip)", None)?;
            if answer.eq_ignore_ascii_case("skip") {
                println!("Left for later.");
                return Ok(Outcome::Later);
            }
            if answer.is_empty() {
                println!("  Not accepted: give a file name, or type skip. Please try again.");
                continue;
            }
            let pem = match std::fs::read(&answer) {
                Ok(pem) => pem,
                Err(e) => {
                    println!("  Not accepted: cannot read {answer}: {e}. Please try again.");
                    continue;
                }
            };
            match commands::install_certificate(&config, &pem) {
                Ok(path) => {
                    println!(
                        "Installed the appliance's certificate as {}.",
                        path.display()
                    );
                    self.progress.answers.certificate_file = Some(answer);
                    return Ok(Outcome::Done);
                }
                Err(e) => {
                    println!("  Not accepted: {e:#}.");
                    println!("  The certificate must be the one issued for this appliance's request (step 5), valid today,");
                    println!("  and followed by its authority's certificates. Please try again, or type skip.");
                }
            }
        }
    }

    fn partners(&mut self) -> Result<Outcome> {
        let config = self.config()?;
        let state = config.state_dir.clone();
        println!("Partners' client certificates are issued by a certificate authority (CA) that the appliance must trust.");
        loop {
            let answer = self.ask(
                "Partner CA certificate file (Enter when there are no more)",
                None,
            )?;
            if answer.is_empty() {
                break;
            }
            let result = std::fs::read(&answer)
                .map_err(|e| anyhow!("cannot read {answer}: {e}"))
                .and_then(|pem| Ok(registry::add_trust_ca(&state, &pem)?));
            match result {
                Ok(paths) => {
                    println!("Trusted {} CA certificate(s) from {answer}.", paths.len());
                    self.progress.answers.trusted_cas.push(answer);
                    self.save()?;
                }
                Err(e) => println!("  Not accepted: {e:#}. Please try again."),
            }
        }
        let existing = registry::list_partners(&state)?;
        if !existing.is_empty() {
            println!("Already registered:");
            for p in &existing {
                println!("  {} {}", p.agreement.ods, p.agreement.name);
            }
            println!(
                "(To change one, remove it with `migctl partner remove ODS` and add it again.)"
            );
        }
        println!("Now the partners: organisations allowed to read records, each with its data sharing agreement.");
        let mut another = self.yes_no("Register a partner now?", existing.is_empty())?;
        while another {
            self.one_partner(&state)?;
            another = self.yes_no("Add another partner?", false)?;
        }
        Ok(Outcome::Done)
    }

    /// Asks for one partner until `partner_from_args` and the registry accept it.
    fn one_partner(&mut self, state: &Path) -> Result<()> {
        let types: Vec<_> = PartnerType::iter().map(PartnerType::name).collect();
        let sections: Vec<_> = Section::ALL.iter().map(|s| s.name()).collect();
        let mut previous = PartnerAddArgs {
            ods: String::new(),
            name: String::new(),
            partner_type: String::new(),
            cert: None,
            spki_sha256: None,
            sections: "all".into(),
            roles: String::new(),
            override_roles: None,
            override_sections: None,
            sites: None,
            expires: None,
            attested_permission: false,
        };
        loop {
            let ods = self.ask_valid("Partner ODS code", Some(&previous.ods), |a| {
                OdsCode::from_str(&a.to_ascii_uppercase())
                    .map(|o| o.to_string())
                    .map_err(|e| e.0)
            })?;
            let name = self.ask_valid("Partner name", Some(&previous.name), |a| {
                if a.is_empty() {
                    Err("the name is empty".to_owned())
                } else {
                    Ok(a.to_owned())
                }
            })?;
            println!("  Types: {}", types.join(", "));
            let partner_type =
                self.ask_valid("Partner type", Some(&previous.partner_type), |a| {
                    PartnerType::from_name(a)
                        .map(|t| t.name().to_owned())
                        .ok_or_else(|| format!("{a:?} is not one of the types listed"))
                })?;
            let previous_cert = previous
                .cert
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let cert = self.ask_valid(
                "Partner's client certificate file (PEM)",
                Some(&previous_cert),
                |a| {
                    if a.is_empty() {
                        Err("give the certificate file".to_owned())
                    } else if !Path::new(a).is_file() {
                        Err(format!("{a} is not a file"))
                    } else {
                        Ok(PathBuf::from(a))
                    }
                },
            )?;
            println!("  Sections: {}, or all", sections.join(", "));
            let sections_answer =
                self.ask("Sections the partner may see", Some(&previous.sections))?;
            println!("  Job roles are SDS role codes, comma-separated, e.g. R8000,R8003, or * for any role.");
            let roles = self.ask("Roles that may read records", Some(&previous.roles))?;
            let override_roles = self.ask(
                "Roles that may override in an emergency (Enter for none)",
                previous.override_roles.as_deref(),
            )?;
            let args = PartnerAddArgs {
                ods,
                name,
                partner_type,
                cert: Some(cert),
                spki_sha256: None,
                sections: sections_answer,
                roles,
                override_roles: Some(override_roles).filter(|r| !r.is_empty()),
                override_sections: None,
                sites: None,
                expires: None,
                attested_permission: false,
            };
            let result = commands::partner_from_args(&args)
                .and_then(|partner| Ok((registry::add_partner(state, &partner)?, partner)));
            match result {
                Ok((_, partner)) => {
                    println!(
                        "Registered {} ({}).",
                        partner.agreement.name, partner.agreement.ods
                    );
                    self.progress
                        .answers
                        .partners
                        .push(partner.agreement.ods.clone());
                    self.save()?;
                    return Ok(());
                }
                Err(e) => {
                    println!("  Not accepted: {e:#}.");
                    println!(
                        "  Let's go through this partner again; your answers are the suggestions."
                    );
                    previous = args;
                }
            }
        }
    }

    fn summary(&mut self, certificate_later: bool) -> Result<Outcome> {
        let config = self.config()?;
        let state = &config.state_dir;
        let a = &config.appliance;
        println!("  practice          {} ({})", a.name, a.ods);
        println!("  ASID              {}", a.asid);
        println!("  partner listener  {}", config.partner_api.listen);
        println!(
            "  clinical system   {}",
            config
                .upstream
                .as_ref()
                .map(|u| u.listen.to_string())
                .unwrap_or_else(|| "none".into())
        );
        println!("  FHIR base URL     {}", a.fhir_base);
        println!("  admin socket      {}", config.admin.socket.display());
        println!(
            "  TPM               {} (PCRs {})",
            config.tpm.tcti, config.tpm.pcrs
        );
        println!("  state directory   {}", state.display());
        println!("  certificate       {}", describe_certificate(state));
        let cas = std::fs::read_dir(state.join(registry::TRUST_DIR))
            .map(|d| d.count())
            .unwrap_or(0);
        println!("  partner CAs       {cas} trusted");
        let partners = registry::list_partners(state)?;
        if partners.is_empty() {
            println!("  partners          none yet");
        }
        for p in &partners {
            println!(
                "  partner           {} {} ({})",
                p.agreement.ods,
                p.agreement.name,
                p.agreement.partner_type.name()
            );
        }
        if certificate_later {
            println!("The certificate step was left for later.");
        }
        if self.yes_no("Is all of this right?", true)? {
            return Ok(Outcome::Done);
        }
        println!("Steps 1 to 4 cannot be changed here (the appliance is initialised).");
        let redo = self.ask_valid(
            "Which step do you want to do again: 5 (request), 6 (certificate) or 7 (partners)?",
            None,
            |a| match a {
                "5" => Ok(4),
                "6" => Ok(CERT_STEP),
                "7" => Ok(6),
                _ => Err(format!("{a:?}: answer 5, 6 or 7")),
            },
        )?;
        Ok(Outcome::Redo(redo))
    }
}

/// The installed certificate's subject and expiry, or why there is none.
fn describe_certificate(state: &Path) -> String {
    use rustls_pki_types::pem::PemObject;
    let Ok(pem) = std::fs::read(state.join(registry::CHAIN_FILE)) else {
        return "NOT INSTALLED YET".into();
    };
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(|c| c.ok())
        .and_then(|der| registry::cert_identity(&der));
    match leaf {
        Some(id) => {
            let expires = time::OffsetDateTime::from_unix_timestamp(id.not_after)
                .map(|t| t.date().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("installed: {} (expires {expires})", id.subject)
        }
        None => "installed (unreadable?)".into(),
    }
}
