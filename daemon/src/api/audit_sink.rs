//! Partner access events into the audit trail (SPEC §8).

use std::future::Future;
use std::pin::Pin;

use super::{AccessEvent, AuditSink, AuditUnavailable};
use crate::audit::{AuditLog, AuditRecord, Decision, PermissionBasis, RecordKind};
use mig_policy::Basis;

impl From<&AccessEvent> for AuditRecord {
    fn from(event: &AccessEvent) -> AuditRecord {
        let decision = if event.permitted() {
            Decision::Permit
        } else {
            Decision::Refuse
        };
        let mut record = AuditRecord::new(RecordKind::PartnerRequest, decision);
        record.time = Some(event.time);
        record.partner_ods = event.partner_ods.clone();
        record.partner_cert_sha256 = Some(event.certificate_sha256.clone());
        if let Some(claims) = &event.claims {
            record.sds_user_id = Some(claims.sds_user_id.clone());
            record.sds_role_profile_id = claims.sds_role_profile_id.clone();
            record.job_role = Some(claims.job_role.clone());
            record.requesting_org_ods = Some(claims.organisation_ods.clone());
            record.requesting_device = claims.device.clone();
        }
        record.nhs_number = event.nhs_number.clone();
        record.interaction_id = Some(event.interaction.clone());
        record.trace_id = event.trace_id.clone();
        record.from_asid = event.from_asid.clone();
        let basis = event.basis();
        record.basis = basis.map_or(PermissionBasis::None, PermissionBasis::from);
        if let Some(Basis::Override {
            reason,
            justification,
        }) = basis
        {
            record.override_reason = Some(reason.name().to_owned());
            record.override_justification = Some(justification.clone());
        }
        record.error_code = event.spine_code().map(str::to_owned);
        record.action = event.refusal_reason();
        record.sections = event
            .sections()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        record
    }
}

impl AuditSink for AuditLog {
    fn record(
        &self,
        event: AccessEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send + '_>> {
        Box::pin(async move {
            let record = AuditRecord::from(&event);
            match self.append(record).await {
                Ok(seq) => {
                    if event.alert() {
                        crate::system::journal::event!(
                            warn,
                            OVERRIDE_ALERT,
                            audit_seq = seq,
                            partner_ods = event.partner_ods.as_deref().unwrap_or(""),
                            "override alert raised for the privacy officer (see `migctl alerts`)"
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    crate::system::journal::event!(
                        error,
                        AUDIT_UNAVAILABLE,
                        error = %crate::error::Chain(&e),
                        "audit append failed; the request is refused with 503"
                    );
                    Err(AuditUnavailable)
                }
            }
        })
    }
}
