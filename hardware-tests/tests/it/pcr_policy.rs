//! The replica key is released only while the sealed PCRs hold their provisioning values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use hardware_tests::Swtpm;
use mig::tpm::{KeyRole, Tpm, TpmError};

#[test]
fn extending_a_sealed_pcr_makes_unseal_fail_naming_that_pcr() {
    // PCR 16 is the debug PCR: harmless to extend even on a real TPM (MIG_TEST_TCTI).
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let settings = swtpm.settings(&[7, 16]);
    {
        let tpm = Tpm::connect(&settings).unwrap();
        tpm.provision(state.path()).unwrap();
        tpm.load(state.path()).unwrap();
        tpm.unseal_replica_key().unwrap();
    }

    swtpm
        .extend_pcr(16, b"an unexpected boot component")
        .unwrap();

    let tpm = Tpm::connect(&settings).unwrap();
    tpm.load(state.path()).unwrap();
    let error = tpm.unseal_replica_key().unwrap_err();
    match &error {
        TpmError::PcrMismatch { changed } => assert_eq!(changed, &vec![16]),
        other => panic!("expected PcrMismatch, got {other:?}"),
    }
    let text = error.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.contains("measured boot component changed (PCR 16)"),
        "{text}"
    );
    assert!(text.contains("re-provision"), "{text}");

    // The signing keys do not depend on the PCRs.
    let signature = tpm.sign(KeyRole::Tls, b"still serving").unwrap();
    let spki = tpm.public_key_spki_der(KeyRole::Tls).unwrap();
    common::verify(&spki, b"still serving", &signature).unwrap();
    // A failed unseal leaves no objects or sessions behind.
    for _ in 0..5 {
        assert!(matches!(
            tpm.unseal_replica_key(),
            Err(TpmError::PcrMismatch { .. })
        ));
    }
}

#[test]
fn an_unsealed_pcr_may_change_freely() {
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let settings = swtpm.settings(&[7]);
    let key = {
        let tpm = Tpm::connect(&settings).unwrap();
        tpm.provision(state.path()).unwrap();
        tpm.load(state.path()).unwrap();
        tpm.unseal_replica_key().unwrap()
    };
    swtpm.extend_pcr(16, b"not in the policy").unwrap();
    let tpm = Tpm::connect(&settings).unwrap();
    tpm.load(state.path()).unwrap();
    assert_eq!(*tpm.unseal_replica_key().unwrap(), *key);
}

#[test]
fn a_changed_pcr_list_in_the_config_is_named_at_load() {
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    Tpm::connect(&swtpm.settings(&[7]))
        .unwrap()
        .provision(state.path())
        .unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7, 16])).unwrap();
    let error = tpm.load(state.path()).unwrap_err();
    assert!(
        matches!(&error, TpmError::PcrSelectionChanged { sealed, configured }
            if sealed == &vec![7] && configured == &vec![7, 16]),
        "{error}"
    );
}
