//! Unit tests of the stores: round trips, refusals with clear messages, atomic writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use super::*;
use crate::keys::InMemorySigner;
use crate::policy::{PartnerType, RoleSet};

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    name: &str,
    key: &KeyPair,
    issuer: &(rcgen::Certificate, KeyPair),
    days: (i64, i64),
) -> rcgen::Certificate {
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.0);
    params.not_after = now + time::Duration::days(days.1);
    params.signed_by(key, &issuer.0, &issuer.1).unwrap()
}

fn crl(issuer: &(rcgen::Certificate, KeyPair), days_ago: i64) -> rcgen::CertificateRevocationList {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::days(days_ago),
        next_update: now + time::Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer.0, &issuer.1)
    .unwrap()
}

fn sample_partner(ods: &str, hash: u8) -> Partner {
    Partner {
        agreement: Agreement {
            ods: ods.into(),
            name: "East Ambulance".into(),
            partner_type: PartnerType::Ambulance,
            sites: Default::default(),
            sections: [crate::fhir::Section::Allergies].into_iter().collect(),
            roles: RoleSet::Only(["R8000".to_string()].into_iter().collect()),
            override_roles: RoleSet::none(),
            override_sections: None,
            expires: Some(time::macros::date!(2027 - 03 - 31)),
        },
        identity: CertificateMatch::SpkiSha256([hash; 32]),
    }
}

#[test]
fn partners_round_trip_through_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    assert!(path.ends_with("partners/RX6.toml"));
    add_partner(dir.path(), &sample_partner("NWX", 2)).unwrap();
    let listed = list_partners(dir.path()).unwrap();
    assert_eq!(listed, [sample_partner("NWX", 2), sample_partner("RX6", 1)]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("spki_sha256 = \"0101"), "{text}");

    let loaded = load(dir.path()).unwrap();
    assert_eq!(loaded.partners.partners().len(), 2);

    remove_partner(dir.path(), "RX6").unwrap();
    assert_eq!(list_partners(dir.path()).unwrap().len(), 1);
    assert!(matches!(
        remove_partner(dir.path(), "RX6"),
        Err(RegistryError::NotFound { .. })
    ));
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join(PARTNERS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["NWX.toml"]);
}

#[test]
fn partner_matched_by_subject_and_issuer_names_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let partners = dir.path().join(PARTNERS_DIR);
    std::fs::create_dir_all(&partners).unwrap();
    let mut text = toml::to_string(&sample_partner("RX6", 1)).unwrap();
    let at = text.find("[identity]").unwrap();
    text.truncate(at);
    text.push_str("[identity.subject_issuer]\nsubject = \"CN=ePCR, O=East Ambulance\"\nissuer = \"CN=NHS Partner CA\"\n");
    std::fs::write(partners.join("RX6.toml"), text).unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("RX6.toml") && err.contains("subject_issuer"),
        "{err}"
    );
}

#[test]
fn duplicate_partners_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    assert!(matches!(
        add_partner(dir.path(), &sample_partner("RX6", 2)),
        Err(RegistryError::Exists { .. })
    ));
    let err = add_partner(dir.path(), &sample_partner("NWX", 1)).unwrap_err();
    assert!(err.to_string().contains("same certificate"), "{err}");
    let err = add_partner(dir.path(), &sample_partner("../x", 3)).unwrap_err();
    assert!(err.to_string().contains("letters, digits"), "{err}");
}

