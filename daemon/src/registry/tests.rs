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
use mig_policy::{PartnerType, RoleSet};

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
            sections: [mig_policy::fhir::Section::Allergies].into_iter().collect(),
            roles: RoleSet::Only(["R8000".to_string()].into_iter().collect()),
            override_roles: RoleSet::none(),
            override_sections: None,
            expires: Some(time::macros::date!(2027 - 03 - 31)),
            attested_permission: false,
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

    let loaded = load(dir.path(), None);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
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
    // Like any bad file, it is left out (the partner is not registered) and reported by name.
    let files = load(dir.path(), None);
    assert!(files.partners.partners().is_empty());
    let err = files
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
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
    let loaded = load(dir.path(), None);
    assert_eq!(loaded.problems.len(), 1);
    let err = loaded.problems[0].to_string();
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
    assert_eq!(load(dir.path(), None).trust.len(), 1);
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
    assert_eq!(load(dir.path(), None).crls.len(), 1);
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
    assert_eq!(load(dir.path(), None).chain.len(), 2);

    let expired = leaf("mig.test", &key, &root, (-30, -1));
    let err = install_appliance_chain(dir.path(), expired.pem().as_bytes(), signer.as_ref(), now)
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    let broken = format!("{}{}", good.pem(), other_root.0.pem());
    let err =
        install_appliance_chain(dir.path(), broken.as_bytes(), signer.as_ref(), now).unwrap_err();
    assert!(err.to_string().contains("does not build"), "{err}");

    // The installed chain is untouched by the refused attempts.
    assert_eq!(load(dir.path(), None).chain.len(), 2);
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
    let loaded = load(dir.path(), None);
    assert_eq!(loaded.upstreams.identify(&identity).unwrap().name, "emis");
    remove_upstream(dir.path(), "emis").unwrap();
    assert!(list_upstreams(dir.path()).unwrap().is_empty());
}

#[test]
fn fingerprint_changes_when_a_store_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let before = fingerprint(dir.path());
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let after = fingerprint(dir.path());
    assert_ne!(before, after);
    assert_eq!(before.certificates, after.certificates);
    assert_eq!(after, fingerprint(dir.path()));
}

// ---------------------------------------------------------------------------------------------
// Each file applies on its own (issue 13, item 11)
// ---------------------------------------------------------------------------------------------

/// Makes `path` unreadable even for root (tests run as root): a symlink to a directory, which
/// `read` refuses with EISDIR, as migd refuses a root-owned 0600 file.
fn make_unreadable(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink("/", path).unwrap();
}

fn crl_revoking(
    issuer: &(rcgen::Certificate, KeyPair),
    days_ago: i64,
    serials: &[u64],
) -> rcgen::CertificateRevocationList {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::days(days_ago),
        next_update: now + time::Duration::days(7),
        crl_number: SerialNumber::from(days_ago.unsigned_abs() + 1),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: now - time::Duration::days(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer.0, &issuer.1)
    .unwrap()
}

#[test]
fn a_bad_partner_file_leaves_out_that_partner_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    add_partner(dir.path(), &sample_partner("NWX", 2)).unwrap();
    let root = ca("Partner CA");
    add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap();
    install_crl(dir.path(), crl(&root, 1).der(), None).unwrap();
    let before = load(dir.path(), None);
    assert_eq!(before.partners.partners().len(), 2);

    // NWX's file becomes unreadable: NWX is out (its old agreement is not kept), RX6, the CA
    // and the CRL still apply.
    make_unreadable(&dir.path().join("partners/NWX.toml"));
    let after = load(dir.path(), None);
    let ods: Vec<_> = after
        .partners
        .partners()
        .iter()
        .map(|p| p.agreement.ods.clone())
        .collect();
    assert_eq!(ods, ["RX6"]);
    assert_eq!((after.trust.len(), after.crls.len()), (1, 1));
    assert_eq!(after.problems.len(), 1, "{:?}", after.problems);
    assert!(after.problems[0].path.ends_with("partners/NWX.toml"));
    assert!(after.problems[0].error.contains("partners/NWX.toml"));
    assert!(after.problems[0].consequence.contains("refused"));
}

