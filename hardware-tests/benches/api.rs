//! SPEC §11 in one run: structured records per second and latency at 32 keep-alive mTLS
//! connections against migd on a synthetic practice (default 10,000 patients), the same bytes
//! served by nginx over mTLS for comparison, full and resumed handshakes with the TPM-held key,
//! and migd's resident memory.
//!
//! `cargo build --release --bins && cargo bench -p hardware-tests --bench api`
//! (MIG_BENCH_PATIENTS, MIG_BENCH_SECONDS; needs nginx: `apt-get install -y nginx`).
//!
//! Every figure is printed with the conditions it was taken under (`hardware_tests::measure`):
//! each run waits (up to MIG_BENCH_QUIET_WAIT_S, 150 s) for the 1-minute load average to fall
//! below MIG_BENCH_MAX_LOAD (0.5), and one that starts above it is marked NOT VALID in its own
//! line; beside it, the server's and the generator's CPU time. MIG_BENCH_OHA=1 (or the path of
//! an `oha` binary; `cargo install oha`) also runs oha against migd and nginx, HTTP/1.1 and
//! HTTP/2, as a second generator to show the project's own is not the limit.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use hardware_tests::load::{handshakes, run, run_mix, ClientTls, LoadReport, RequestTemplate};
use hardware_tests::measure::{Conditions, Quiet};

/// The listener limits for measurement: the defaults refuse a source's full handshakes beyond
/// 10/s (after a burst of 64), which would turn the handshake runs into a count of refusals.
const BENCH_LIMITS: &[(&str, &str)] = &[
    ("handshake_rate_per_source", "100000"),
    ("handshake_burst_per_source", "100000"),
    ("max_connections_per_source", "1024"),
    ("max_connections_per_partner", "1024"),
];

/// Sets `BENCH_LIMITS` in the `[partner_api.limits]` table of a migd.toml.
fn set_bench_limits(config: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = "[partner_api.limits]";
    let start = match lines.iter().position(|l| l.trim() == header) {
        Some(start) => start,
        None => {
            lines.push(String::new());
            lines.push(header.to_owned());
            lines.len() - 1
        }
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |n| start + 1 + n);
    let mut table: Vec<String> = lines[start + 1..end]
        .iter()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or_default().trim();
            !BENCH_LIMITS.iter().any(|(name, _)| *name == key)
        })
        .cloned()
        .collect();
    table.extend(BENCH_LIMITS.iter().map(|(k, v)| format!("{k} = {v}")));
    lines.splice(start + 1..end, table);
    std::fs::write(config, lines.join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", config.display()))
}

