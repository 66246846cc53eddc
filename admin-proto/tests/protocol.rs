#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The admin protocol through its codecs: every request and answer survives the trip, the
//! wire format is pinned, and bad lines become typed error answers or a clear framing error.

use bytes::BytesMut;
use mig_admin_proto::*;
use tokio_util::codec::{Decoder, Encoder};

fn every_request() -> Vec<Request> {
    vec![
        Status {}.into(),
        Reload {}.into(),
        ImportBegin {
            name: "Patient.ndjson".into(),
        }
        .into(),
        ImportChunk {
            ndjson: "{\"resourceType\":\"Patient\"}\n".into(),
        }
        .into(),
        ImportCommit {}.into(),
        AuditVerify {}.into(),
        AuditExport {
            since: Some("2026-12-01".into()),
        }
        .into(),
        AuditPatient {
            nhs_number: "9434765919".into(),
        }
        .into(),
        AlertsList { all: true }.into(),
        AlertsAck {
            id: 7,
            note: "checked with the ward".into(),
        }
        .into(),
        ExtractFitNotes {
            from: "2026-01-01".into(),
            to: "2026-03-31".into(),
            file: "fit-notes.csv".into(),
        }
        .into(),
        UpdateStep {
            step: "installed bundle".into(),
            ok: false,
        }
        .into(),
        Csr {
            subject: "CN=mig.example".into(),
        }
        .into(),
    ]
}

fn through_the_codecs(request: &Request) -> Result<Request, AdminError> {
    let mut wire = BytesMut::new();
    ClientCodec::new().encode(request, &mut wire).unwrap();
    assert_eq!(wire.last(), Some(&b'\n'));
    assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
    ServerCodec::new().decode(&mut wire).unwrap().unwrap()
}

#[test]
fn every_command_round_trips_through_the_codec_under_its_name() {
    let requests = every_request();
    let mut names = Vec::new();
    for request in &requests {
        assert_eq!(through_the_codecs(request).unwrap(), *request);
        #[derive(serde::Deserialize)]
        struct Tag {
            command: String,
        }
        let tag: Tag = serde_json::from_str(&serde_json::to_string(request).unwrap()).unwrap();
        names.push(tag.command);
    }
    assert_eq!(
        names,
        Request::COMMANDS,
        "COMMANDS lists every request, in order"
    );
}

fn answer_round_trip<C: Command>(answer: C::Answer)
where
    C::Answer: PartialEq + std::fmt::Debug + Clone,
{
    let mut wire = BytesMut::new();
    ServerCodec::new()
        .encode(&Response::Ok(answer.clone().into()), &mut wire)
        .unwrap();
    let line = ClientCodec::new().decode(&mut wire).unwrap().unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    assert_eq!(decode_reply::<C::Answer>(&line).unwrap().unwrap(), answer);
}