#[test]
fn an_unreadable_crl_keeps_the_revocations_previously_applied() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Partner CA");
    add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap();
    let installed = install_crl(dir.path(), crl_revoking(&root, 2, &[7]).der(), None).unwrap();
    let first = load(dir.path(), None);
    assert_eq!(first.crls[0].2.revoked, 1);
    let applied = Applied {
        chain: first.chain.clone(),
        crls: first.crls.clone(),
    };

    // Unreadable or corrupt: the CRL applied before stays in force, the CA stays trusted.
    for broken in [None, Some(&b"\x30\x03\x02\x01\x00"[..])] {
        match broken {
            None => make_unreadable(&installed[0].0),
            Some(bytes) => {
                std::fs::remove_file(&installed[0].0).unwrap();
                std::fs::write(&installed[0].0, bytes).unwrap();
            }
        }
        let again = load(dir.path(), Some(&applied));
        assert_eq!(again.crls.len(), 1);
        assert_eq!(again.crls[0].2.revoked, 1);
        assert_eq!(again.trust.len(), 1);
        assert_eq!(again.problems.len(), 1, "{:?}", again.problems);
        assert!(again.problems[0].consequence.contains("stays in force"));
    }
}

#[test]
fn an_unreadable_crl_with_no_earlier_copy_distrusts_the_ca_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Partner CA");
    let other = ca("Other CA");
    add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap();
    add_trust_ca(dir.path(), other.0.pem().as_bytes()).unwrap();
    let installed = install_crl(dir.path(), crl(&root, 1).der(), None).unwrap();

    // Named as migctl names it: only that CA is distrusted.
    make_unreadable(&installed[0].0);
    let loaded = load(dir.path(), None);
    assert_eq!(loaded.trust.len(), 1);
    let left = pki::parse_cert(Path::new("x"), &loaded.trust[0].1)
        .unwrap()
        .subject()
        .to_string();
    assert_eq!(left, "CN=Other CA");
    assert!(loaded
        .problems
        .iter()
        .any(|p| p.error.contains("the CA it names")));

    // A CRL file of unknown name and content could cover any CA: none is trusted.
    std::fs::remove_file(&installed[0].0).unwrap();
    std::fs::write(dir.path().join("crl/hand-copied.pem"), b"garbage").unwrap();
    let loaded = load(dir.path(), None);
    assert!(loaded.trust.is_empty());
}

#[test]
fn an_unreadable_ca_is_not_trusted_and_a_bad_upstream_is_not_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Partner CA");
    let other = ca("Other CA");
    let paths = add_trust_ca(dir.path(), root.0.pem().as_bytes()).unwrap();
    add_trust_ca(dir.path(), other.0.pem().as_bytes()).unwrap();
    let clinical = ca("Clinical CA");
    let cert = leaf("emis", &KeyPair::generate().unwrap(), &clinical, (-1, 30));
    add_upstream(dir.path(), "EMIS Web", cert.pem().as_bytes()).unwrap();
    make_unreadable(&paths[0]);
    std::fs::write(dir.path().join("upstream/tpp.toml"), "name = 1\n").unwrap();
    let loaded = load(dir.path(), None);
    assert_eq!(loaded.trust.len(), 1);
    assert_eq!(loaded.upstreams.len(), 1);
    assert_eq!(loaded.problems.len(), 2, "{:?}", loaded.problems);
}

