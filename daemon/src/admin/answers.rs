//! The daemon's own values as the admin protocol's answer types. Each conversion names every
//! field on both sides, so a field renamed or added on either is a compile error here.

use mig_admin_proto as proto;

use crate::audit::{self, PermissionBasis, Problem};

/// The `audit-verify` answer for a report (migctl builds the same with migd stopped).
pub fn verify_answer(report: &audit::VerifyReport) -> proto::AuditVerifyAnswer {
    let audit::VerifyReport {
        records,
        checkpoints_verified,
        last_checkpoint_seq,
        chain_head,
        uncovered,
        counter,
        problem,
    } = report;
    proto::AuditVerifyAnswer {
        verified: report.is_ok(),
        problem: problem.as_ref().map(|p| p.to_string()),
        first_bad_record: problem.as_ref().map(|p| p.first_bad_record()),
        report: proto::VerifyReport {
            records: *records,
            checkpoints_verified: *checkpoints_verified,
            last_checkpoint_seq: *last_checkpoint_seq,
            chain_head: chain_head.clone(),
            uncovered: *uncovered,
            counter: counter.map(
                |audit::CounterCheck { checkpoint, tpm }| proto::CounterCheck { checkpoint, tpm },
            ),
            problem: problem.as_ref().map(verify_problem),
        },
    }
}

fn verify_problem(problem: &Problem) -> proto::VerifyProblem {
    use proto::VerifyProblem as P;
    match *problem {
        Problem::Modified { seq } => P::Modified { seq },
        Problem::Deleted { seq, until } => P::Deleted { seq, until },
        Problem::Reordered { seq } => P::Reordered { seq },
        Problem::BrokenLink { seq } => P::BrokenLink { seq },
        Problem::Truncated {
            last_present,
            checkpoint_seq,
        } => P::Truncated {
            last_present,
            checkpoint_seq,
        },
        Problem::BadCheckpointSignature { checkpoint_id, seq } => {
            P::BadCheckpointSignature { checkpoint_id, seq }
        }
        Problem::CheckpointMismatch {
            checkpoint_id,
            from,
            seq,
        } => P::CheckpointMismatch {
            checkpoint_id,
            from,
            seq,
        },
        Problem::CounterNotIncreasing { checkpoint_id, seq } => {
            P::CounterNotIncreasing { checkpoint_id, seq }
        }
        Problem::RolledBack {
            seq,
            checkpoint_counter,
            tpm_counter,
        } => P::RolledBack {
            seq,
            checkpoint_counter,
            tpm_counter,
        },
        Problem::CounterAhead {
            seq,
            checkpoint_counter,
            tpm_counter,
        } => P::CounterAhead {
            seq,
            checkpoint_counter,
            tpm_counter,
        },
        Problem::NoCheckpoint => P::NoCheckpoint,
    }
}

impl From<crate::replica::ImportSummary> for proto::ImportSummary {
    fn from(s: crate::replica::ImportSummary) -> proto::ImportSummary {
        let crate::replica::ImportSummary {
            upserted,
            deleted,
            purged_patients,
        } = s;
        proto::ImportSummary {
            upserted,
            deleted,
            purged_patients,
        }
    }
}

impl From<audit::AccessSummary> for proto::AccessSummary {
    fn from(a: audit::AccessSummary) -> proto::AccessSummary {
        let audit::AccessSummary {
            seq,
            time,
            partner_ods,
            requesting_org_ods,
            sds_user_id,
            sds_role_profile_id,
            job_role,
            interaction_id,
            from_asid,
            basis,
            override_reason,
            decision,
            error_code,
            sections,
        } = a;
        proto::AccessSummary {
            seq,
            time,
            partner_ods,
            requesting_org_ods,
            sds_user_id,
            sds_role_profile_id,
            job_role,
            interaction_id,
            from_asid,
            basis: match basis {
                PermissionBasis::Granted => proto::PermissionBasis::Granted,
                PermissionBasis::StandingConsent => proto::PermissionBasis::StandingConsent,
                PermissionBasis::Override => proto::PermissionBasis::Override,
                PermissionBasis::Attested => proto::PermissionBasis::Attested,
                PermissionBasis::None => proto::PermissionBasis::None,
            },
            override_reason,
            decision: match decision {
                audit::Decision::Permit => proto::Decision::Permit,
                audit::Decision::Refuse => proto::Decision::Refuse,
            },
            error_code,
            sections,
        }
    }
}

impl From<audit::Alert> for proto::Alert {
    fn from(a: audit::Alert) -> proto::Alert {
        let audit::Alert {
            id,
            seq,
            time,
            partner_ods,
            sds_user_id,
            sds_role_profile_id,
            job_role,
            requesting_org_ods,
            nhs_number,
            reason,
            justification,
            acknowledged,
        } = a;
        proto::Alert {
            id,
            seq,
            time,
            partner_ods,
            sds_user_id,
            sds_role_profile_id,
            job_role,
            requesting_org_ods,
            nhs_number,
            reason,
            justification,
            acknowledged: acknowledged.map(
                |audit::Acknowledgement {
                     seq,
                     time,
                     operator,
                     note,
                 }| proto::Acknowledgement {
                    seq,
                    time,
                    operator,
                    note,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The daemon's own serde names and the protocol's agree, so the wire did not change when
    /// the answers became typed.
    #[test]
    fn converted_answers_serialize_as_the_daemon_types_did() {
        let problems = [
            Problem::Modified { seq: 1 },
            Problem::Deleted { seq: 1, until: 2 },
            Problem::Reordered { seq: 1 },
            Problem::BrokenLink { seq: 1 },
            Problem::Truncated {
                last_present: 1,
                checkpoint_seq: 2,
            },
            Problem::BadCheckpointSignature {
                checkpoint_id: 1,
                seq: 2,
            },
            Problem::CheckpointMismatch {
                checkpoint_id: 1,
                from: 2,
                seq: 3,
            },
            Problem::CounterNotIncreasing {
                checkpoint_id: 1,
                seq: 2,
            },
            Problem::RolledBack {
                seq: 1,
                checkpoint_counter: 2,
                tpm_counter: 3,
            },
            Problem::CounterAhead {
                seq: 1,
                checkpoint_counter: 2,
                tpm_counter: 3,
            },
            Problem::NoCheckpoint,
        ];
        for problem in problems {
            assert_eq!(
                serde_json::to_value(verify_problem(&problem)).unwrap(),
                serde_json::to_value(&problem).unwrap()
            );
        }
        for basis in <PermissionBasis as strum::IntoEnumIterator>::iter() {
            let access = audit::AccessSummary {
                seq: 1,
                time: "t".into(),
                partner_ods: None,
                requesting_org_ods: None,
                sds_user_id: None,
                sds_role_profile_id: None,
                job_role: None,
                interaction_id: None,
                from_asid: None,
                basis,
                override_reason: None,
                decision: audit::Decision::Refuse,
                error_code: Some("x".into()),
                sections: vec!["a".into()],
            };
            assert_eq!(
                serde_json::to_value(proto::AccessSummary::from(access.clone())).unwrap(),
                serde_json::to_value(&access).unwrap()
            );
        }
    }
}
