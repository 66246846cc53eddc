//! `migctl demo`: a complete development appliance on this machine — a software TPM, a dev CA,
//! the appliance certificate, three partners with certificates, a synthetic practice, migd
//! running — and the curl commands that exercise it. Nothing here is fit for production: the
//! CAs' keys sit in the demo folder.

use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mig_testkit::ports::free_ports;
use mig_testkit::rcgen::SanType;
use mig_testkit::swtpm::stop_pid_file;
use mig_testkit::{Ca, Swtpm};

use crate::cli::{InitArgs, PartnerAddArgs};
use crate::commands;

/// A marker so `demo` only ever wipes a folder it made itself.
const MARKER: &str = ".mig-demo";

/// A demo partner and its agreement, as `partner add` flags.
pub struct DemoPartner {
    /// File name of its certificate and key in `pki/`.
    pub file: &'static str,
    pub ods: &'static str,
    pub name: &'static str,
    pub partner_type: &'static str,
    pub sections: &'static str,
    pub roles: &'static str,
    pub override_roles: Option<&'static str>,
}

pub const PARTNERS: [DemoPartner; 3] = [
    DemoPartner {
        file: "ambulance",
        ods: "DEMAMB",
        name: "Demo Ambulance Service",
        partner_type: "ambulance",
        sections: "all",
        roles: "R8000,R8003",
        override_roles: Some("R8000"),
    },
    DemoPartner {
        file: "out-of-hours",
        ods: "DEMOOH",
        name: "Demo Out-of-Hours GP Service",
        partner_type: "out-of-hours",
        sections: "all",
        roles: "R8000,R8003",
        override_roles: Some("R8000"),
    },
    // Its ODS code is the one the synthetic practice's standing third-party consents name.
    DemoPartner {
        file: "social-care",
        ods: "8KL21",
        name: "Demo Carers Support (social care)",
        partner_type: "social-care",
        sections: "allergies,medications,end-of-life,communication-preferences,risks-and-warnings",
        roles: "R8003",
        override_roles: None,
    },
];

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{} not found next to migctl (build the workspace: cargo build)",
            path.display()
        )
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    mig::registry::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Stops a previous demo's processes and removes its folder (only a folder `demo` made).
fn reset(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.join(MARKER).exists() {
        bail!(
            "{} exists and was not made by `migctl demo`; choose another --dir",
            dir.display()
        );
    }
    stop_pid_file(&dir.join("migd.pid"));
    stop_pid_file(&dir.join("swtpm.pid"));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

fn wait_ready(config: &mig::config::Config, migd: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = migd.try_wait()? {
            bail!("migd exited ({status}) before it was ready; see its log");
        }
        if let Ok(answer) = commands::admin_call(config, mig_admin_proto::Status {}) {
            if answer.ready {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("migd was not ready within 30 s")
}

/// A provisioned development appliance: what `provision` made and where.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub dir: PathBuf,
    pub config: mig::config::Config,
    pub config_path: PathBuf,
    /// Certificates and keys: `appliance-ca.pem`, `<partner>.crt/.key`, `clinical-system.crt/.key`,
    /// `partner-ca.pem`, and the CAs' own keys `*-ca.key` (for tests that issue more).
    pub pki: PathBuf,
    pub api_port: u16,
    /// Where migd serves `GET /metrics` (loopback).
    pub metrics_port: u16,
    pub upstream_port: u16,
    pub tpm_port: u16,
}

impl Appliance {
    /// Stops swtpm (migd is the caller's to stop).
    pub fn stop_tpm(&self) {
        stop_pid_file(&self.dir.join("swtpm.pid"));
    }
}

/// swtpm, `init`, the appliance certificate, a partner CA with a CRL, the three demo partners
/// and the clinical system, in `dir` (which must not exist or be an earlier demo's). `api_port`
/// 0 picks a free port.
pub fn provision(dir: &Path, api_port: u16) -> Result<Appliance> {
    let dir = std::path::absolute(dir)?;
    reset(&dir)?;
    std::fs::create_dir_all(&dir)?;
    write(
        &dir.join(MARKER),
        "made by migctl demo; removed by the next demo run\n",
    )?;
    std::fs::create_dir_all(dir.join("pki"))?;

    // Dropped (stopped) if provisioning fails; left running for the appliance otherwise.
    let swtpm = Swtpm::start_in(&dir).context("starting swtpm")?;
    let appliance = provision_with_tpm(dir.clone(), api_port, swtpm.port())?;
    swtpm.detach();
    Ok(appliance)
}

/// The demo's CAs, marked as what they are.
fn demo_ca(name: &str) -> Result<Ca> {
    Ok(Ca::root_in(name, Some("MIG demo (not for production)"))?)
}

/// The rest of `provision`, once swtpm runs (which `provision` stops again on failure).
fn provision_with_tpm(dir: PathBuf, api_port: u16, tpm_port: u16) -> Result<Appliance> {
    let config_path = dir.join("migd.toml");
    let pki = dir.join("pki");
    let [free_api_port, upstream_port, metrics_port] = free_ports::<3>()?;
    let api_port = if api_port == 0 {
        free_api_port
    } else {
        api_port
    };
    println!("software TPM on 127.0.0.1:{tpm_port}");

    let config = commands::init(
        &config_path,
        &InitArgs {
            state_dir: dir.join("state"),
            ods: mig_synthetic::DEFAULT_PRACTICE_ODS.into(),
            name: mig_synthetic::DEFAULT_PRACTICE_NAME.into(),
            asid: "200000000123".into(),
            tcti: format!("swtpm:host=127.0.0.1,port={tpm_port}"),
            listen: format!("127.0.0.1:{api_port}"),
            upstream_listen: Some(format!("127.0.0.1:{upstream_port}")),
            admin_socket: dir.join("admin.sock"),
            fhir_base: Some(format!("https://localhost:{api_port}/fhir")),
            pcrs: "sha256:7".into(),
            sub_icb: Some(mig_synthetic::DEFAULT_SUB_ICB.into()),
            metrics_listen: Some(format!("127.0.0.1:{metrics_port}")),
        },
    )?;

    // The appliance's certificate: CSR signed in the TPM, issued by the demo appliance CA.
    let appliance_ca = demo_ca("MIG Demo Appliance CA")?;
    let csr_pem = commands::csr(&config, "CN=localhost,O=MIG demo appliance,C=GB")?;
    write(&pki.join("appliance.csr"), &csr_pem)?;
    let chain = appliance_ca.server_chain_for_csr(
        &csr_pem,
        vec![SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]))],
        365,
    )?;
    write(&pki.join("appliance-ca.pem"), &appliance_ca.pem())?;
    write(&pki.join("appliance-chain.pem"), &chain)?;
    commands::install_certificate(&config, chain.as_bytes())?;
    println!("appliance certificate issued by the demo appliance CA and installed");

    // Partners: one CA, a CRL, three partners with client certificates.
    let partner_ca = demo_ca("MIG Demo Partner CA")?;
    write(&pki.join("partner-ca.pem"), &partner_ca.pem())?;
    mig::registry::add_trust_ca(&config.state_dir, partner_ca.pem().as_bytes())?;
    let now = time::OffsetDateTime::now_utc();
    let crl = partner_ca.crl(&[], 30)?;
    mig::registry::install_crl(&config.state_dir, crl.pem()?.as_bytes(), None)?;
    for DemoPartner {
        file,
        ods,
        name,
        partner_type,
        sections,
        roles,
        override_roles,
    } in PARTNERS
    {
        let leaf = partner_ca.client(name, 365)?;
        let cert_path = pki.join(format!("{file}.crt"));
        write(&cert_path, &leaf.cert_pem)?;
        write(&pki.join(format!("{file}.key")), &leaf.key_pem)?;
        let partner = commands::partner_from_args(&PartnerAddArgs {
            ods: ods.into(),
            name: name.into(),
            partner_type: partner_type.into(),
            cert: Some(cert_path),
            spki_sha256: None,
            sections: sections.into(),
            roles: roles.into(),
            override_roles: override_roles.map(str::to_owned),
            override_sections: None,
            sites: None,
            expires: Some((now + time::Duration::days(365)).date().to_string()),
            attested_permission: false,
        })?;
        mig::registry::add_partner(&config.state_dir, &partner)?;
        println!("partner {name} ({ods}): {file}.crt / {file}.key");
    }
    let upstream = partner_ca.client("Demo clinical system", 365)?;
    write(&pki.join("clinical-system.crt"), &upstream.cert_pem)?;
    write(&pki.join("clinical-system.key"), &upstream.key_pem)?;
    mig::registry::add_upstream(
        &config.state_dir,
        "clinical-system",
        upstream.cert_pem.as_bytes(),
    )?;
    write(&pki.join("partner-ca.key"), &partner_ca.key.serialize_pem())?;
    write(
        &pki.join("appliance-ca.key"),
        &appliance_ca.key.serialize_pem(),
    )?;
    Ok(Appliance {
        dir,
        config,
        config_path,
        pki,
        api_port,
        upstream_port,
        metrics_port,
        tpm_port,
    })
}

