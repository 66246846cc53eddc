//! Each registry file applies on its own (SPEC §9, issue 13): a broken or unreadable file beside
//! a CRL or a removal never stops it from taking effect on a running listener within a second,
//! and an unreadable CRL never silently drops the revocations it put in force.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::path::Path;
use std::time::{Duration, Instant};

use rustls::AlertDescription;
use tls_support::*;

/// As migd (not root) sees a root-owned 0600 file: reading it fails. Tests run as root, which
/// reads anything, so the file becomes a symlink to a directory, which `read` refuses too.
fn make_unreadable(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/", path).unwrap();
}

fn polled() -> Options {
    Options {
        // migd polls every 500 ms.
        poll: Some(Duration::from_millis(500)),
        ..Default::default()
    }
}

/// Waits up to a second for `ok` to hold of a fresh exchange as `who`.
async fn within_a_second<F>(app: &Appliance, who: &Identity, what: &str, ok: F)
where
    F: Fn(&std::io::Result<Exchange>) -> bool,
{
    let start = Instant::now();
    loop {
        let result = get(app.addr, app.client_config(Some(who)), "/").await;
        if ok(&result) {
            println!("{what}: {} ms", start.elapsed().as_millis());
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: not within a second, last {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn revoked(result: &std::io::Result<Exchange>) -> bool {
    matches!(result, Err(e) if alert(e) == Some(AlertDescription::CertificateRevoked))
}

fn served_as(ods: &'static str) -> impl Fn(&std::io::Result<Exchange>) -> bool {
    move |result| matches!(result, Ok(e) if e.body.starts_with(&format!("partner={ods}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_crl_applies_within_a_second_beside_unreadable_and_corrupt_files() {
    let ca = Issuer::root("Partner CA");
    let other_ca = Issuer::root("Other CA");
    let revoked_one = ca.client("ambulance");
    let bystander = ca.client("out-of-hours");
    let app = Appliance::start(
        &[&ca, &other_ca],
        &[partner("RX6", &revoked_one), partner("NWX", &bystander)],
        polled(),
    )
    .await;
    within_a_second(&app, &revoked_one, "served before", served_as("RX6")).await;

    // Beside the new CRL: an unreadable CA file (as `sudo cp` leaves one), a corrupt partner
    // file and an unreadable upstream file.
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(other_ca.der()));
    let unreadable_ca = app.path(&format!("trust/{}.pem", &hash[..16]));
    assert!(unreadable_ca.exists());
    make_unreadable(&unreadable_ca);
    std::fs::write(app.path("partners/BRK.toml"), "[agreement\nods = ").unwrap();
    make_unreadable(&app.path("upstream/emis.toml"));
    let crl = ca.crl(&[revoked_one.serial], 7);
    mig::registry::install_crl(app.state(), crl.pem().unwrap().as_bytes(), None).unwrap();

    within_a_second(&app, &revoked_one, "CRL applied", revoked).await;
    within_a_second(&app, &bystander, "others still served", served_as("NWX")).await;
    let problems: Vec<String> = app
        .reloader
        .current()
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    for file in [
        unreadable_ca.to_str().unwrap(),
        "partners/BRK.toml",
        "upstream/emis.toml",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(file)),
            "{file}: {problems:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_removal_applies_within_a_second_beside_a_broken_file() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], polled()).await;
    within_a_second(&app, &who, "served before", served_as("RX6")).await;
    make_unreadable(&app.path("partners/NWX.toml"));
    mig::registry::remove_partner(app.state(), "RX6").unwrap();
    within_a_second(&app, &who, "removal applied", served_as("none")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_partner_file_takes_that_partner_out() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], polled()).await;
    within_a_second(&app, &who, "served before", served_as("RX6")).await;
    // Its agreement may have just been narrowed or revoked: the old one is not kept.
    make_unreadable(&app.path("partners/RX6.toml"));
    within_a_second(&app, &who, "partner out", served_as("none")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_crl_keeps_its_revocations_in_force() {
    let ca = Issuer::root("Partner CA");
    let revoked_one = ca.client("ambulance");
    let newcomer = ca.client("newcomer");
    let app = Appliance::start(&[&ca], &[partner("RX6", &revoked_one)], polled()).await;
    let crl = ca.crl(&[revoked_one.serial], 7);
    let installed =
        mig::registry::install_crl(app.state(), crl.pem().unwrap().as_bytes(), None).unwrap();
    within_a_second(&app, &revoked_one, "CRL applied", revoked).await;

    // The CRL file becomes unreadable while a new partner is added: the partner applies, the
    // revocation stays.
    make_unreadable(&installed[0].0);
    mig::registry::add_partner(app.state(), &partner("NEW", &newcomer)).unwrap();
    within_a_second(&app, &newcomer, "new partner applied", served_as("NEW")).await;
    assert!(revoked(
        &get(app.addr, app.client_config(Some(&revoked_one)), "/").await
    ));
    let snapshot = app.reloader.current();
    assert!(
        snapshot.problems[0].to_string().contains("stays in force"),
        "{:?}",
        snapshot.problems
    );
}
