//! `migctl check`: small named checks, each ok, warn or fail with what to do about it.

use mig::error::Chain;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use mig::config::Config;
use mig_admin_proto::Status;

use super::{admin_call, public_keys, AdminFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug)]
pub struct Finding {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn finding(name: &'static str, level: Level, detail: impl Into<String>) -> Finding {
    Finding {
        name,
        level,
        detail: detail.into(),
    }
}

const DAY: i64 = 86_400;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs every check; the exit code is non-zero if any failed.
pub fn run(config: &Config) -> ExitCode {
    let findings = checks(config);
    for f in &findings {
        let label = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        // Details quote file names and contents: nothing in them may move the cursor or
        // start a line of its own.
        let detail: String = f
            .detail
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        println!("{label}  {:<22} {detail}", f.name);
    }
    if findings.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn checks(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut migd_problems = Vec::new();
    let running = match admin_call(config, Status {}) {
        Ok(status) => {
            migd_problems = status
                .registry_problems
                .iter()
                .map(|p| (p.file.clone(), format!("{} ({})", p.error, p.consequence)))
                .collect();
            let (ready, healthy) = (status.ready, status.healthy);
            out.push(match (ready, healthy) {
                (true, true) => finding("migd running", Level::Ok, "ready and healthy"),
                (true, false) => finding(
                    "migd running",
                    Level::Fail,
                    "running but its health check fails (TPM or replica); see `journalctl -u migd`",
                ),
                _ => finding(
                    "migd running",
                    Level::Warn,
                    "starting up; check again in a few seconds",
                ),
            });
            // A healthy migd has just proven the TPM, its keys and the unsealed replica key.
            if healthy {
                out.push(finding(
                    "TPM and keys",
                    Level::Ok,
                    "migd's health check reached the TPM and read the replica",
                ));
            }
            Some(healthy)
        }
        Err(AdminFailure::NotRunning(_)) => {
            out.push(finding("migd running", Level::Fail, "not running: `systemctl start migd` (or see `journalctl -u migd` for why it stopped)"));
            None
        }
        Err(AdminFailure::Refused(e)) => {
            out.push(finding(
                "migd running",
                Level::Fail,
                format!("the admin socket answered badly: {e:#}"),
            ));
            None
        }
    };
    if running.is_none() {
        out.extend(tpm_checks(config));
    }
    out.extend(certificate_checks(config));
    out.extend(registry_checks(config, &migd_problems));
    out.push(clock_check());
    out.push(disk_check(config));
    out
}

/// With migd stopped, migctl may use the TPM itself.
fn tpm_checks(config: &Config) -> Vec<Finding> {
    let settings = match mig::service::tpm_settings(config) {
        Ok(s) => s,
        Err(e) => return vec![finding("TPM reachable", Level::Fail, Chain(&e).to_string())],
    };
    let tpm = match mig::tpm::Tpm::connect(&settings) {
        Ok(tpm) => tpm,
        Err(e) => return vec![finding("TPM reachable", Level::Fail, Chain(&e).to_string())],
    };
    let mut out = vec![finding(
        "TPM reachable",
        Level::Ok,
        config.tpm.tcti.to_string(),
    )];
    if let Err(e) = tpm.load(&config.state_dir) {
        out.push(finding("keys load", Level::Fail, Chain(&e).to_string()));
        return out;
    }
    out.push(finding(
        "keys load",
        Level::Ok,
        "TLS and audit keys, the sealed replica key and the audit counter loaded",
    ));
    out.push(match tpm.unseal_replica_key() {
        Ok(_) => finding(
            "unseal works",
            Level::Ok,
            format!("the PCR policy ({}) is satisfied", config.tpm.pcrs),
        ),
        Err(e) => finding("unseal works", Level::Fail, Chain(&e).to_string()),
    });
    out
}

fn certificate_checks(config: &Config) -> Vec<Finding> {
    use rustls_pki_types::pem::PemObject;
    let path = config.state_dir.join(mig::registry::CHAIN_FILE);
    let Ok(pem) = std::fs::read(&path) else {
        return vec![finding(
            "certificate",
            Level::Fail,
            "no appliance certificate installed: `migctl csr`, then `migctl cert install`",
        )];
    };
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok);
    let Some(identity) = leaf
        .as_ref()
        .and_then(|der| mig::registry::cert_identity(der))
    else {
        return vec![finding(
            "certificate",
            Level::Fail,
            format!(
                "{} is unreadable: install the certificate again",
                path.display()
            ),
        )];
    };
    let mut out = Vec::new();
    out.push(match public_keys(config) {
        Ok((tls_key, _)) => {
            use sha2::Digest;
            if sha2::Sha256::digest(&tls_key)[..] == identity.spki_sha256[..] {
                finding("certificate matches key", Level::Ok, identity.subject.clone())
            } else {
                finding("certificate matches key", Level::Fail, "the installed certificate is not for this appliance's TPM key: install the right one")
            }
        }
        Err(e) => finding("certificate matches key", Level::Fail, format!("{e:#}")),
    });
    let left = identity.not_after - now();
    out.push(if left < 0 {
        finding(
            "certificate expiry",
            Level::Fail,
            "expired: partners cannot connect; install a renewed certificate",
        )
    } else if left < 30 * DAY {
        finding(
            "certificate expiry",
            Level::Warn,
            format!(
                "expires in {} days: request a renewal (`migctl csr`)",
                left / DAY
            ),
        )
    } else {
        finding(
            "certificate expiry",
            Level::Ok,
            format!("{} days left", left / DAY),
        )
    });
    out
}

/// Every store file migd skips (its own report when running, and what migctl finds itself:
/// broken files, and files or directories migd's user cannot read), one finding per file,
/// then CRL freshness and partner expiry over what applies.
fn registry_checks(config: &Config, migd_problems: &[(String, String)]) -> Vec<Finding> {
    let mut bad: Vec<(String, String)> = migd_problems.to_vec();
    // A member of mig-admin cannot enter the state directory: only migd's report is known,
    // and migctl's own view would wrongly call every file bad.
    if let Err(e) = std::fs::read_dir(&config.state_dir) {
        let mut out: Vec<Finding> = bad
            .into_iter()
            .map(|(_, detail)| finding("registry file", Level::Fail, detail))
            .collect();
        out.push(finding(
            "registry",
            Level::Warn,
            format!(
                "cannot read {} as this user ({e}): run `sudo migctl check` for the file checks",
                config.state_dir.display()
            ),
        ));
        return out;
    }
    let (files, problems) = mig::registry::problems_for_check(&config.state_dir);
    for problem in problems {
        let file = problem.path.display().to_string();
        if !bad.iter().any(|(f, _)| *f == file) {
            bad.push((file, problem.to_string()));
        }
    }
    bad.sort();
    let mut out: Vec<Finding> = bad
        .into_iter()
        .map(|(_, detail)| {
            finding(
                "registry file",
                Level::Fail,
                format!("{detail}: fix or remove the file"),
            )
        })
        .collect();
    let stale: Vec<String> = files
        .crls
        .iter()
        .filter(|(_, _, info)| info.next_update.is_some_and(|next| next < now()))
        .map(|(_, _, info)| info.issuer.clone())
        .collect();
    out.push(if files.crls.is_empty() {
        finding("CRL freshness", Level::Warn, "no CRLs installed: revoked partner certificates are not refused (`migctl crl install`)")
    } else if stale.is_empty() {
        finding("CRL freshness", Level::Ok, format!("{} CRLs in date", files.crls.len()))
    } else {
        finding("CRL freshness", Level::Fail, format!("past nextUpdate: {}; install fresh CRLs", stale.join("; ")))
    });
    let partners = files.partners.partners();
    let soon: Vec<String> = partners
        .iter()
        .filter_map(|p| {
            let last = p.agreement.expires?;
            let days = (last.midnight().assume_utc().unix_timestamp() - now()) / DAY;
            (days < 30).then(|| {
                format!(
                    "{} ({}) {}",
                    p.agreement.name,
                    p.agreement.ods,
                    if days < 0 {
                        "expired".to_owned()
                    } else {
                        format!("in {days} days")
                    }
                )
            })
        })
        .collect();
    out.push(if partners.is_empty() {
        finding(
            "partner agreements",
            Level::Warn,
            "no partners registered (`migctl partner add`)",
        )
    } else if soon.is_empty() {
        finding(
            "partner agreements",
            Level::Ok,
            format!("{} partners, none expiring within 30 days", partners.len()),
        )
    } else {
        finding(
            "partner agreements",
            Level::Warn,
            format!("renew: {}", soon.join("; ")),
        )
    });
    out
}

fn clock_check() -> Finding {
    // Built after this date, so a clock before it is wrong (certificates and tokens depend on it).
    const EARLIEST_SANE: i64 = 1_767_225_600; // 2026-01-01
    let now = now();
    if now < EARLIEST_SANE {
        finding("clock sane", Level::Fail, "the clock is before 2026: fix NTP (timedatectl) — certificates and tokens will be refused")
    } else {
        finding("clock sane", Level::Ok, "after 2026-01-01; keep NTP on")
    }
}

fn disk_check(config: &Config) -> Finding {
    match nix::sys::statvfs::statvfs(&config.state_dir) {
        Ok(stat) => {
            let free = stat.blocks_available() * stat.fragment_size();
            let total = stat.blocks() * stat.fragment_size();
            let percent = free as f64 * 100.0 / total.max(1) as f64;
            let detail = format!(
                "{:.1} GiB free ({percent:.0}%) on {}",
                free as f64 / (1u64 << 30) as f64,
                config.state_dir.display()
            );
            if free < 256 << 20 {
                finding(
                    "disk space",
                    Level::Fail,
                    format!(
                        "{detail}: partner requests are refused when the audit cannot be written"
                    ),
                )
            } else if percent < 10.0 {
                finding("disk space", Level::Warn, detail)
            } else {
                finding("disk space", Level::Ok, detail)
            }
        }
        Err(e) => finding(
            "disk space",
            Level::Fail,
            format!("cannot read {}: {e}", config.state_dir.display()),
        ),
    }
}
