//! A TPM whose owner hierarchy has a password (as a practice's IT policy may require).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hardware_tests::{owner_auth, Swtpm};
use mig::tpm::{KeyRole, Tpm, TpmError, TpmSettings};

#[test]
fn provisioning_and_loading_work_with_the_configured_owner_password() {
    let swtpm = Swtpm::start_software().unwrap();
    swtpm.set_owner_auth(b"", b"owner secret").unwrap();
    let state = tempfile::tempdir().unwrap();
    let settings = TpmSettings {
        owner_auth: owner_auth(b"owner secret"),
        ..swtpm.settings(&[7])
    };
    let spki = {
        let tpm = Tpm::connect(&settings).unwrap();
        tpm.provision(state.path()).unwrap();
        tpm.load(state.path()).unwrap();
        tpm.unseal_replica_key().unwrap();
        tpm.public_key_spki_der(KeyRole::Tls).unwrap()
    };
    let tpm = Tpm::connect(&settings).unwrap();
    tpm.load(state.path()).unwrap();
    assert_eq!(tpm.public_key_spki_der(KeyRole::Tls).unwrap(), spki);
    assert!(
        !format!("{settings:?}").contains("owner secret"),
        "Debug must redact the password"
    );
}

#[test]
fn a_wrong_or_missing_owner_password_is_named() {
    let swtpm = Swtpm::start_software().unwrap();
    swtpm.set_owner_auth(b"", b"owner secret").unwrap();
    let state = tempfile::tempdir().unwrap();
    for configured in [owner_auth(b"wrong"), None] {
        let settings = TpmSettings {
            owner_auth: configured,
            ..swtpm.settings(&[7])
        };
        let tpm = Tpm::connect(&settings).unwrap();
        let error = tpm.provision(state.path()).unwrap_err();
        assert!(matches!(error, TpmError::OwnerAuthRejected), "{error:?}");
        assert!(error.to_string().contains("owner_auth"), "{error}");
        // Nothing was written: a later, correct attempt can still provision.
        assert!(!state.path().join(mig::tpm::KEY_DIR).exists());
    }
    let settings = TpmSettings {
        owner_auth: owner_auth(b"owner secret"),
        ..swtpm.settings(&[7])
    };
    Tpm::connect(&settings)
        .unwrap()
        .provision(state.path())
        .unwrap();
    let settings = TpmSettings {
        owner_auth: owner_auth(b"wrong"),
        ..swtpm.settings(&[7])
    };
    let error = Tpm::connect(&settings)
        .unwrap()
        .load(state.path())
        .unwrap_err();
    assert!(matches!(error, TpmError::OwnerAuthRejected), "{error:?}");
}
