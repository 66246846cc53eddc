//! Damaged, missing or swapped key files give an error naming the file, never a panic, and
//! leave the TPM usable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use hardware_tests::{key_file, Swtpm};
use mig::tpm::{Tpm, TpmError};

/// Copies a provisioned state directory so each case damages its own copy.
fn copy_state(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let dir = to.path().join(mig::tpm::KEY_DIR);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(from.join(mig::tpm::KEY_DIR)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    to
}

fn swap(state: &Path, a: &str, b: &str) {
    let (pa, pb) = (key_file(state, a), key_file(state, b));
    let (da, db) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    std::fs::write(&pa, db).unwrap();
    std::fs::write(&pb, da).unwrap();
}

fn edit(state: &Path, name: &str, change: impl FnOnce(&mut Vec<u8>)) {
    let path = key_file(state, name);
    let mut bytes = std::fs::read(&path).unwrap();
    change(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
}

/// How a case damages its copy of the state directory.
type Damage = Box<dyn Fn(&Path)>;

/// Asserts a one-line error of the expected kind that names `file`.
fn assert_names(error: &TpmError, file: &str, also: &str) {
    let text = error.to_string();
    assert!(
        matches!(
            error,
            TpmError::BlobCorrupt { .. } | TpmError::BlobMissing { .. }
        ),
        "{error:?}"
    );
    assert!(text.contains(&format!("/tpm/{file}")), "{text}");
    assert!(text.contains(also), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn damaged_missing_and_swapped_key_files_are_named() {
    let swtpm = Swtpm::start().unwrap();
    let good = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    tpm.provision(good.path()).unwrap();

    let cases: Vec<(&str, Damage, &str, &str)> = vec![
        (
            "public part altered",
            Box::new(|s| edit(s, "tls.pub", |b| b[20] ^= 1)),
            "tls.pub",
            "altered or replaced",
        ),
        (
            "private part truncated",
            Box::new(|s| edit(s, "tls.priv", |b| b.truncate(b.len() / 2))),
            "tls.priv",
            "truncated",
        ),
        (
            "private part altered",
            Box::new(|s| {
                edit(s, "audit.priv", |b| {
                    let last = b.len() - 1;
                    b[last] ^= 0x55
                })
            }),
            "audit.priv",
            "the TPM refused it",
        ),
        (
            "public parts swapped",
            Box::new(|s| swap(s, "tls.pub", "audit.pub")),
            "tls.pub",
            "swapped",
        ),
        (
            "private parts swapped",
            Box::new(|s| swap(s, "tls.priv", "audit.priv")),
            "tls.priv",
            "the TPM refused it",
        ),
        (
            "key pairs swapped",
            Box::new(|s| {
                swap(s, "tls.pub", "audit.pub");
                swap(s, "tls.priv", "audit.priv")
            }),
            "tls.pub",
            "swapped",
        ),
        (
            "sealed key replaced by a signing key",
            Box::new(|s| {
                std::fs::copy(key_file(s, "tls.pub"), key_file(s, "replica-key.pub")).unwrap();
            }),
            "replica-key.pub",
            "tls key's public part (tls.pub)",
        ),
        (
            "private part missing",
            Box::new(|s| std::fs::remove_file(key_file(s, "audit.priv")).unwrap()),
            "audit.priv",
            "missing",
        ),
        (
            "manifest missing",
            Box::new(|s| std::fs::remove_file(key_file(s, "manifest.json")).unwrap()),
            "manifest.json",
            "missing",
        ),
        (
            "manifest garbage",
            Box::new(|s| std::fs::write(key_file(s, "manifest.json"), b"{").unwrap()),
            "manifest.json",
            "not a key manifest",
        ),
        (
            "public part empty",
            Box::new(|s| std::fs::write(key_file(s, "audit.pub"), b"").unwrap()),
            "audit.pub",
            "altered or replaced",
        ),
    ];
    for (what, damage, file, also) in cases {
        let state = copy_state(good.path());
        damage(state.path());
        let error = tpm.load(state.path()).unwrap_err();
        eprintln!("{what}: {error}");
        assert_names(&error, file, also);
    }

    // After all those failures nothing is left loaded: the good copy loads and unseals.
    tpm.load(good.path()).unwrap();
    tpm.unseal_replica_key().unwrap();
}

#[test]
fn keys_from_before_a_tpm_clear_are_refused_with_the_likely_cause() {
    let swtpm = Swtpm::start_software().unwrap();
    let state = tempfile::tempdir().unwrap();
    Tpm::connect(&swtpm.settings(&[7]))
        .unwrap()
        .provision(state.path())
        .unwrap();

    // TPM2_Clear (as `tpm2_clear` or the firmware's "clear TPM" does) replaces the owner seed.
    let mut context = swtpm.raw_context().unwrap();
    context
        .execute_with_session(
            Some(tss_esapi::interface_types::session_handles::AuthSession::Password),
            |ctx| ctx.clear(tss_esapi::handles::AuthHandle::Lockout),
        )
        .unwrap();
    drop(context);

    let error = Tpm::connect(&swtpm.settings(&[7]))
        .unwrap()
        .load(state.path())
        .unwrap_err();
    assert_names(&error, "tls.priv", "the TPM was cleared since provisioning");
}

#[test]
fn a_missing_tpm_device_is_named() {
    let settings = mig::tpm::TpmSettings {
        tcti: "device:/dev/no-such-tpm".into(),
        pcrs: vec![7],
        owner_auth: None,
    };
    let error = Tpm::connect(&settings).unwrap_err();
    assert!(matches!(error, TpmError::NoTpm { .. }), "{error:?}");
    assert!(error.to_string().contains("/dev/no-such-tpm"), "{error}");
    assert!(error.to_string().contains("enabled in firmware"), "{error}");
}
