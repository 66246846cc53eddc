//! Interoperability with OpenSSL clients: curl (HTTP/1.1 and HTTP/2) and `openssl s_client`.
//! Skipped with a note when the tools are not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::process::Command;

use tls_support::*;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("version").output().is_ok()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(app: &Appliance, who: &Identity) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), app.key.ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &who.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &who.key_pem).unwrap();
        Files { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().to_string()
    }
}

fn curl(app: &Appliance, files: &Files, extra: &[&str]) -> std::process::Output {
    let port = app.addr.port();
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--resolve", &format!("mig.test:{port}:127.0.0.1")])
        .args(["--cacert", &files.path("ca.pem")])
        .args(extra)
        .arg(format!("https://mig.test:{port}/fhir/metadata"));
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_partner_certificate_is_served_over_http11_and_http2() {
    if !have("curl") {
        eprintln!("curl not installed; skipping");
        return;
    }
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    let files = Files::new(&app, &who);
    let cert = [
        "--cert",
        &files.path("cert.pem"),
        "--key",
        &files.path("key.pem"),
    ];
    for (flag, protocol) in [("--http1.1", "h1"), ("--http2", "h2")] {
        let mut args = cert.to_vec();
        args.push(flag);
        let output = tokio::task::block_in_place(|| curl(&app, &files, &args));
        let body = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            body.starts_with(&format!("partner=RX6 upstream=none protocol={protocol}")),
            "{body}"
        );
    }
    // Without a certificate curl fails in the TLS layer.
    let output = tokio::task::block_in_place(|| curl(&app, &files, &[]));
    assert!(!output.status.success());
    // TLS 1.2 only: refused (off by default).
    let mut args = cert.to_vec();
    args.extend(["--tls-max", "1.2"]);
    let output = tokio::task::block_in_place(|| curl(&app, &files, &args));
    assert!(!output.status.success());
}