#[test]
fn broken_partner_file_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    println!("{text}");
    let text = text.replacen("[agreement]\n", "[agreement]\ncolour = \"blue\"\n", 1);
    std::fs::write(&path, &text).unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("partners/RX6.toml"), "{err}");
    assert!(err.contains("line"), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn trust_store_accepts_only_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Partner CA");
    let paths = add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap();
    assert_eq!(paths.len(), 1);
    // Idempotent.
    assert_eq!(
        add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap(),
        paths
    );

    let not_ca = leaf("client", &KeyPair::generate().unwrap(), &root, (-1, 30));
    let err = add_trust_ca(dir.path(), not_ca.pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    let err = add_trust_ca(dir.path(), b"hello").unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    assert_eq!(load(dir.path()).unwrap().trust.len(), 1);
}

#[test]
fn crl_must_be_signed_by_a_trusted_ca_and_not_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Partner CA");
    let stranger = ca("Stranger CA");
    add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap();

    let err = install_crl(dir.path(), stranger_crl(&stranger).as_bytes(), None).unwrap_err();
    assert!(
        err.to_string().contains("not signed by a partner CA"),
        "{err}"
    );
    // Same issuer name, different key: still refused.
    let impostor = ca("Partner CA");
    let err = install_crl(
        dir.path(),
        crl(&impostor, 1).pem().unwrap().as_bytes(),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not signed by a partner CA"),
        "{err}"
    );

    // DER works as well as PEM.
    let fresh = crl(&root, 1);
    let installed = install_crl(dir.path(), fresh.der(), None).unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].1.issuer, "CN=Partner CA");
    let older = crl(&root, 5);
    let err = install_crl(dir.path(), older.pem().unwrap().as_bytes(), None).unwrap_err();
    assert!(
        err.to_string().contains("older than the installed one"),
        "{err}"
    );
    let err = install_crl(dir.path(), b"\x30\x00", None).unwrap_err();
    assert!(err.to_string().contains("CRL"), "{err}");
    assert_eq!(load(dir.path()).unwrap().crls.len(), 1);
}

fn stranger_crl(issuer: &(rcgen::Certificate, KeyPair)) -> String {
    crl(issuer, 1).pem().unwrap()
}

#[test]
fn appliance_chain_must_match_key_be_in_date_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Appliance CA");
    let other_root = ca("Other CA");
    let key = KeyPair::generate().unwrap();
    let signer = InMemorySigner::from_pkcs8(&key.serialize_der()).unwrap();
    let now = SystemTime::now();

    let good = leaf("mig.test", &key, &root, (-1, 30));
    let chain = format!("{}{}", good.pem(), root.0.pem());
    install_appliance_chain(dir.path(), chain.as_bytes(), signer.as_ref(), now).unwrap();
    assert_eq!(load(dir.path()).unwrap().chain.len(), 2);

    let expired = leaf("mig.test", &key, &root, (-30, -1));
    let err = install_appliance_chain(dir.path(), expired.pem().as_bytes(), signer.as_ref(), now)
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    let broken = format!("{}{}", good.pem(), other_root.0.pem());
    let err =
        install_appliance_chain(dir.path(), broken.as_bytes(), signer.as_ref(), now).unwrap_err();
    assert!(err.to_string().contains("does not build"), "{err}");

    // The installed chain is untouched by the refused attempts.
    assert_eq!(load(dir.path()).unwrap().chain.len(), 2);
}

#[test]
fn upstreams_are_pinned_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Clinical CA");
    let cert = leaf("emis", &KeyPair::generate().unwrap(), &root, (-1, 30));
    add_upstream(dir.path(), "emis", cert.pem().as_bytes()).unwrap();
    let listed = list_upstreams(dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    let identity = cert_identity(cert.der()).unwrap();
    assert_eq!(listed[0].spki_sha256, identity.spki_sha256);
    let err = add_upstream(dir.path(), "emis2", cert.pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("already pins"), "{err}");
    let loaded = load(dir.path()).unwrap();
    assert_eq!(loaded.upstreams.identify(&identity).unwrap().name, "emis");
    remove_upstream(dir.path(), "emis").unwrap();
    assert!(list_upstreams(dir.path()).unwrap().is_empty());
}

#[test]
fn fingerprint_changes_when_a_store_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let before = fingerprint(dir.path()).unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let after = fingerprint(dir.path()).unwrap();
    assert_ne!(before, after);
    assert_eq!(before.certificates, after.certificates);
    assert_eq!(after, fingerprint(dir.path()).unwrap());
}