#[test]
fn an_unlistable_directory_is_reported_and_the_poll_still_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let partners = dir.path().join(PARTNERS_DIR);
    std::fs::rename(&partners, dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere/RX6.toml"), &partners).unwrap();
    let loaded = load(dir.path(), None);
    assert!(loaded.partners.partners().is_empty());
    assert!(
        loaded.problems[0].path.ends_with("partners"),
        "{:?}",
        loaded.problems
    );
    let before = fingerprint(dir.path());
    std::fs::remove_file(&partners).unwrap();
    std::fs::rename(dir.path().join("elsewhere"), &partners).unwrap();
    assert_ne!(before, fingerprint(dir.path()));
    assert_eq!(load(dir.path(), None).partners.partners().len(), 1);
}

#[test]
fn fingerprint_changes_when_only_owner_or_mode_changes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let before = fingerprint(dir.path());
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(before, fingerprint(dir.path()));
}

// ---------------------------------------------------------------------------------------------
// Sites, names, file ownership (issue 13)
// ---------------------------------------------------------------------------------------------

#[test]
fn a_site_may_not_be_another_partners_ods_code() {
    let dir = tempfile::tempdir().unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let mut claimant = sample_partner("NWX", 2);
    claimant.agreement.sites = ["RX6".to_string()].into();
    let err = add_partner(dir.path(), &claimant).unwrap_err().to_string();
    assert!(
        err.contains("site RX6") && err.contains("East Ambulance (RX6)"),
        "{err}"
    );
    assert!(!dir.path().join("partners/NWX.toml").exists());

    // The other way round: a new partner whose ODS code is already someone's site.
    let dir = tempfile::tempdir().unwrap();
    let mut holder = sample_partner("NWX", 2);
    holder.agreement.sites = ["RX6".to_string()].into();
    add_partner(dir.path(), &holder).unwrap();
    let err = add_partner(dir.path(), &sample_partner("RX6", 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("RX6 is a site of registered partner"), "{err}");
    assert!(!dir.path().join("partners/RX6.toml").exists());

    // Written by hand anyway: migd leaves the claimant out and keeps the partner it names.
    let text = toml::to_string(&sample_partner("RX6", 1)).unwrap();
    std::fs::write(dir.path().join("partners/RX6.toml"), text).unwrap();
    let loaded = load(dir.path(), None);
    let ods: Vec<_> = loaded
        .partners
        .partners()
        .iter()
        .map(|p| p.agreement.ods.clone())
        .collect();
    assert_eq!(ods, ["RX6"]);
    assert!(
        loaded.problems[0].error.contains("NWX.toml"),
        "{:?}",
        loaded.problems
    );
}

#[test]
fn two_partners_claiming_one_certificate_are_both_left_out() {
    let dir = tempfile::tempdir().unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let text = toml::to_string(&sample_partner("NWX", 1)).unwrap();
    std::fs::write(dir.path().join("partners/NWX.toml"), text).unwrap();
    let loaded = load(dir.path(), None);
    assert!(loaded.partners.partners().is_empty());
    assert!(loaded.problems[0].error.contains("same certificate"));
}

#[test]
fn upstream_names_are_display_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("Clinical CA");
    let cert = leaf("emis", &KeyPair::generate().unwrap(), &root, (-1, 30));
    let path = add_upstream(dir.path(), "EMIS Web", cert.pem().as_bytes()).unwrap();
    assert!(
        path.ends_with("upstream/emis-web.toml"),
        "{}",
        path.display()
    );
    assert_eq!(list_upstreams(dir.path()).unwrap()[0].name, "EMIS Web");
    let loaded = load(dir.path(), None);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let identity = cert_identity(cert.der()).unwrap();
    assert_eq!(
        loaded.upstreams.identify(&identity).unwrap().name,
        "EMIS Web"
    );
    let other = leaf("tpp", &KeyPair::generate().unwrap(), &root, (-1, 30));
    for bad in [
        "",
        " EMIS",
        "EMIS\nWeb",
        "EMIS\u{1b}[2J",
        "x\u{202e}y",
        "---",
        &"x".repeat(101),
    ] {
        let err = add_upstream(dir.path(), bad, other.pem().as_bytes());
        assert!(err.is_err(), "{bad:?} accepted");
    }
    let err = add_upstream(dir.path(), "emis web", other.pem().as_bytes()).unwrap_err();
    assert!(matches!(err, RegistryError::Exists { .. }), "{err}");
    remove_upstream(dir.path(), "EMIS Web").unwrap();
    assert!(list_upstreams(dir.path()).unwrap().is_empty());
}

