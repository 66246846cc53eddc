//! The whole appliance starts on a software TPM and serves a consent-filtered record over mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use hardware_tests::load::{run, RequestTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliance_serves_metadata_over_mutual_tls() {
    // Provisioning blocks (TPM, files); keep it off the runtime.
    let appliance = tokio::task::spawn_blocking(|| TestAppliance::start(3))
        .await
        .unwrap()
        .unwrap();
    let request = RequestTemplate {
        method: http::Method::GET,
        path: "/fhir/metadata".into(),
        headers: vec![],
        body: bytes::Bytes::new(),
    };
    let report = run(
        appliance.address(),
        &appliance.partner_tls(AMBULANCE),
        &request,
        2,
        std::time::Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert!(report.requests > 0, "{report}\n{}", appliance.log());
    assert_eq!((report.errors, report.non_2xx), (0, 0), "{report}");
}
