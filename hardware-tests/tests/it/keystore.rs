//! The keystore's life cycle on a real (software) TPM: provision, load, sign, unseal, restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::Arc;

use hardware_tests::Swtpm;
use mig::tpm::{KeyRole, Tpm, TpmError};

#[test]
fn provisioned_keys_sign_verifiably_and_unseal_a_32_byte_key() {
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    tpm.provision(state.path()).unwrap();
    tpm.load(state.path()).unwrap();

    for role in [KeyRole::Tls, KeyRole::Audit] {
        let signer = tpm.signer(role).unwrap();
        let spki = signer.public_key_spki_der();
        let signature = signer.sign(b"ClientHello transcript").unwrap();
        common::verify(&spki, b"ClientHello transcript", &signature).unwrap();
        assert!(common::verify(&spki, b"tampered", &signature).is_err());
    }
    let tls = tpm.public_key_spki_der(KeyRole::Tls).unwrap();
    let audit = tpm.public_key_spki_der(KeyRole::Audit).unwrap();
    assert_ne!(tls, audit, "the TLS and audit keys must be distinct");

    let key = tpm.unseal_replica_key().unwrap();
    assert_ne!(*key, [0u8; 32]);
    assert_eq!(
        *tpm.unseal_replica_key().unwrap(),
        *key,
        "unseal is repeatable"
    );

    // Key files are private to the daemon's user.
    use std::os::unix::fs::PermissionsExt;
    for name in [
        "tls.pub",
        "tls.priv",
        "audit.priv",
        "replica-key.priv",
        "manifest.json",
    ] {
        let mode = std::fs::metadata(hardware_tests::key_file(state.path(), name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    tpm.health_check().unwrap();
    assert_eq!(tpm.random(100).unwrap().len(), 100);
}

#[test]
fn keys_and_replica_key_survive_a_tpm_restart_and_a_new_process() {
    let mut swtpm = Swtpm::start_software().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (tls, audit, key) = {
        let tpm = Tpm::connect(&swtpm.settings(&[7, 16])).unwrap();
        tpm.provision(state.path()).unwrap();
        tpm.load(state.path()).unwrap();
        (
            tpm.public_key_spki_der(KeyRole::Tls).unwrap(),
            tpm.public_key_spki_der(KeyRole::Audit).unwrap(),
            tpm.unseal_replica_key().unwrap(),
        )
    }; // dropping the last handle closes the connection, as process exit would

    swtpm.restart().unwrap();

    let tpm = Tpm::connect(&swtpm.settings(&[7, 16])).unwrap();
    tpm.load(state.path()).unwrap();
    assert_eq!(tpm.public_key_spki_der(KeyRole::Tls).unwrap(), tls);
    assert_eq!(tpm.public_key_spki_der(KeyRole::Audit).unwrap(), audit);
    assert_eq!(*tpm.unseal_replica_key().unwrap(), *key);
    let signature = tpm.sign(KeyRole::Tls, b"after reboot").unwrap();
    common::verify(&tls, b"after reboot", &signature).unwrap();
}

#[test]
fn provisioning_twice_refuses_and_leaves_the_keys_alone() {
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    tpm.provision(state.path()).unwrap();
    let before = std::fs::read(hardware_tests::key_file(state.path(), "tls.priv")).unwrap();

    let error = tpm.provision(state.path()).unwrap_err();
    assert!(
        matches!(error, TpmError::AlreadyProvisioned { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("refusing to overwrite"),
        "{error}"
    );
    let after = std::fs::read(hardware_tests::key_file(state.path(), "tls.priv")).unwrap();
    assert_eq!(before, after);
    tpm.load(state.path()).unwrap();
    assert!(matches!(
        tpm.load(state.path()),
        Err(TpmError::AlreadyLoaded)
    ));
}

#[test]
fn sixty_four_concurrent_signatures_all_verify() {
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    tpm.provision(state.path()).unwrap();
    tpm.load(state.path()).unwrap();
    let tls = tpm.signer(KeyRole::Tls).unwrap();
    let audit = tpm.signer(KeyRole::Audit).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(64)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..64 {
            // Every fourth request uses the audit key, which is swapped in and out of the TPM.
            let signer: Arc<dyn mig::keys::Signer> = if i % 4 == 0 {
                audit.clone()
            } else {
                tls.clone()
            };
            tasks.push(tokio::spawn(async move {
                let message = format!("handshake {i}").into_bytes();
                let signature = tokio::task::spawn_blocking({
                    let signer = signer.clone();
                    let message = message.clone();
                    move || signer.sign(&message)
                })
                .await
                .unwrap()
                .unwrap();
                common::verify(&signer.public_key_spki_der(), &message, &signature).unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    // The TPM still has its slots: unseal needs two more loaded objects.
    tpm.unseal_replica_key().unwrap();
}

#[test]
fn operations_before_load_and_after_provision_fail_clearly() {
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    let error = tpm.load(state.path()).unwrap_err();
    assert!(matches!(error, TpmError::NotProvisioned { .. }), "{error}");
    assert!(error.to_string().contains("migctl init"), "{error}");
    assert!(matches!(
        tpm.sign(KeyRole::Tls, b"x"),
        Err(TpmError::NotLoaded)
    ));
    assert!(matches!(tpm.unseal_replica_key(), Err(TpmError::NotLoaded)));
    assert!(tpm.signer(KeyRole::Audit).is_err());
}

#[test]
fn a_missing_tpm_or_bad_tcti_is_one_clear_line() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = mig::tpm::TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        pcrs: vec![7],
        owner_auth: None,
    };
    let error = Tpm::connect(&settings).unwrap_err();
    assert!(matches!(error, TpmError::NoTpm { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("port={port}")) && !text.contains('\n'),
        "{text}"
    );

    let settings = mig::tpm::TpmSettings {
        tcti: "bluetooth:tpm".into(),
        ..settings
    };
    assert!(matches!(
        Tpm::connect(&settings),
        Err(TpmError::BadTcti { .. })
    ));
    let settings = mig::tpm::TpmSettings {
        tcti: "device:/dev/tpmrm0".into(),
        pcrs: vec![24],
        owner_auth: None,
    };
    assert!(matches!(
        Tpm::connect(&settings),
        Err(TpmError::BadPcrSelection { .. })
    ));
}

#[test]
fn objects_left_in_swtpm_by_a_killed_client_do_not_block_start_up() {
    // tpm2_createprimary exits without flushing, as a killed migd would: it fills swtpm's three
    // transient slots.
    let swtpm = Swtpm::start_software().unwrap();
    let context_dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let status = std::process::Command::new("tpm2_createprimary")
            .args(["-Q", "-C", "o", "-c"])
            .arg(context_dir.path().join(format!("{i}.ctx")))
            .env("TPM2TOOLS_TCTI", swtpm.tcti())
            .env("TSS2_LOG", "all+NONE")
            .status()
            .unwrap();
        assert!(status.success());
    }
    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    tpm.provision(state.path()).unwrap();
    tpm.load(state.path()).unwrap();
    tpm.unseal_replica_key().unwrap();
}
