//! `migctl update install FILE` and `migctl update status` (SPEC §14). RAUC does the work: it
//! checks the bundle's signature and compatibility before writing anything, writes the inactive
//! slot, and hands boot selection to systemd-boot's boot counting (image/rootfs/etc/rauc). This
//! adds what RAUC does not check, that the bundle is newer than the running version (also
//! before anything is written), and records every step in the audit trail through migd.

use std::cmp::Ordering;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{anyhow, bail, Context, Result};
use mig::config::Config;
use mig::system::journal::{self, ids, Level};
use serde_json::Value;

use super::admin_call;
use mig_admin_proto::UpdateStep;

const OS_RELEASE: &str = "/etc/os-release";
/// The boot entries (UKIs) in the ESP, one a slot (image/rootfs/usr/lib/mig/rauc-bootloader).
const BOOT_ENTRIES: &str = "/efi/EFI/Linux";

/// What a verified bundle says about itself.
#[derive(Debug, PartialEq, Eq)]
pub struct BundleInfo {
    pub compatible: String,
    pub version: String,
}

/// Records one step of an update in the audit trail; refuses to go on if it cannot.
fn audit_step(config: &Config, step: &str, ok: bool) -> Result<()> {
    admin_call(
        config,
        UpdateStep {
            step: step.to_owned(),
            ok,
        },
    )
    .map(|_| ())
    .map_err(|e| {
        anyhow::Error::from(e).context(
            "the update must be recorded in the audit trail, and migd does not take the record",
        )
    })
}

/// Logs one step to the journal with its `MESSAGE_ID`, for the fleet's alerting. Best effort:
/// the audit trail is the record, and a journal that is away must not stop an update.
fn journal_step(id: &str, level: Level, message: &str, fields: &[(&str, &str)]) {
    let _ = journal::send(
        &journal::socket_path(),
        "migctl",
        id,
        level,
        message,
        fields,
    );
}

pub fn install(config: &Config, file: &Path, keyring: &Path) -> Result<ExitCode> {
    let name = file.display().to_string();
    audit_step(
        config,
        &format!("install {name}: checking the bundle"),
        true,
    )?;
    journal_step(
        ids::UPDATE_INSTALL_STARTED,
        Level::INFO,
        "update: install started",
        &[("bundle", &name)],
    );
    let checked = check(file, keyring);
    let info = match checked {
        Ok(info) => info,
        Err(e) => {
            let reason = format!("{e:#}");
            audit_step(config, &format!("install {name}: refused: {reason}"), false)?;
            journal_step(
                ids::UPDATE_REFUSED,
                Level::WARN,
                "update: refused, nothing was written",
                &[("bundle", &name), ("reason", &reason)],
            );
            println!("Refused, nothing was written: {reason}");
            return Ok(ExitCode::FAILURE);
        }
    };
    audit_step(
        config,
        &format!(
            "install {name}: version {} verified, writing it to the inactive slot",
            info.version
        ),
        true,
    )?;
    println!(
        "The bundle is signed, for this appliance, and newer ({}). Writing it to the inactive slot...",
        info.version
    );
    let written = Command::new("rauc")
        .arg("install")
        .arg(file)
        .status()
        .context("running rauc install")?;
    if !written.success() {
        audit_step(
            config,
            &format!(
                "install {name}: version {} failed: rauc install {written}",
                info.version
            ),
            false,
        )?;
        journal_step(
            ids::UPDATE_INSTALL_FAILED,
            Level::ERROR,
            "update: writing the inactive slot failed; the running version is untouched",
            &[("bundle", &name), ("version", &info.version)],
        );
        println!("The update failed (see the messages above); the running version is untouched.");
        return Ok(ExitCode::FAILURE);
    }
    audit_step(
        config,
        &format!(
            "install {name}: version {} written; it runs after a restart, on trial until healthy",
            info.version
        ),
        true,
    )?;
    journal_step(
        ids::UPDATE_INSTALLED,
        Level::INFO,
        "update: installed in the inactive slot; it runs after a restart, on trial until healthy",
        &[("bundle", &name), ("version", &info.version)],
    );
    println!(
        "Version {} is installed. It starts at the next restart; if it does not become healthy, \
         the appliance goes back to this version by itself.",
        info.version
    );
    Ok(ExitCode::SUCCESS)
}

/// Everything checked before anything is written: the signature and compatibility (by RAUC,
/// reading the whole bundle) and the version (here).
pub fn check(file: &Path, keyring: &Path) -> Result<BundleInfo> {
    let output = Command::new("rauc")
        .arg("info")
        .arg(format!("--keyring={}", keyring.display()))
        .arg("--output-format=json")
        .arg(file)
        .output()
        .context("running rauc info")?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr);
        let reason = message
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("rauc-Message"))
            .unwrap_or("rauc info failed")
            .to_owned();
        bail!("the bundle is not a valid signed update: {reason}");
    }
    let info = parse_info(&output.stdout)?;
    let running = std::fs::read_to_string(OS_RELEASE)
        .with_context(|| format!("reading {OS_RELEASE}"))
        .and_then(|text| {
            os_release_value(&text, "IMAGE_VERSION")
                .ok_or_else(|| anyhow!("{OS_RELEASE} has no IMAGE_VERSION"))
        })?;
    if compare_versions(&info.version, &running) != Ordering::Greater {
        bail!(
            "the bundle's version {} is not newer than the running version {running}",
            info.version
        );
    }
    Ok(info)
}