/// Starts `migd` (the binary at `migd`) for `app` with extra environment, logging to
/// `migd.log`, and waits until it says it is ready.
pub fn start_migd(app: &Appliance, migd: &Path, env: &[(&str, &str)]) -> Result<Child> {
    let log = std::fs::File::create(app.dir.join("migd.log"))?;
    let mut child = Command::new(migd)
        .arg("--config")
        .arg(&app.config_path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting migd")?;
    write(&app.dir.join("migd.pid"), &child.id().to_string())?;
    if let Err(e) = wait_ready(&app.config, &mut child) {
        let log = std::fs::read_to_string(app.dir.join("migd.log")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        bail!("{e:#}\n--- migd.log ---\n{log}");
    }
    Ok(child)
}

/// Writes a synthetic practice (seed 1) and imports it through the admin socket.
pub fn load_practice(app: &Appliance, patients: usize) -> Result<mig_synthetic::Summary> {
    let practice = app.dir.join("practice");
    let summary = mig_synthetic::write_practice(&practice, patients as u64, 1)?;
    let files = mig::replica::ndjson_import_order(&practice)?;
    for file in &files {
        commands::import_file(&app.config, file).with_context(|| file.display().to_string())?;
    }
    Ok(summary)
}

pub fn run(dir: &Path, patients: usize, detach: bool) -> Result<ExitCode> {
    let port = if TcpListener::bind("127.0.0.1:8443").is_ok() {
        8443
    } else {
        0
    };
    let app = provision(dir, port)?;
    let migd = start_migd(&app, &sibling_binary("migd")?, &[]);
    let mut migd = match migd {
        Ok(child) => child,
        Err(e) => {
            app.stop_tpm();
            return Err(e);
        }
    };
    println!(
        "migd ready on https://localhost:{}/fhir (log: {})",
        app.api_port,
        app.dir.join("migd.log").display()
    );
    let started = Instant::now();
    let summary = match load_practice(&app, patients) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = migd.kill();
            app.stop_tpm();
            return Err(e);
        }
    };
    println!(
        "synthetic practice: {} patients, {} resources, imported through the admin socket in {:.1} s",
        summary.patients,
        summary.resources,
        started.elapsed().as_secs_f64()
    );
    let dir = &app.dir;
    print_guide(dir, &app.config_path, app.api_port);
    if detach {
        println!("\nmigd and swtpm keep running. Stop them with:\n  kill $(cat {0}/migd.pid) $(cat {0}/swtpm.pid)", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nPress Ctrl-C to stop the demo appliance.");
    wait_for_interrupt();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(migd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = migd.wait();
    stop_pid_file(&dir.join("swtpm.pid"));
    let _ = std::fs::remove_file(dir.join("migd.pid"));
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn wait_for_interrupt() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_ok() {
        let _ = set.wait();
    } else {
        // Without signal masking, read standard input until it closes.
        for _ in std::io::stdin().lock().lines() {}
    }
}

/// A demo patient's NHS number by kind.
fn demo_patient(kind: mig_synthetic::DemoKind) -> Result<String> {
    mig_synthetic::demo_patients()
        .into_iter()
        .find(|p| p.kind == kind)
        .map(|p| p.nhs_number)
        .ok_or_else(|| anyhow!("no demo patient of kind {kind:?}"))
}

fn print_guide(dir: &Path, config_path: &Path, port: u16) {
    use mig_synthetic::DemoKind;
    let pki = dir.join("pki");
    let migctl = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("migctl"));
    let curl = |who: &str| {
        format!(
            "curl -sS --cacert {0}/appliance-ca.pem --cert {0}/{who}.crt --key {0}/{who}.key",
            pki.display()
        )
    };
    let token = |ods: &str, extra: &str| {
        format!(
            "$({} --config {} demo-token --ods {ods}{extra})",
            migctl.display(),
            config_path.display()
        )
    };
    let record = |nhs: &str| {
        format!(
            r#"{{"resourceType":"Parameters","parameter":[{{"name":"patientNHSNumber","valueIdentifier":{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}}},{{"name":"includeAllergies","part":[{{"name":"includeResolvedAllergies","valueBoolean":false}}]}},{{"name":"includeMedication"}},{{"name":"includeProblems"}},{{"name":"includeEndOfLife"}}]}}"#
        )
    };
    let headers = |interaction: &str| {
        format!(
            "-H 'Ssp-TraceID: 6f1c2a9e-5b7d-4c1e-9f3a-2d8b7e6a1c40' -H 'Ssp-From: 200000000999' -H 'Ssp-To: 200000000123' -H 'Ssp-InteractionID: {interaction}' -H 'Content-Type: application/fhir+json'"
        )
    };
    let structured = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1";
    let url = format!("https://localhost:{port}/fhir/Patient/\\$gpc.getstructuredrecord");
    let shared = demo_patient(DemoKind::SensitiveWithoutConsent).unwrap_or_default();
    let dissent = demo_patient(DemoKind::Dissent).unwrap_or_default();
    println!("\nTry it (copy and paste):\n");
    println!("# 1. A consent-filtered record (sensitive items withheld, Lists carry the warning):");
    println!(
        "{} {} -H \"Authorization: Bearer {}\" -d '{}' {url}\n",
        curl("ambulance"),
        headers(structured),
        token("DEMAMB", ""),
        record(&shared)
    );
    println!("# 2. A refusal: this patient dissents (403 NO_PATIENT_CONSENT):");
    println!(
        "{} {} -H \"Authorization: Bearer {}\" -d '{}' {url}\n",
        curl("ambulance"),
        headers(structured),
        token("DEMAMB", ""),
        record(&dissent)
    );
    println!("# 3. An emergency override, which alerts the privacy officer:");
    println!(
        "{} {} -H \"Authorization: Bearer {}\" -d '{}' {url}",
        curl("ambulance"),
        headers(structured),
        token("DEMAMB", " --override emergency --justification 'Unconscious patient at scene, allergy status needed'"),
        record(&shared)
    );
    println!(
        "{} --config {} alerts list\n",
        migctl.display(),
        config_path.display()
    );
    let page = dir.join("record.html");
    println!("# 4. The same record as the care-record page a clinician reads (Accept: text/html):");
    println!(
        "{} {} -H 'Accept: text/html' -H \"Authorization: Bearer {}\" -d '{}' -o {} {url}",
        curl("ambulance"),
        headers(structured),
        token("DEMAMB", ""),
        record(&shared),
        page.display()
    );
    println!(
        "#    then open it in a browser: xdg-open {0}   (or: chromium {0})\n",
        page.display()
    );
    println!("# The audit trail:");
    println!(
        "{0} --config {1} audit verify && {0} --config {1} audit patient {shared}",
        migctl.display(),
        config_path.display()
    );
}
