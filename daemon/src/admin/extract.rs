//! The `extract-fit-notes` admin command (SPEC §12): reads the running replica, builds the
//! controlled CSV, audits the run (who, period, rows, SHA-256) before anything leaves, and signs
//! it with the TPM audit key. migctl writes the files; nothing is written here.
//!
//! Request: `mig_admin_proto::ExtractFitNotes`. Answer: `FitNotesAnswer`, or an error with
//! code `bad-request`, `extract-refused` (bad period, no sub-ICB code, nothing to publish) or
//! `extract-failed`.

use std::sync::Arc;

use mig_admin_proto::{AdminError, ErrorCode, ExtractFitNotes, FitNotesAnswer};
use sha2::{Digest, Sha256};

use super::commands::AdminService;
use super::peer::PeerCred;
use crate::extract::signature::Statement;
use crate::extract::{self, ConditionMap, CsvContext, ExtractError, Period};
use crate::keys::Signer;

/// What the extract needs besides the replica: loaded once at start.
#[derive(Debug)]
pub struct ExtractSettings {
    pub conditions: ConditionMap,
    /// From the config; `None` refuses every extract with a message saying what to set.
    pub sub_icb: Option<String>,
    pub practice: String,
    pub ods: String,
    pub asid: String,
    /// The TPM audit key.
    pub audit_signer: Arc<dyn Signer>,
}

/// The caller as the kernel reported it, for the audit trail.
fn peer_description(peer: &PeerCred) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    format!("uid={}({name}) gid={} pid={}", peer.uid, peer.gid, peer.pid)
}

fn refused(e: &ExtractError) -> AdminError {
    let code = match e {
        ExtractError::Replica(_) | ExtractError::Sign(_) => ErrorCode::ExtractFailed,
        _ => ErrorCode::ExtractRefused,
    };
    AdminError::new(code, crate::error::Chain(e).to_string())
}

/// Handles `extract-fit-notes`.
pub async fn fit_notes(
    service: &AdminService,
    settings: Arc<ExtractSettings>,
    peer: &PeerCred,
    request: ExtractFitNotes,
) -> Result<FitNotesAnswer, AdminError> {
    let ExtractFitNotes { from, to, file } = request;
    if file.is_empty() || file.len() > 255 || file.contains('/') || file.contains(char::is_control)
    {
        return Err(AdminError::new(
            ErrorCode::BadRequest,
            "file must be a plain file name (no directory, no control characters)",
        ));
    }
    let who = peer_description(peer);
    let now = time::OffsetDateTime::now_utc();
    let attempt = format!(
        "extract fit-notes {}..{} by {who}",
        from.chars().take(10).collect::<String>(),
        to.chars().take(10).collect::<String>()
    );
    let checked = Period::new(&from, &to, now.date()).and_then(|period| {
        settings
            .sub_icb
            .clone()
            .map(|sub_icb| (period, sub_icb))
            .ok_or(ExtractError::NoSubIcb)
    });
    let (period, sub_icb) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            service
                .audited(
                    peer,
                    format!("{attempt}: refused: {}", crate::error::Chain(&e)),
                    false,
                )
                .await?;
            return Err(refused(&e));
        }
    };
    let context = CsvContext {
        sub_icb: sub_icb.clone(),
        period,
        run_date: now.date(),
    };
    let readers = service.readers.clone();
    let built = {
        let settings = settings.clone();
        let context = context.clone();
        let unix_now = now.unix_timestamp();
        tokio::task::spawn_blocking(move || {
            readers
                .with(|r| extract::gather(r, &period, unix_now))
                .map_err(ExtractError::from)
                .and_then(|gathered| {
                    extract::finish_gathered(gathered, &context, &settings.conditions)
                })
        })
        .await
        .map_err(|_| AdminError::new(ErrorCode::Internal, "extract task failed"))?
    };
    let built = match built {
        Ok(built) => built,
        Err(e) => {
            service
                .audited(
                    peer,
                    format!("{attempt}: refused: {}", crate::error::Chain(&e)),
                    false,
                )
                .await?;
            return Err(refused(&e));
        }
    };
    let sha256: [u8; 32] = Sha256::digest(built.csv.as_bytes()).into();
    // The audit record is durable before the extract leaves migd (SPEC §8).
    let audit_seq = service
        .audited_seq(
            peer,
            format!(
                "{attempt}: {} rows, file {file} sha256 {}",
                built.rows,
                hex::encode(sha256)
            ),
        )
        .await?;
    let statement = Statement {
        extract: "fit-notes".into(),
        file,
        sha256,
        bytes: built.csv.len() as u64,
        rows: built.rows as u64,
        period: format!("{}..{}", period.from, period.to),
        created: now
            .replace_nanosecond(0)
            .unwrap_or(now)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        practice: settings.practice.clone(),
        ods: settings.ods.clone(),
        asid: settings.asid.clone(),
        sub_icb,
        audit_record: audit_seq,
        audit_key: settings.audit_signer.public_key_spki_der(),
    };
    let signer = settings.audit_signer.clone();
    let sig = tokio::task::spawn_blocking(move || statement.sign(signer.as_ref()))
        .await
        .map_err(|_| AdminError::new(ErrorCode::Internal, "signing task failed"))?
        .map_err(|e| refused(&e))?;
    let answer = FitNotesAnswer {
        csv: built.csv,
        sig,
        rows: built.rows as u64,
        sha256: hex::encode(sha256),
        notes: built.notes,
        notes_left_out: built.notes_left_out,
        unreadable: built.unreadable,
        audit_seq,
    };
    Ok(answer)
}
