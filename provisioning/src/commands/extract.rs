//! `migctl extract …` (SPEC §12): the fit-note extract through migd, and checking an
//! extract's signature here or anywhere else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use super::{admin_call, public_keys};
use mig::config::Config;
use mig::extract::signature::{self, TrustedKey};
use mig::registry;
use mig_admin_proto::ExtractFitNotes;

/// `FILE.csv` → `FILE.csv.sig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// `migctl extract fit-notes --from --to --out`: migd counts, audits and signs; the files are
/// written (each to a temporary file renamed into place) only once it has succeeded.
pub fn fit_notes(config: &Config, from: &str, to: &str, out: &Path) -> Result<ExitCode> {
    let file = out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| !out.is_dir())
        .ok_or_else(|| anyhow!("--out: {} is not a file name", out.display()))?
        .to_owned();
    let request = ExtractFitNotes {
        from: from.to_owned(),
        to: to.to_owned(),
        file,
    };
    let answer = admin_call(config, request)?;
    let sig_path = signature_path(out);
    registry::write_atomic(out, answer.csv.as_bytes())
        .with_context(|| out.display().to_string())?;
    if let Err(e) = registry::write_atomic(&sig_path, answer.sig.as_bytes()) {
        // A CSV without its signature must not be mistaken for a finished extract.
        let _ = std::fs::remove_file(out);
        return Err(anyhow!(e).context(sig_path.display().to_string()));
    }
    if !answer.unreadable.is_empty() {
        eprintln!(
            "warning: {} fit notes could not be read and are not counted (fix them in the clinical system):",
            answer.unreadable.len()
        );
        for why in answer.unreadable.iter().take(20) {
            eprintln!("  {}", why.escape_debug());
        }
    }
    println!(
        "wrote {} ({} rows from {} fit notes; {} notes of patients with a Type 1 opt-out left out)",
        out.display(),
        answer.rows,
        answer.notes,
        answer.notes_left_out,
    );
    println!(
        "wrote {} (signed by the TPM audit key; audit record {}, SHA-256 {})",
        sig_path.display(),
        answer.audit_seq,
        answer.sha256
    );
    println!("check it with: migctl extract verify {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads a public key given with `--key`: PEM `PUBLIC KEY` or DER SubjectPublicKeyInfo.
fn read_key(path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let bytes =
        std::fs::read(path).with_context(|| format!("--key: cannot read {}", path.display()))?;
    if bytes.first() == Some(&0x30) {
        return Ok(bytes);
    }
    rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(&bytes)
        .map(|k| k.as_ref().to_vec())
        .map_err(|e| anyhow!("--key: {} is not a PEM public key: {e}", path.display()))
}

/// `migctl extract verify FILE.csv`: against this appliance's audit key (from the state
/// directory; migd need not run), or the key or fingerprint given.
pub fn verify(
    config: Option<&Config>,
    file: &Path,
    sig: Option<&Path>,
    key: Option<&Path>,
    fingerprint: Option<&str>,
) -> Result<ExitCode> {
    let sig_path = sig.map_or_else(|| signature_path(file), Path::to_path_buf);
    let csv = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sig_text = std::fs::read_to_string(&sig_path).with_context(|| {
        format!(
            "cannot read the signature {} (give it with --sig)",
            sig_path.display()
        )
    })?;
    let (trusted, against) = match (key, fingerprint, config) {
        (Some(path), _, _) => (
            TrustedKey::Spki(read_key(path)?),
            format!("the key in {}", path.display()),
        ),
        (None, Some(hex_text), _) => {
            let pin: [u8; 32] = hex::decode(hex_text.trim().replace(':', ""))
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow!("--fingerprint: need 64 hex digits (SHA-256)"))?;
            (
                TrustedKey::Fingerprint(pin),
                "the fingerprint given".to_owned(),
            )
        }
        (None, None, Some(config)) => {
            let (_, audit_key) = public_keys(config)?;
            (
                TrustedKey::Spki(audit_key),
                format!(
                    "this appliance's audit key ({}, {})",
                    config.appliance.name, config.appliance.ods
                ),
            )
        }
        (None, None, None) => bail!("give --key or --fingerprint, or run on the appliance"),
    };
    match signature::verify(&sig_text, &csv, &trusted) {
        Ok(s) => {
            println!(
                "good signature: {} is the {} extract for {} ({} rows), made {}",
                file.display(),
                s.extract.escape_debug(),
                s.period.escape_debug(),
                s.rows,
                s.created.escape_debug()
            );
            println!(
                "signed by {} (ODS {}, ASID {}, sub-ICB {}), audit record {}, audit key SHA-256 {}",
                s.practice.escape_debug(),
                s.ods.escape_debug(),
                s.asid.escape_debug(),
                s.sub_icb.escape_debug(),
                s.audit_record,
                signature::fingerprint(&s.audit_key)
            );
            println!("checked against {against}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "BAD SIGNATURE: {} does not verify against {against}: {e}",
                file.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