fn parse_info(json_text: &[u8]) -> Result<BundleInfo> {
    let value: Value = serde_json::from_slice(json_text)
        .context("rauc info printed something that is not JSON")?;
    let field = |name: &str| {
        value[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the bundle's manifest has no {name}"))
    };
    Ok(BundleInfo {
        compatible: field("compatible")?,
        version: field("version")?,
    })
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// Dotted versions compared part by part, numerically where both parts are numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts =
        |v: &str| -> Vec<String> { v.split(['.', '-', '+', '~']).map(str::to_owned).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    pa.len().cmp(&pb.len())
}

/// `migctl update status`: from RAUC's view of the slots, in plain words.
pub fn status() -> Result<ExitCode> {
    let output = Command::new("rauc")
        .args(["status", "--detailed", "--output-format=json"])
        .output()
        .context("running rauc status")?;
    if !output.status.success() {
        bail!(
            "rauc status failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let value: Value = serde_json::from_slice(&output.stdout)
        .context("rauc status printed something that is not JSON")?;
    let booted = value["booted"].as_str().unwrap_or("?");
    let primary = value["boot_primary"].as_str().unwrap_or("?");
    let running = std::fs::read_to_string(OS_RELEASE)
        .ok()
        .and_then(|text| os_release_value(&text, "IMAGE_VERSION"))
        .unwrap_or_else(|| "?".into());
    println!("Running:    version {running}, from slot {booted}");
    let slots = value["slots"].as_array().cloned().unwrap_or_default();
    for slot in slots
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.iter())
    {
        let (name, slot) = slot;
        if slot["class"].as_str() != Some("rootfs") {
            continue;
        }
        let bootname = slot["bootname"].as_str().unwrap_or("?");
        let entry = boot_entry(Path::new(BOOT_ENTRIES), bootname);
        // What RAUC wrote there, else what its boot entry boots, else (the factory slot) what runs.
        let version = slot["slot_status"]["bundle"]["version"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| entry.as_ref().map(|e| e.version.clone()))
            .or_else(|| (bootname == booted).then(|| running.clone()));
        let Some(version) = version else {
            println!("Slot {bootname}:     empty (no version installed yet)");
            continue;
        };
        let trial = match entry.and_then(|e| e.tries_left) {
            Some(left) if slot["boot_status"].as_str() == Some("good") => {
                format!(", on trial ({left} tries left; kept once healthy)")
            }
            _ => String::new(),
        };
        println!(
            "Slot {bootname}:     version {version}, {}{trial}{}{}",
            match slot["boot_status"].as_str() {
                Some("good") => "good",
                Some("bad") => "BAD (it failed its trial boots or was marked bad)",
                _ => "state unknown",
            },
            if bootname == booted {
                ", running now"
            } else {
                ""
            },
            if name == primary { ", boots next" } else { "" },
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A slot's boot entry in the ESP: `mig_VERSION-SLOT[+LEFT[-DONE]].efi`.
#[derive(Debug, PartialEq, Eq)]
struct BootEntry {
    version: String,
    /// The tries left while on trial; `None` once systemd-bless-boot dropped the counter.
    tries_left: Option<u32>,
}

fn boot_entry(entries: &Path, bootname: &str) -> Option<BootEntry> {
    let suffix = format!("-{}", bootname.to_ascii_lowercase());
    std::fs::read_dir(entries)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            let stem = name.strip_prefix("mig_")?.strip_suffix(".efi")?;
            let (stem, counter) = match stem.split_once('+') {
                Some((stem, counter)) => (stem, Some(counter)),
                None => (stem, None),
            };
            let version = stem.strip_suffix(&suffix)?.to_owned();
            let tries_left = match counter {
                Some(c) => Some(c.split('-').next()?.parse().ok()?),
                None => None,
            };
            Some(BootEntry {
                version,
                tries_left,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_compare_numerically() {
        assert_eq!(compare_versions("0.10.0", "0.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("0.2.0", "0.2.0"), Ordering::Equal);
        assert_eq!(compare_versions("0.1.9", "0.2.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0.0.1", "1.0.0"), Ordering::Greater);
    }

    #[test]
    fn reads_the_manifest_fields_rauc_info_prints() {
        let info =
            parse_info(br#"{"compatible":"mig-appliance-x86_64","version":"0.2.0","hooks":[]}"#)
                .unwrap();
        assert_eq!(
            info,
            BundleInfo {
                compatible: "mig-appliance-x86_64".into(),
                version: "0.2.0".into()
            }
        );
        assert!(parse_info(br#"{"compatible":"x"}"#).is_err());
    }

    #[test]
    fn reads_the_image_version() {
        let text = "ID=debian\nIMAGE_ID=mig-appliance\nIMAGE_VERSION=\"0.3.1\"\n";
        assert_eq!(
            os_release_value(text, "IMAGE_VERSION").as_deref(),
            Some("0.3.1")
        );
        assert_eq!(os_release_value(text, "VERSION"), None);
    }

    #[test]
    fn a_slot_is_on_trial_while_its_entry_counts_tries() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["mig_0.1.0-a.efi", "mig_0.1.0.2-b+2-1.efi", "other-b+3.efi"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let entry = |slot| boot_entry(dir.path(), slot);
        assert_eq!(
            entry("A"),
            Some(BootEntry {
                version: "0.1.0".into(),
                tries_left: None
            })
        );
        assert_eq!(
            entry("B"),
            Some(BootEntry {
                version: "0.1.0.2".into(),
                tries_left: Some(2)
            })
        );
        std::fs::rename(
            dir.path().join("mig_0.1.0.2-b+2-1.efi"),
            dir.path().join("mig_0.1.0.2-b.efi"),
        )
        .unwrap();
        assert_eq!(entry("B").and_then(|e| e.tries_left), None);
        assert_eq!(boot_entry(Path::new("/nonexistent"), "B"), None);
    }
}