#[test]
fn every_answer_round_trips_as_its_commands_answer() {
    answer_round_trip::<Status>(StatusAnswer {
        version: "0.1.0".into(),
        ready: true,
        healthy: false,
        uptime_seconds: 12,
        replica: Some(ReplicaStats {
            patients: 3,
            resources: 40,
            records_pending: 2,
        }),
        audit: AuditStats {
            records: 5,
            commits: 4,
            checkpoints: 1,
            failed_commits: 0,
            failed_checkpoints: 0,
        },
        partners: vec![PartnerSummary {
            ods: "RYA".into(),
            name: "Community Trust".into(),
            partner_type: "community-health".into(),
            expires: Some("2027-01-01".into()),
        }],
        upstreams: 1,
        crls: 2,
        snapshot_generation: 9,
        registry_problems: vec![RegistryProblem {
            file: "partners/x.toml".into(),
            error: "bad".into(),
            consequence: "not registered".into(),
        }],
        alerts_waiting: None,
        last_import: Some("2026-12-06T09:00:00Z".into()),
    });
    answer_round_trip::<Reload>(ReloadAnswer { generation: 4 });
    answer_round_trip::<ImportBegin>(Empty {});
    answer_round_trip::<ImportChunk>(ImportChunkAnswer { lines: 100 });
    answer_round_trip::<ImportCommit>(ImportCommitAnswer {
        summary: ImportSummary {
            upserted: 99,
            deleted: 1,
            purged_patients: 0,
        },
    });
    for problem in [
        None,
        Some(VerifyProblem::NoCheckpoint),
        Some(VerifyProblem::RolledBack {
            seq: 12,
            checkpoint_counter: 3,
            tpm_counter: 4,
        }),
    ] {
        answer_round_trip::<AuditVerify>(AuditVerifyAnswer {
            verified: problem.is_none(),
            problem: problem.as_ref().map(|_| "rolled back".into()),
            first_bad_record: problem.as_ref().map(|_| 12),
            report: VerifyReport {
                records: 20,
                checkpoints_verified: 2,
                last_checkpoint_seq: 18,
                chain_head: Some("ab".repeat(32)),
                uncovered: Some((19, 20)),
                counter: Some(CounterCheck {
                    checkpoint: 3,
                    tpm: 3,
                }),
                problem,
            },
        });
    }
    answer_round_trip::<AuditExport>(AuditExportAnswer {
        count: 1,
        ndjson: "{\"resourceType\":\"AuditEvent\"}\n".into(),
    });
    answer_round_trip::<AuditPatient>(AuditPatientAnswer {
        accesses: vec![AccessSummary {
            seq: 3,
            time: "2026-12-06T09:00:00.000000Z".into(),
            partner_ods: Some("RYA".into()),
            requesting_org_ods: None,
            sds_user_id: Some("u\nser".into()),
            sds_role_profile_id: None,
            job_role: Some("R8000".into()),
            interaction_id: None,
            from_asid: Some("200000000001".into()),
            basis: PermissionBasis::StandingConsent,
            override_reason: None,
            decision: Decision::Permit,
            error_code: None,
            sections: vec!["medications".into()],
        }],
    });
    answer_round_trip::<AlertsList>(AlertsListAnswer {
        alerts: vec![Alert {
            id: 1,
            seq: 2,
            time: "t".into(),
            partner_ods: None,
            sds_user_id: None,
            sds_role_profile_id: None,
            job_role: None,
            requesting_org_ods: None,
            nhs_number: Some("9434765919".into()),
            reason: Some("emergency".into()),
            justification: Some("unconscious".into()),
            acknowledged: Some(Acknowledgement {
                seq: 5,
                time: "t".into(),
                operator: "uid=0(root)".into(),
                note: "ok".into(),
            }),
        }],
    });
    answer_round_trip::<AlertsAck>(AlertsAckAnswer { audit_seq: 8 });
    answer_round_trip::<ExtractFitNotes>(FitNotesAnswer {
        csv: "a,b\n".into(),
        sig: "sig".into(),
        rows: 1,
        sha256: "00".repeat(32),
        notes: 12,
        notes_left_out: 1,
        unreadable: vec!["Observation/x: no date".into()],
        audit_seq: 30,
    });
    answer_round_trip::<UpdateStep>(Empty {});
    answer_round_trip::<Csr>(CsrAnswer {
        pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
    });
}