/// Prints one load run's figure with its conditions: NOT VALID in the same line if the machine
/// was busy when it started.
fn report(label: &str, result: &LoadReport, conditions: &Conditions) {
    println!(
        "{}{label}: {result} {}",
        conditions.verdict(),
        conditions.describe(result.requests)
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record_request(nhs: &str, token: &str) -> RequestTemplate {
    let sections = [
        "includeMedication",
        "includeProblems",
        "includeImmunisations",
        "includeConsultations",
        "includeInvestigations",
        "includeUncategorisedData",
        "includeReferrals",
        "includeProcedures",
        "includeEndOfLife",
        "includeCommunicationPreferences",
        "includeRisksAndWarnings",
    ];
    let mut parameters = vec![
        serde_json::json!({"name": "patientNHSNumber", "valueIdentifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}}),
        serde_json::json!({"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]}),
    ];
    parameters.extend(sections.iter().map(|s| serde_json::json!({"name": s})));
    RequestTemplate {
        method: http::Method::POST,
        path: "/fhir/Patient/$gpc.getstructuredrecord".into(),
        headers: vec![
            (
                "ssp-traceid".into(),
                "6f1c2a9e-5b7d-4c1e-9f3a-2d8b7e6a1c40".into(),
            ),
            ("ssp-from".into(), "200000000999".into()),
            ("ssp-to".into(), "200000000123".into()),
            (
                "ssp-interactionid".into(),
                "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1".into(),
            ),
            ("authorization".into(), format!("Bearer {token}")),
            ("content-type".into(), "application/fhir+json".into()),
        ],
        body: Bytes::from(
            serde_json::json!({"resourceType": "Parameters", "parameter": parameters}).to_string(),
        ),
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// nginx serving `body` at /record.json with the same TLS 1.3 mTLS set-up; returns its port.
fn start_nginx(
    dir: &std::path::Path,
    appliance: &TestAppliance,
    body: &[u8],
) -> Result<(std::process::Child, u16), String> {
    use rcgen::{CertificateParams, KeyPair};
    let pki = &appliance.app.pki;
    let read =
        |name: &str| std::fs::read_to_string(pki.join(name)).map_err(|e| format!("{name}: {e}"));
    let ca_key = KeyPair::from_pem(&read("appliance-ca.key")?).map_err(|e| e.to_string())?;
    let ca_params = CertificateParams::from_ca_cert_pem(&read("appliance-ca.pem")?)
        .map_err(|e| e.to_string())?;
    let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let cert = CertificateParams::new(vec!["localhost".into()])
        .and_then(|p| p.signed_by(&key, &ca, &ca_key))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("server.pem"), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem()).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("www")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("www/record.json"), body).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let conf = format!(
        "worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log; daemon off;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; keepalive_requests 1000000; client_body_temp_path {d}/tmp;\n\
           proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           server {{ listen 127.0.0.1:{port} ssl http2; ssl_protocols TLSv1.3;\n\
             ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n\
             ssl_client_certificate {pki}/partner-ca.pem; ssl_verify_client on;\n\
             root {d}/www; default_type application/fhir+json; }} }}\n",
        d = dir.display(),
        pki = pki.display()
    );
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let child = std::process::Command::new("nginx")
        .args(["-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-p"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e} (apt-get install -y nginx)"))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((child, port))
}

fn main() -> Result<(), String> {
    let patients: u64 = env_or("MIG_BENCH_PATIENTS", 10_000);
    let seconds: u64 = env_or("MIG_BENCH_SECONDS", 15);
    let quiet = Quiet::from_env();
    let started = Instant::now();
    let mut appliance = TestAppliance::start(0)?;
    appliance.stop();
    set_bench_limits(appliance.config_path())?;
    appliance.start_migd(&[])?;
    migctl::demo::load_practice(&appliance.app, patients as usize).map_err(|e| format!("{e:#}"))?;
    println!(
        "appliance with {patients} patients ready in {:.0} s (provision, start, import)",
        started.elapsed().as_secs_f64()
    );
    // migd packs each imported patient's record once the import has settled; measure the
    // records it serves from, not the work of getting there.
    let packing = Instant::now();
    while packing.elapsed() < Duration::from_secs(900) {
        let status = appliance.migctl(&["status"]);
        if status.status.success()
            && !String::from_utf8_lossy(&status.stdout).contains("being packed")
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "patient records packed {:.0} s after the import",
        packing.elapsed().as_secs_f64()
    );
    println!(
        "partner_api.limits set for measurement: {} (the defaults refuse full handshakes beyond 10/s per source)",
        BENCH_LIMITS
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "each run waits up to {:.0} s for the 1-minute load average to fall below {:.2} (MIG_BENCH_MAX_LOAD); \
         server CPU is migd's (nginx's master and workers for nginx), generator CPU this process's",
        quiet.max_wait.as_secs_f64(),
        quiet.max_load
    );
    let typical = mig_synthetic::Practice::new(1)
        .typical_patients(patients, 300)
        .map_err(|e| e.to_string())?;
    let (nhs, resources) = typical.first().ok_or("no typical patient")?.clone();
    let fhir_base = appliance.app.config.appliance.fhir_base.as_str().to_owned();
    // GP Connect tokens live 5 minutes and each run may first wait minutes for a quiet machine:
    // every run takes a token made after its wait, or it would measure refusals.
    let fresh_token = || {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        mig::api::jwt::encode_unsigned(&mig::api::jwt::example_claims(
            &fhir_base, "DEMAMB", "R8000", now,
        ))
    };
    let request_for = |nhs: &str| record_request(nhs, &fresh_token());
    let tls: ClientTls = appliance.partner_tls(AMBULANCE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pid = appliance.pid().unwrap_or(0);
    let address = appliance.address();
    let duration = Duration::from_secs(seconds);
    let load = |addr, request: &RequestTemplate| {
        runtime.block_on(run(addr, &tls, request, 32, Duration::from_secs(2)))?;
        runtime.block_on(run(addr, &tls, request, 32, duration))
    };

    let (migd, migd_conditions) =
        Conditions::measure(&quiet, Some(pid), || load(address, &request_for(&nhs)));
    let migd = migd?;
    report(
        &format!("migd, structured record of a {resources}-resource patient, 32 connections"),
        &migd,
        &migd_conditions,
    );
    println!(
        "migd resident memory: {} MiB now ({} MiB anonymous), {} MiB peak",
        rss_kib(pid, "VmRSS:") / 1024,
        rss_kib(pid, "RssAnon:") / 1024,
        rss_kib(pid, "VmHWM:") / 1024
    );
    // The same load spread over many patients: far more than the record cache holds, so
    // nearly every request reads and decodes its patient from the encrypted replica.
    // (Only those whose record the ambulance service may see: a later dissent refuses some.)
    let mut spread_patients = Vec::new();
    for (nhs, _) in &typical {
        if runtime
            .block_on(hardware_tests::load::fetch(
                address,
                &tls,
                &request_for(nhs),
            ))
            .is_ok()
        {
            spread_patients.push(nhs.as_str());
        }
    }
    let (spread_report, conditions) = Conditions::measure(&quiet, Some(pid), || {
        let spread: Vec<_> = spread_patients.iter().map(|n| request_for(n)).collect();
        runtime.block_on(run_mix(address, &tls, &spread, 32, duration))
    });
    report(
        &format!(
            "migd, structured records of {} typical patients in turn, 32 connections",
            spread_patients.len()
        ),
        &spread_report?,
        &conditions,
    );
    println!(
        "migd resident memory: {} MiB now ({} MiB anonymous, {} MiB file-backed and shared)",
        rss_kib(pid, "VmRSS:") / 1024,
        rss_kib(pid, "RssAnon:") / 1024,
        (rss_kib(pid, "RssFile:") + rss_kib(pid, "RssShmem:")) / 1024
    );

    // The same bytes from nginx, in the same run.
    let one = runtime.block_on(hardware_tests::load::fetch(
        address,
        &tls,
        &request_for(&nhs),
    ))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mut nginx, port) = start_nginx(dir.path(), &appliance, &one)?;
    let static_request = RequestTemplate {
        method: http::Method::GET,
        path: "/record.json".into(),
        headers: vec![],
        body: Bytes::new(),
    };
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (static_report, static_conditions) = Conditions::measure(&quiet, Some(nginx.id()), || {
        load(nginx_addr, &static_request)
    });
    let oha = oha_binary().map(|oha| {
        oha_runs(
            &oha,
            &quiet,
            &appliance,
            &|| request_for(&nhs),
            (pid, address),
            (nginx.id(), port),
            dir.path(),
            seconds,
        )
    });
    // A graceful stop, so the master takes its workers with it (SIGKILL would orphan them).
    let _ = std::process::Command::new("kill")
        .args(["-QUIT", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
    let static_report = static_report?;
    report(
        &format!(
            "nginx, the same {} bytes as a static file over mTLS, 32 connections",
            one.len()
        ),
        &static_report,
        &static_conditions,
    );
    let both_valid = migd_conditions.valid() && static_conditions.valid();
    println!(
        "{}ratio migd/nginx (project generator, HTTP/1.1): {:.2}",
        if both_valid {
            ""
        } else {
            "*** NOT VALID (a run started on a busy machine) *** "
        },
        migd.rate() / static_report.rate().max(1.0)
    );
    if let Some(oha) = oha {
        oha?;
    }

    let metadata = "/fhir/metadata";
    for resume in [false, true] {
        let ((result, conditions), kind) = (
            Conditions::measure(&quiet, Some(pid), || {
                runtime.block_on(handshakes(
                    address,
                    &tls,
                    metadata,
                    8,
                    Duration::from_secs(5),
                    resume,
                ))
            }),
            if resume {
                "resumed handshakes"
            } else {
                "full handshakes (TPM-signed)"
            },
        );
        let (done, failed, spent) = result?;
        println!(
            "{}{kind}, 8 clients: {:.0}/s ({failed} failed) {}",
            conditions.verdict(),
            done as f64 / spent,
            conditions.describe(done)
        );
    }
    println!(
        "migd resident memory after all: {} MiB peak",
        rss_kib(pid, "VmHWM:") / 1024
    );
    Ok(())
}

/// `MIG_BENCH_OHA`: `1` for the `oha` on PATH or in ~/.cargo/bin, else the binary's path.
fn oha_binary() -> Option<std::path::PathBuf> {
    let wanted = std::env::var("MIG_BENCH_OHA").ok()?;
    if wanted.is_empty() || wanted == "0" {
        return None;
    }
    if wanted != "1" {
        return Some(wanted.into());
    }
    let cargo_bin = std::env::var_os("HOME")
        .map(|home| std::path::Path::new(&home).join(".cargo/bin/oha"))
        .filter(|p| p.exists());
    Some(cargo_bin.unwrap_or_else(|| "oha".into()))
}

/// The same comparison with oha as the generator: migd and nginx, HTTP/1.1 and HTTP/2, 32
/// connections each. Prints each command once, so it can be run by hand.
#[allow(clippy::too_many_arguments)]
fn oha_runs(
    oha: &std::path::Path,
    quiet: &Quiet,
    appliance: &TestAppliance,
    request_now: &dyn Fn() -> RequestTemplate,
    (migd_pid, migd): (u32, std::net::SocketAddr),
    (nginx_pid, nginx_port): (u32, u16),
    dir: &std::path::Path,
    seconds: u64,
) -> Result<(), String> {
    let request = request_now();
    let body = dir.join("request.json");
    std::fs::write(&body, &request.body).map_err(|e| e.to_string())?;
    let pki = &appliance.app.pki;
    let common = |http2: bool| {
        let mut args: Vec<String> = vec![
            "--no-tui".into(),
            "--output-format".into(),
            "json".into(),
            "-z".into(),
            format!("{seconds}s"),
            "-c".into(),
            "32".into(),
            "--cacert".into(),
            pki.join("appliance-ca.pem").display().to_string(),
            "--cert".into(),
            pki.join(format!("{AMBULANCE}.crt")).display().to_string(),
            "--key".into(),
            pki.join(format!("{AMBULANCE}.key")).display().to_string(),
        ];
        if http2 {
            args.push("--http2".into());
        }
        args
    };
    let mut rates = Vec::new();
    for http2 in [false, true] {
        let protocol = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        // Built when the run starts (after its quiet wait), with a token made then.
        let to_migd = || {
            let mut args = common(http2);
            args.extend(["-m".into(), "POST".into(), "-D".into()]);
            args.push(body.display().to_string());
            for (name, value) in &request_now().headers {
                args.extend(["-H".into(), format!("{name}: {value}")]);
            }
            args.push(format!(
                "https://localhost:{}/fhir/Patient/$gpc.getstructuredrecord",
                migd.port()
            ));
            args
        };
        let to_nginx = || {
            let mut args = common(http2);
            args.push(format!("https://localhost:{nginx_port}/record.json"));
            args
        };
        let mut pair = Vec::new();
        type Args<'a> = &'a dyn Fn() -> Vec<String>;
        let runs: [(&str, u32, Args); 2] = [
            ("migd", migd_pid, &to_migd),
            ("nginx", nginx_pid, &to_nginx),
        ];
        for (server, pid, args) in runs {
            let (result, conditions) =
                Conditions::measure(quiet, Some(pid), || oha_once(oha, &args()));
            let (rate, requests, line) = result?;
            println!(
                "{}oha, {server}, {protocol}, 32 connections: {line} {}",
                conditions.verdict(),
                conditions.describe(requests)
            );
            pair.push((rate, conditions.valid()));
        }
        if let [(migd_rate, migd_valid), (nginx_rate, nginx_valid)] = pair[..] {
            rates.push((
                protocol,
                migd_rate / nginx_rate.max(1.0),
                migd_valid && nginx_valid,
            ));
        }
    }
    for (protocol, ratio, valid) in rates {
        println!(
            "{}ratio migd/nginx (oha, {protocol}): {ratio:.2}",
            if valid {
                ""
            } else {
                "*** NOT VALID (a run started on a busy machine) *** "
            }
        );
    }
    println!(
        "oha command (migd, HTTP/1.1, run by hand against a running appliance): {} --no-tui -z {seconds}s -c 32 \
         --cacert CA.pem --cert PARTNER.crt --key PARTNER.key -m POST -D request.json {} \
         'https://localhost:PORT/fhir/Patient/$gpc.getstructuredrecord'",
        oha.display(),
        request
            .headers
            .iter()
            .map(|(n, v)| format!("-H '{n}: {}'", if n == "authorization" { "Bearer TOKEN" } else { v }))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// One oha run: (requests/s of successful answers, their number, a summary line).
fn oha_once(oha: &std::path::Path, args: &[String]) -> Result<(f64, u64, String), String> {
    let output = std::process::Command::new(oha)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e} (cargo install oha)", oha.display()))?;
    if !output.status.success() {
        return Err(format!(
            "oha failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("oha's JSON output: {e}"))?;
    let summary = &json["summary"];
    let statuses = &json["statusCodeDistribution"];
    let ok = statuses["200"].as_u64().unwrap_or(0);
    let all: u64 = statuses
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    // Requests still in flight when the time is up are not failures.
    let errors: u64 = json["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(what, _)| *what != "aborted due to deadline")
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let total_s = summary["total"].as_f64().unwrap_or(f64::NAN);
    let rate = ok as f64 / total_s;
    let ms = |p: &str| json["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1e3;
    let line = format!(
        "{rate:.0} req/s ({ok} 200 of {all} answers, {errors} errors in {total_s:.1} s), p50 {:.2} ms, p99 {:.2} ms, {:.1} KB/response",
        ms("p50"),
        ms("p99"),
        summary["sizePerRequest"].as_f64().unwrap_or(f64::NAN) / 1024.0
    );
    Ok((rate, ok, line))
}