#[test]
fn partner_names_must_be_printable_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "East\nAmbulance", "East\u{7}", &"x".repeat(101)] {
        let mut partner = sample_partner("RX6", 1);
        partner.agreement.name = bad.into();
        assert!(
            add_partner(dir.path(), &partner).is_err(),
            "{bad:?} accepted"
        );
    }
    let mut partner = sample_partner("RX6", 1);
    partner.agreement.name = "St Mary's Out-of-Hours (Zoë)".into();
    add_partner(dir.path(), &partner).unwrap();
    // Hand-written with a control character: left out by migd.
    let text = std::fs::read_to_string(dir.path().join("partners/RX6.toml"))
        .unwrap()
        .replace("Zoë", "Zo\\u001b[2J");
    std::fs::write(dir.path().join("partners/RX6.toml"), text).unwrap();
    let loaded = load(dir.path(), None);
    assert!(loaded.partners.partners().is_empty());
    assert!(
        loaded.problems[0].error.contains("unprintable"),
        "{:?}",
        loaded.problems
    );
}

#[test]
fn written_files_belong_to_the_state_directory_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED written_files_belong_to_the_state_directory_owner: needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    // A root shell's umask would otherwise make the files 0600.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let partner = add_partner(dir.path(), &sample_partner("RX6", 1));
    let root = ca("Partner CA");
    let trust = add_trust_ca(dir.path(), root.0.pem().as_bytes());
    let crl = install_crl(dir.path(), crl(&root, 1).der(), None);
    nix::sys::stat::umask(old);
    let crl = crl.unwrap().remove(0).0;
    for path in [partner.unwrap(), trust.unwrap().remove(0), crl] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
            (nobody.uid.as_raw(), nobody.gid.as_raw(), 0o640),
            "{}",
            path.display()
        );
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(
            (parent.uid(), parent.permissions().mode() & 0o777),
            (nobody.uid.as_raw(), 0o750)
        );
    }
    assert!(load(dir.path(), None).problems.is_empty());
}

#[test]
fn check_reports_files_the_owner_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED check_reports_files_the_owner_cannot_read: needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    add_partner(dir.path(), &sample_partner("RX6", 1)).unwrap();
    let (_, problems) = problems_for_check(dir.path());
    assert!(problems.is_empty(), "{problems:?}");
    // As `sudo cp` leaves it: root-owned, 0600.
    let path = dir.path().join("partners/NWX.toml");
    std::fs::write(&path, toml::to_string(&sample_partner("NWX", 2)).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, problems) = problems_for_check(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].error.contains("partners/NWX.toml"));
    assert!(problems[0].error.contains("cannot read"));
}

#[test]
fn concurrent_adds_cannot_both_pass_the_site_check() {
    // Each round: one partner names the other's ODS code as a site, both added at once. The
    // lock makes one of them see the other; without it both could be written.
    for round in 0..40 {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let mut claimant = sample_partner("NWX", 2);
        claimant.agreement.sites = ["RX6".to_string()].into();
        let handles: Vec<_> = [claimant, sample_partner("RX6", 1)]
            .into_iter()
            .map(|partner| {
                let (dir, barrier) = (dir.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    add_partner(dir.path(), &partner).is_ok()
                })
            })
            .collect();
        let added: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            added.iter().filter(|a| **a).count(),
            1,
            "round {round}: {added:?}"
        );
    }
}