#[test]
fn wire_format_keeps_its_names() {
    let request = decode_request(r#"{"command":"alerts-ack","id":3,"note":"seen","extra":1}"#);
    assert_eq!(
        request.unwrap(),
        AlertsAck {
            id: 3,
            note: "seen".into()
        }
        .into()
    );
    // Left-out fields take the old defaults.
    assert_eq!(
        decode_request(r#"{"command":"audit-export","since":null}"#).unwrap(),
        AuditExport { since: None }.into()
    );
    assert_eq!(
        decode_request(r#"{"command":"update-step","step":"x"}"#).unwrap(),
        UpdateStep {
            step: "x".into(),
            ok: true
        }
        .into()
    );
    assert_eq!(
        decode_request(r#"{"command":"status"}"#).unwrap(),
        Status {}.into()
    );
    let error = serde_json::to_string(&Response::Error(AdminError::new(
        ErrorCode::RequestTooLarge,
        "too long",
    )))
    .unwrap();
    assert_eq!(
        error,
        r#"{"ok":false,"error":{"code":"request_too_large","message":"too long"}}"#
    );
    let ok = serde_json::to_string(&Response::Ok(ReloadAnswer { generation: 2 }.into())).unwrap();
    assert_eq!(ok, r#"{"ok":true,"generation":2}"#);
    let empty = serde_json::to_string(&Response::Ok(Empty {}.into())).unwrap();
    assert_eq!(empty, r#"{"ok":true}"#);
}

#[test]
fn error_answer_decodes_as_migds_error_for_any_command() {
    let line =
        r#"{"ok":false,"error":{"code":"forbidden","message":"permission denied: uid 65534"}}"#;
    let error = decode_reply::<StatusAnswer>(line).unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::Forbidden);
    assert!(error.message.contains("65534"));
    // Neither an answer nor an error: a decoding error, not a silent default.
    assert!(decode_reply::<StatusAnswer>(r#"{"ok":false}"#).is_err());
    assert!(decode_reply::<ReloadAnswer>(r#"{"ok":true,"generation":"two"}"#).is_err());
    assert!(decode_reply::<ReloadAnswer>(r#"{"ok":true}"#).is_err());
}

fn code_of(line: &str) -> (ErrorCode, String) {
    let error = decode_request(line).unwrap_err();
    (error.code, error.message)
}

#[test]
fn unknown_command_gets_unknown_command_answer() {
    let (code, message) = code_of(r#"{"command":"format-disk"}"#);
    assert_eq!(code, ErrorCode::UnknownCommand);
    assert!(message.contains("\"format-disk\""), "{message}");
}

#[test]
fn wrong_types_and_missing_fields_get_bad_request_naming_the_command() {
    for line in [
        r#"{"command":"alerts-ack","id":"seven","note":"x"}"#,
        r#"{"command":"alerts-ack","note":"x"}"#,
        r#"{"command":"import-chunk"}"#,
        r#"{"command":"alerts-list","all":"yes"}"#,
        r#"{"command":"audit-patient","nhs_number":9434765919}"#,
    ] {
        let (code, message) = code_of(line);
        assert_eq!(code, ErrorCode::BadRequest, "{line}");
        let command = line.split('"').nth(3).unwrap();
        assert!(message.starts_with(command), "{line}: {message}");
    }
}

#[test]
fn lines_that_are_not_requests_are_malformed() {
    for line in [
        "not json",
        "",
        "[1,2]",
        r#"{"cmd":"status"}"#,
        r#"{"command":5}"#,
    ] {
        assert_eq!(code_of(line).0, ErrorCode::MalformedRequest, "{line:?}");
    }
}

#[test]
fn a_line_that_is_not_utf8_is_answered_and_the_next_is_read() {
    let mut wire = BytesMut::from(&b"{\"command\":\"st\xffatus\"}\n{\"command\":\"status\"}\n"[..]);
    let mut codec = ServerCodec::new();
    let first = codec.decode(&mut wire).unwrap().unwrap().unwrap_err();
    assert_eq!(first.code, ErrorCode::MalformedRequest);
    assert_eq!(
        codec.decode(&mut wire).unwrap().unwrap().unwrap(),
        Status {}.into()
    );
}

#[test]
fn over_long_line_is_a_framing_error_not_a_buffer() {
    let mut codec = ServerCodec::with_max_request(64);
    // No newline yet: the codec gives up once it holds more than the limit.
    let mut wire = BytesMut::from(vec![b'x'; 100].as_slice());
    let error = codec.decode(&mut wire).unwrap_err();
    assert!(
        matches!(error, FrameError::TooLong { max: 64 }),
        "{error:?}"
    );
    assert!(error.to_string().contains("64 bytes"), "{error}");
    // The last line without its newline counts, within the limit.
    let mut codec = ServerCodec::new();
    let mut wire = BytesMut::from(&b"{\"command\":\"reload\"}"[..]);
    assert_eq!(codec.decode(&mut wire).unwrap(), None);
    assert_eq!(
        codec.decode_eof(&mut wire).unwrap().unwrap().unwrap(),
        Reload {}.into()
    );
}

#[test]
fn client_refuses_to_encode_a_request_over_the_servers_limit() {
    let request: Request = ImportChunk {
        ndjson: "x".repeat(MAX_REQUEST_BYTES),
    }
    .into();
    let error = ClientCodec::new()
        .encode(&request, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(error, FrameError::TooLarge { .. }), "{error:?}");
}
