//! What each `migctl` command does. Commands that change the registry (partners, CAs, CRLs,
//! the appliance certificate, upstream systems) write the state directory directly, so they
//! work whether or not migd runs; a running migd notices within a second. Commands that read
//! or write the replica or audit trail go through migd's admin socket.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use strum::IntoEnumIterator;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cli::*;
use mig::admin::client::{AdminClient, AdminClientError};
use mig::config::{ApplianceConfig, Asid, Config, FhirBase, OdsCode, PcrSelection, Tcti};
use mig::keys::PublicKeyOnly;
use mig::registry::{self, CertificateMatch, Partner};
use mig::service::{AUDIT_FILE, REPLICA_FILE};
use mig::tpm::{KeyRole, Tpm};
use mig_admin_proto::{self as proto, Command as AdminCommand};
use mig_policy::fhir::Section;
use mig_policy::{Agreement, PartnerType, RoleSet};

/// Public halves of the appliance keys, written at `init` so certificate checks need no TPM.
pub const PUBLIC_KEYS_FILE: &str = "public-keys.json";
/// How much NDJSON goes in one admin request (whole lines; the socket takes 16 MiB a line).
const IMPORT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Runs `command` (all but `console` and `demo`, which `main` dispatches to their modules).
pub fn run(config_path: &Path, command: Command) -> Result<ExitCode> {
    match command {
        Command::Init(args) => init(config_path, &args).map(|_| ExitCode::SUCCESS),
        Command::DemoData {
            patients,
            seed,
            out,
        } => {
            let summary = mig_synthetic::write_practice(&out, patients as u64, seed)?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        // Checking a signature elsewhere needs no appliance config.
        Command::Extract(ExtractCommand::Verify {
            file,
            sig,
            key,
            fingerprint,
        }) if key.is_some() || fingerprint.is_some() => extract::verify(
            None,
            &file,
            sig.as_deref(),
            key.as_deref(),
            fingerprint.as_deref(),
        ),
        command => {
            let config = Config::load(config_path)?;
            run_with_config(&config, command)
        }
    }
}

fn run_with_config(config: &Config, command: Command) -> Result<ExitCode> {
    let state = &config.state_dir;
    match command {
        Command::Csr { subject, out } => {
            let pem = csr(config, &subject)?;
            registry::write_atomic(&out, pem.as_bytes())?;
            println!(
                "wrote {} (give it to your certificate authority, then `migctl cert install`)",
                out.display()
            );
        }
        Command::Cert(CertCommand::Install { file }) => {
            let path = install_certificate(config, &read(&file)?)?;
            println!("installed {} as {}", file.display(), path.display());
        }
        Command::Trust(TrustCommand::Add { file }) => {
            for path in registry::add_trust_ca(state, &read(&file)?)
                .with_context(|| file.display().to_string())?
            {
                println!("trusted partner CA {}", path.display());
            }
        }
        Command::Crl(CrlCommand::Install { file }) => {
            for (path, info) in registry::install_crl(state, &read(&file)?, None)
                .with_context(|| file.display().to_string())?
            {
                println!(
                    "installed CRL from {} ({} revoked) as {}",
                    info.issuer,
                    info.revoked,
                    path.display()
                );
            }
        }
        Command::Upstream(UpstreamCommand::Add { name, cert }) => {
            let path = registry::add_upstream(state, &name, &read(&cert)?)?;
            println!("registered clinical system {name} as {}", path.display());
        }
        Command::Partner(PartnerCommand::Add(args)) => {
            let partner = partner_from_args(&args)?;
            let path = registry::add_partner(state, &partner)?;
            println!(
                "registered {} ({}) as {}",
                partner.agreement.name,
                partner.agreement.ods,
                path.display()
            );
        }
        Command::Partner(PartnerCommand::List) => {
            for partner in registry::list_partners(state)? {
                println!("{}", describe_partner(&partner));
            }
        }
        Command::Partner(PartnerCommand::Remove { ods }) => {
            registry::remove_partner(state, &ods)?;
            println!("removed partner {ods}");
        }
        Command::Import { paths } => return import(config, &paths),
        Command::Audit(command) => return audit(config, command),
        Command::Alerts(command) => return alerts(config, command),
        Command::Extract(ExtractCommand::FitNotes { from, to, out }) => {
            return extract::fit_notes(config, &from, &to, &out)
        }
        Command::Extract(ExtractCommand::Verify {
            file,
            sig,
            key,
            fingerprint,
        }) => {
            return extract::verify(
                Some(config),
                &file,
                sig.as_deref(),
                key.as_deref(),
                fingerprint.as_deref(),
            )
        }
        Command::Status => return status(config),
        Command::Check => return Ok(crate::commands::check::run(config)),
        Command::Update(UpdateCommand::Install { file, keyring }) => {
            return update::install(config, &file, &keyring)
        }
        Command::Update(UpdateCommand::Status) => return update::status(),
        Command::DemoToken {
            ods,
            role,
            r#override,
            justification,
            no_permission,
        } => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut claims = mig::api::jwt::example_claims(
                config.appliance.fhir_base.as_str(),
                &ods,
                &role,
                now,
            );
            if let Some(reason) = r#override {
                claims["permission_to_view"] = json!("override");
                claims["override_reason"] = json!(reason);
                claims["override_justification"] = json!(justification.unwrap_or_default());
            } else if no_permission {
                if let Some(map) = claims.as_object_mut() {
                    map.remove("permission_to_view");
                }
            }
            println!("{}", mig::api::jwt::encode_unsigned(&claims));
        }
        Command::Init(_) | Command::DemoData { .. } => {
            bail!("internal: command dispatched twice")
        }
        Command::Console { .. } => bail!("internal: migctl console is dispatched by main"),
        #[cfg(feature = "demo")]
        Command::Demo { .. } => bail!("internal: migctl demo is dispatched by main"),
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `migctl init`: config, state directory, TPM keys, sealed key, empty replica and audit.
pub fn init(config_path: &Path, args: &InitArgs) -> Result<Config> {
    let ods = OdsCode::from_str(&args.ods).map_err(|e| anyhow!("--ods: {}", e.0))?;
    let asid = Asid::from_str(&args.asid).map_err(|e| anyhow!("--asid: {}", e.0))?;
    let tcti = Tcti::from_str(&args.tcti).map_err(|e| anyhow!("--tcti: {}", e.0))?;
    let pcrs = PcrSelection::from_str(&args.pcrs).map_err(|e| anyhow!("--pcrs: {}", e.0))?;
    let listen: std::net::SocketAddr = args.listen.parse().map_err(|_| {
        anyhow!(
            "--listen: {:?} is not an address like 0.0.0.0:8443",
            args.listen
        )
    })?;
    let upstream = match &args.upstream_listen {
        None => None,
        Some(text) => Some(text.parse::<std::net::SocketAddr>().map_err(|_| {
            anyhow!("--upstream-listen: {text:?} is not an address like 0.0.0.0:8444")
        })?),
    };
    let fhir_base = match &args.fhir_base {
        Some(url) => url.clone(),
        None => format!("https://{}:{}/fhir", hostname(), listen.port()),
    };
    let fhir_base = FhirBase::from_str(&fhir_base).map_err(|e| anyhow!("--fhir-base: {}", e.0))?;
    if args.name.trim().is_empty() {
        bail!("--name: the practice name is empty");
    }
    if config_path.exists() {
        bail!(
            "{} exists: this appliance is already initialised (refusing to overwrite it)",
            config_path.display()
        );
    }
    let state = &args.state_dir;
    for existing in [mig::tpm::KEY_DIR, REPLICA_FILE, AUDIT_FILE] {
        if state.join(existing).exists() {
            bail!(
                "{} exists: this appliance is already initialised (refusing to overwrite it)",
                state.join(existing).display()
            );
        }
    }
    let mut config = Config::new(
        std::path::absolute(state).unwrap_or_else(|_| state.clone()),
        ApplianceConfig {
            ods,
            name: args.name.trim().to_owned(),
            asid,
            fhir_base,
        },
        tcti,
    )?;
    config.tpm.pcrs = pcrs;
    config.partner_api.listen = listen;
    config.upstream = upstream.map(|listen| mig::config::UpstreamConfig { listen });
    config.admin.socket = args.admin_socket.clone();
    if let Some(code) = &args.sub_icb {
        if !mig::extract::is_sub_icb_code(code) {
            bail!("--sub-icb: {code:?} is not a sub-ICB location code (3 or 5 upper-case letters and digits, e.g. 16C)");
        }
        config.extracts.sub_icb = Some(code.clone());
    }
    match args.metrics_listen.as_deref() {
        None => {}
        Some("off") => config.metrics.listen = None,
        Some(text) => {
            let address: std::net::SocketAddr = text.parse().map_err(|_| {
                anyhow!("--metrics-listen: {text:?} is not an address like 127.0.0.1:9464")
            })?;
            if !address.ip().is_loopback() {
                bail!("--metrics-listen: {address} is not loopback; metrics are unauthenticated (set metrics.allow_non_loopback in the config to serve them elsewhere)");
            }
            config.metrics.listen = Some(address);
        }
    }

    create_private_dir(state)?;
    let tpm = Tpm::connect(&mig::service::tpm_settings(&config)?)?;
    tpm.provision(state)?;
    tpm.load(state)?;
    let (replica_key, audit_key) = mig::service::unseal_keys(&tpm)?;
    mig::replica::Replica::create(&state.join(REPLICA_FILE), &replica_key)?;
    let keys = json!({
        "tls_spki_der_hex": hex::encode(tpm.public_key_spki_der(KeyRole::Tls)?),
        "audit_spki_der_hex": hex::encode(tpm.public_key_spki_der(KeyRole::Audit)?),
    });
    registry::write_atomic(&state.join(PUBLIC_KEYS_FILE), keys.to_string().as_bytes())?;
    let audit = mig::audit::AuditLog::create(
        &state.join(AUDIT_FILE),
        &audit_key,
        tpm.signer(KeyRole::Audit)?,
        tpm.audit_counter(),
        mig::audit::AuditOptions::default(),
    )?;
    audit.append_blocking(mig::audit::AuditRecord::admin_action(
        &operator(),
        &format!("init {} ({})", config.appliance.name, config.appliance.ods),
        mig::audit::Decision::Permit,
    ))?;
    audit.shutdown_blocking()?;
    if let Some(parent) = config_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    config.write_new(config_path)?;
    config.source_path = config_path.to_owned();
    println!(
        "initialised {} ({}) in {}; config {}",
        config.appliance.name,
        config.appliance.ods,
        state.display(),
        config_path.display()
    );
    println!("next: migctl csr --subject \"CN=<appliance host name>\" --out appliance.csr");
    Ok(config)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))
}

/// This machine's host name, for default URLs and certificate names.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn operator() -> String {
    let uid = nix::unistd::Uid::current();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    format!("uid={uid}({name}) via migctl")
}

/// The public keys recorded at `init`.
pub fn public_keys(config: &Config) -> Result<(Vec<u8>, Vec<u8>)> {
    let path = config.state_dir.join(PUBLIC_KEYS_FILE);
    let keys: Value = serde_json::from_slice(&read(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let field = |name: &str| -> Result<Vec<u8>> {
        keys[name]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| anyhow!("{} has no {name}", path.display()))
    };
    Ok((field("tls_spki_der_hex")?, field("audit_spki_der_hex")?))
}

/// `migctl csr`: through migd when it runs (it holds the TPM), else from the TPM directly.
pub fn csr(config: &Config, subject: &str) -> Result<String> {
    match admin_call(
        config,
        proto::Csr {
            subject: subject.to_owned(),
        },
    ) {
        Ok(answer) => Ok(answer.pem),
        Err(AdminFailure::NotRunning(_)) => {
            let tpm = Tpm::connect(&mig::service::tpm_settings(config)?)?;
            tpm.load(&config.state_dir)?;
            let host = config.appliance.fhir_base.host().to_owned();
            Ok(mig::tls::csr::appliance_csr(
                tpm.signer(KeyRole::Tls)?,
                subject,
                &[host],
            )?)
        }
        Err(AdminFailure::Refused(e)) => Err(e),
    }
}

/// `migctl cert install`: the chain must hold the TPM's TLS key, be in date and build.
pub fn install_certificate(config: &Config, pem: &[u8]) -> Result<PathBuf> {
    let (tls_key, _) = public_keys(config)?;
    Ok(registry::install_appliance_chain(
        &config.state_dir,
        pem,
        &PublicKeyOnly(tls_key),
        std::time::SystemTime::now(),
    )?)
}

fn list(text: &str, flag: &str) -> Result<BTreeSet<String>> {
    let items: BTreeSet<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        bail!("{flag}: empty list");
    }
    Ok(items)
}

fn sections(text: &str, flag: &str) -> Result<BTreeSet<Section>> {
    if text.trim() == "all" {
        return Ok(Section::ALL.into_iter().collect());
    }
    list(text, flag)?
        .iter()
        .map(|name| {
            Section::from_name(name).ok_or_else(|| {
                let known: Vec<_> = Section::ALL.iter().map(|s| s.name()).collect();
                anyhow!(
                    "{flag}: unknown section {name:?} (known: {}, or all)",
                    known.join(", ")
                )
            })
        })
        .collect()
}

fn roles(text: &str, flag: &str) -> Result<RoleSet> {
    if text.trim() == "*" {
        return Ok(RoleSet::Any);
    }
    let roles = list(text, flag)?;
    if let Some(bad) = roles
        .iter()
        .find(|r| !r.chars().all(|c| c.is_ascii_alphanumeric()) || r.len() > 8)
    {
        bail!("{flag}: {bad:?} is not an SDS job role code such as R8000");
    }
    Ok(RoleSet::Only(roles))
}

/// Builds a partner record from `partner add` flags, refusing anything malformed.
pub fn partner_from_args(args: &PartnerAddArgs) -> Result<Partner> {
    let ods = OdsCode::from_str(&args.ods)
        .map_err(|e| anyhow!("--ods: {}", e.0))?
        .to_string();
    let partner_type = PartnerType::from_name(&args.partner_type).ok_or_else(|| {
        let known: Vec<_> = PartnerType::iter().map(PartnerType::name).collect();
        anyhow!(
            "--type: unknown partner type {:?} (known: {})",
            args.partner_type,
            known.join(", ")
        )
    })?;
    let identity = match (&args.cert, &args.spki_sha256) {
        (Some(file), None) => {
            use rustls_pki_types::pem::PemObject;
            let pem = read(file)?;
            let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .next()
                .ok_or_else(|| anyhow!("--cert: {} holds no PEM certificate", file.display()))?
                .map_err(|e| anyhow!("--cert: {}: {e}", file.display()))?;
            let identity = registry::cert_identity(&der).ok_or_else(|| {
                anyhow!(
                    "--cert: {} is not a readable X.509 certificate",
                    file.display()
                )
            })?;
            CertificateMatch::SpkiSha256(identity.spki_sha256)
        }
        (None, Some(hex_text)) => {
            let bytes = hex::decode(hex_text.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| anyhow!("--spki-sha256: need 64 hex digits"))?;
            let mut pin = [0u8; 32];
            pin.copy_from_slice(&bytes);
            CertificateMatch::SpkiSha256(pin)
        }
        _ => bail!("give exactly one of --cert and --spki-sha256"),
    };
    let sites = match &args.sites {
        None => BTreeSet::new(),
        Some(text) => list(text, "--sites")?
            .into_iter()
            .map(|s| {
                OdsCode::from_str(&s)
                    .map(|o| o.to_string())
                    .map_err(|e| anyhow!("--sites: {}", e.0))
            })
            .collect::<Result<_>>()?,
    };
    let expires = match &args.expires {
        None => None,
        Some(text) => Some(
            time::Date::parse(
                text,
                &time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map_err(|_| anyhow!("--expires: {text:?} is not a date like 2027-03-31"))?,
        ),
    };
    if args.name.trim().is_empty() {
        bail!("--name: empty");
    }
    Ok(Partner {
        agreement: Agreement {
            ods,
            name: args.name.trim().to_owned(),
            partner_type,
            sites,
            sections: sections(&args.sections, "--sections")?,
            roles: roles(&args.roles, "--roles")?,
            override_roles: match &args.override_roles {
                Some(text) => roles(text, "--override-roles")?,
                None => RoleSet::none(),
            },
            override_sections: match &args.override_sections {
                Some(text) => Some(sections(text, "--override-sections")?),
                None => None,
            },
            expires,
            attested_permission: args.attested_permission,
        },
        identity,
    })
}

fn describe_partner(partner: &Partner) -> String {
    let a = &partner.agreement;
    let roles = |r: &RoleSet| match r {
        RoleSet::Any => "*".to_owned(),
        RoleSet::Only(set) if set.is_empty() => "none".to_owned(),
        RoleSet::Only(set) => set.iter().cloned().collect::<Vec<_>>().join(","),
    };
    let sections: Vec<_> = a.sections.iter().map(|s| s.name()).collect();
    let identity = match &partner.identity {
        CertificateMatch::SpkiSha256(pin) => format!("spki-sha256 {}", hex::encode(pin)),
    };
    format!(
        "{}\t{}\t{}\tsections={}\troles={}\toverride-roles={}\tpermission={}\texpires={}\t{}",
        a.ods,
        a.name,
        a.partner_type.name(),
        sections.join(","),
        roles(&a.roles),
        roles(&a.override_roles),
        if a.attested_permission {
            "attested"
        } else {
            "per-request"
        },
        a.expires
            .map(|d| d.to_string())
            .unwrap_or_else(|| "never".into()),
        identity
    )
}

/// Why an admin call failed.
pub enum AdminFailure {
    /// migd is not running (no socket, or nobody listening).
    NotRunning(String),
    /// migd answered with an error, or the exchange broke.
    Refused(anyhow::Error),
}

impl From<AdminFailure> for anyhow::Error {
    fn from(failure: AdminFailure) -> anyhow::Error {
        match failure {
            AdminFailure::NotRunning(why) => {
                anyhow!("migd is not running ({why}); start it first (systemctl start migd)")
            }
            AdminFailure::Refused(e) => e,
        }
    }
}

/// One request on `client`; migd's error answer becomes its message.
fn call<C: AdminCommand>(client: &mut AdminClient, request: C) -> Result<C::Answer, AdminFailure> {
    match client.call(request) {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(AdminFailure::Refused(anyhow!(error.message))),
        Err(e) => Err(AdminFailure::Refused(e.into())),
    }
}

fn connect(config: &Config) -> Result<AdminClient, AdminFailure> {
    AdminClient::connect(&config.admin.socket).map_err(|e| match e {
        AdminClientError::NotRunning { .. } => {
            AdminFailure::NotRunning(mig::error::Chain(&e).to_string())
        }
        other => AdminFailure::Refused(other.into()),
    })
}

/// One request to migd.
pub fn admin_call<C: AdminCommand>(config: &Config, request: C) -> Result<C::Answer, AdminFailure> {
    call(&mut connect(config)?, request)
}

/// The NDJSON files named: files as given, directories' `*.ndjson` with Patient first.
fn ndjson_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = mig::replica::ndjson_import_order(path)
                .with_context(|| format!("cannot list {}", path.display()))?;
            if found.is_empty() {
                bail!("{} holds no .ndjson files", path.display());
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    // Patients first, as for a folder: every other resource names one, and a resource whose
    // patient is neither stored nor in its own batch is refused.
    files.sort_by_key(|p| p.file_name().is_none_or(|n| n != "Patient.ndjson"));
    Ok(files)
}

/// `migctl import`: each file is one atomic batch, sent in chunks of whole lines.
fn import(config: &Config, paths: &[PathBuf]) -> Result<ExitCode> {
    let files = ndjson_files(paths)?;
    let mut total = 0u64;
    for file in &files {
        let upserted = import_file(config, file).with_context(|| file.display().to_string())?;
        println!("{}: {upserted} resources", file.display());
        total += upserted;
    }
    println!("imported {total} resources from {} files", files.len());
    Ok(ExitCode::SUCCESS)
}

pub fn import_file(config: &Config, file: &Path) -> Result<u64> {
    let input = std::fs::File::open(file).with_context(|| "cannot open".to_string())?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, input);
    let mut client = connect(config)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    call(&mut client, proto::ImportBegin { name })?;
    let mut chunk = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = input.read_until(b'\n', &mut line).context("reading")?;
        if read > 0 {
            let text = String::from_utf8(line.clone())
                .map_err(|_| anyhow!("a line is not valid UTF-8"))?;
            chunk.push_str(&text);
            if !text.ends_with('\n') {
                chunk.push('\n');
            }
        }
        if (read == 0 && !chunk.is_empty()) || chunk.len() >= IMPORT_CHUNK_BYTES {
            call(
                &mut client,
                proto::ImportChunk {
                    ndjson: std::mem::take(&mut chunk),
                },
            )?;
        }
        if read == 0 {
            break;
        }
    }
    let done = call(&mut client, proto::ImportCommit {})?;
    Ok(done.summary.upserted)
}

fn audit(config: &Config, command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify => {
            let answer = match admin_call(config, proto::AuditVerify {}) {
                Ok(answer) => answer,
                // migd refuses to start on a trail that does not verify: say why without it.
                Err(AdminFailure::NotRunning(_)) => verify_offline(config)?,
                Err(AdminFailure::Refused(e)) => return Err(e),
            };
            print!("{}", verify_text(&answer));
            Ok(if answer.problem.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Export { since, out } => {
            let answer = admin_call(config, proto::AuditExport { since })?;
            let ndjson = answer.ndjson;
            match out {
                Some(path) => {
                    registry::write_atomic(&path, ndjson.as_bytes())?;
                    eprintln!("wrote {} AuditEvents to {}", answer.count, path.display());
                }
                None => std::io::stdout().write_all(ndjson.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Patient { nhs_number } => {
            let answer = admin_call(
                config,
                proto::AuditPatient {
                    nhs_number: nhs_number.clone(),
                },
            )?;
            if answer.accesses.is_empty() {
                println!("no recorded access to {}", shown(&nhs_number));
            }
            for a in answer.accesses {
                println!("{}", access_line(&a));
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::NewTrail { reason } => new_trail(config, &reason),
    }
}

/// A value from the audit trail as the terminal may show it (see `mig::audit::escape_text`).
fn shown(text: &str) -> String {
    mig::audit::escape_text(text)
}

/// An optional text of an admin answer, escaped, or `absent`.
fn field(value: &Option<String>, absent: &str) -> String {
    value
        .as_deref()
        .map(shown)
        .unwrap_or_else(|| absent.to_owned())
}

/// One line of `audit patient`.
fn access_line(a: &proto::AccessSummary) -> String {
    let decision = match a.decision {
        proto::Decision::Permit => "permit",
        proto::Decision::Refuse => "refuse",
    };
    let basis = match a.basis {
        proto::PermissionBasis::Granted => "granted",
        proto::PermissionBasis::StandingConsent => "standing-consent",
        proto::PermissionBasis::Override => "override",
        proto::PermissionBasis::Attested => "attested",
        proto::PermissionBasis::None => "none",
    };
    format!(
        "{}\t{decision}\tpartner {}\tasid {}\torg {}\tuser {}\trole {}\t{}\tbasis {basis}{}\tsections {}",
        shown(&a.time),
        field(&a.partner_ods, "-"),
        field(&a.from_asid, "-"),
        field(&a.requesting_org_ods, "-"),
        field(&a.sds_user_id, "-"),
        field(&a.job_role, "-"),
        field(&a.error_code, "released"),
        a.override_reason
            .as_deref()
            .map(|r| format!(" ({})", shown(r)))
            .unwrap_or_default(),
        a.sections
            .iter()
            .map(|s| shown(s))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// One line of `alerts list`.
fn alert_line(a: &proto::Alert) -> String {
    format!(
        "#{}\t{}\tpartner {}\tuser {} ({})\torg {}\tpatient {}\t{}: \"{}\"{}",
        a.id,
        shown(&a.time),
        field(&a.partner_ods, "-"),
        field(&a.sds_user_id, "-"),
        field(&a.job_role, "-"),
        field(&a.requesting_org_ods, "-"),
        field(&a.nhs_number, "-"),
        field(&a.reason, "-"),
        field(&a.justification, ""),
        match &a.acknowledged {
            None => String::new(),
            Some(ack) => format!(
                "\tacknowledged by {} ({})",
                shown(&ack.operator),
                shown(&ack.note)
            ),
        },
    )
}

/// What `audit verify` prints for an answer (migd's, or `verify_offline`'s of the same shape).
fn verify_text(answer: &proto::AuditVerifyAnswer) -> String {
    let report = &answer.report;
    let mut out = format!(
        "{} records, {} checkpoints verified, chain head {}\n",
        report.records,
        report.checkpoints_verified,
        report.chain_head.as_deref().unwrap_or("-")
    );
    if let Some((first, last)) = report.uncovered {
        out.push_str(&format!(
            "warning: records {first} to {last} are not yet covered by a signed checkpoint\n"
        ));
    }
    if let Some(proto::CounterCheck { checkpoint, tpm }) = report.counter {
        let note = if checkpoint == tpm {
            " (in step)"
        } else if checkpoint == tpm + 1 {
            " (the checkpoint is one ahead: its increment was interrupted; migd completes it)"
        } else {
            ""
        };
        out.push_str(&format!(
            "TPM audit counter: last checkpoint {checkpoint}, TPM {tpm}{note}\n"
        ));
    }
    match &answer.problem {
        None => out.push_str("audit trail verified\n"),
        Some(problem) => out.push_str(&format!(
            "AUDIT TRAIL FAILED VERIFICATION at record {}: {problem}\n\
             see docs/operations.md, 'Audit trail recovery'\n",
            answer.first_bad_record.unwrap_or(0)
        )),
    }
    out
}

/// The TPM, its audit key and the audit database key, for commands that run without migd.
fn open_audit_offline(config: &Config) -> Result<(Tpm, mig::service::DatabaseKey, Vec<u8>)> {
    let tpm = Tpm::connect(&mig::service::tpm_settings(config)?)?;
    tpm.load(&config.state_dir)?;
    let (_, audit_key) = mig::service::unseal_keys(&tpm)?;
    let spki = tpm.public_key_spki_der(KeyRole::Audit)?;
    Ok((tpm, audit_key, spki))
}

/// `audit verify` with migd stopped: the same checks, straight from the TPM and the file.
fn verify_offline(config: &Config) -> Result<proto::AuditVerifyAnswer> {
    let (tpm, key, spki) = open_audit_offline(config)?;
    let path = config.state_dir.join(AUDIT_FILE);
    if !path.exists() {
        bail!(
            "the audit database {} is missing; see docs/operations.md, 'Audit trail recovery'",
            path.display()
        );
    }
    let report = mig::audit::AuditReader::open(&path, &key)?
        .verify_with_counter(&spki, tpm.audit_counter().as_ref())?;
    Ok(mig::admin::answers::verify_answer(&report))
}

/// `audit new-trail`: with migd stopped, archive a trail that does not verify and start a new
/// one whose first record names the old one, what was wrong with it, and the operator.
fn new_trail(config: &Config, reason: &str) -> Result<ExitCode> {
    let reason = reason.trim();
    if reason.is_empty() {
        bail!("--reason: say why a new trail is started (it is recorded)");
    }
    match admin_call(config, proto::Status {}) {
        Err(AdminFailure::NotRunning(_)) => {}
        _ => bail!(
            "migd is running; stop it first (systemctl stop migd): a new trail is started only \
             while migd is stopped"
        ),
    }
    let (tpm, key, spki) = open_audit_offline(config)?;
    let counter = tpm.audit_counter();
    let path = config.state_dir.join(AUDIT_FILE);
    let verdict = if path.exists() {
        match mig::audit::AuditReader::open(&path, &key)
            .and_then(|r| r.verify_with_counter(&spki, counter.as_ref()))
        {
            Ok(report) => match report.problem {
                None => bail!(
                    "the audit trail {} verifies: there is nothing to recover, and a good trail \
                     is never replaced",
                    path.display()
                ),
                Some(problem) => format!("it did not verify: {problem}"),
            },
            Err(e) => format!("it could not be read: {}", mig::error::Chain(&e)),
        }
    } else {
        "it was missing".to_owned()
    };
    let archive = if path.exists() {
        Some(archive_trail(&config.state_dir, &path)?)
    } else {
        None
    };
    let tpm_counter = counter.read()?;
    let log = mig::audit::AuditLog::create(
        &path,
        &key,
        tpm.signer(KeyRole::Audit)?,
        counter,
        mig::audit::AuditOptions::default(),
    )?;
    let archived = match &archive {
        Some(file) => format!("archived as {}", file.display()),
        None => "nothing to archive".to_owned(),
    };
    log.append_blocking(mig::audit::AuditRecord::admin_action(
        &operator(),
        &format!(
            "audit new-trail: the previous trail was set aside because {verdict}; {archived}; \
             TPM audit counter at {tpm_counter}; reason: {reason}"
        ),
        mig::audit::Decision::Permit,
    ))?;
    log.shutdown_blocking()?;
    println!("previous audit trail: {verdict}");
    println!("{archived}");
    println!(
        "started a new audit trail in {} (its first record says why); migd can start",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Moves the trail (and its WAL and shared-memory files) into `STATE/audit-archive/`.
fn archive_trail(state: &Path, path: &Path) -> Result<PathBuf> {
    let dir = state.join("audit-archive");
    create_private_dir(&dir)?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| anyhow!("formatting the archive time: {e}"))?;
    let target = dir.join(format!("audit-{stamp}.db"));
    if target.exists() {
        bail!("{} exists; try again in a second", target.display());
    }
    for suffix in ["-wal", "-shm", ""] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = target.as_os_str().to_owned();
        to.push(suffix);
        let from = PathBuf::from(from);
        if from.exists() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to the archive", from.display()))?;
        }
    }
    Ok(target)
}

fn alerts(config: &Config, command: AlertsCommand) -> Result<ExitCode> {
    match command {
        AlertsCommand::List { all } => {
            let answer = admin_call(config, proto::AlertsList { all })?;
            if answer.alerts.is_empty() {
                println!("no {}alerts", if all { "" } else { "unacknowledged " });
            }
            for a in answer.alerts {
                println!("{}", alert_line(&a));
            }
            Ok(ExitCode::SUCCESS)
        }
        AlertsCommand::Ack { id, note } => {
            admin_call(config, proto::AlertsAck { id, note })?;
            println!("alert #{id} acknowledged");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `migctl status`: what the running appliance is doing, in plain words (the console's status
/// screen shows exactly this).
fn status(config: &Config) -> Result<ExitCode> {
    println!(
        "{} ({}), ASID {}",
        config.appliance.name, config.appliance.ods, config.appliance.asid
    );
    println!("Certificate:  {}", certificate_expiry(config));
    let answer = match admin_call(config, proto::Status {}) {
        Ok(answer) => answer,
        Err(AdminFailure::NotRunning(why)) => {
            println!("Health:       NOT RUNNING: the appliance service does not answer ({why}).");
            return Ok(ExitCode::FAILURE);
        }
        Err(AdminFailure::Refused(e)) => return Err(e),
    };
    let (ready, healthy) = (answer.ready, answer.healthy);
    println!(
        "Health:       {}",
        match (ready, healthy) {
            (true, true) => "good: TPM, replica, audit trail and listeners all working".to_owned(),
            (true, false) =>
                "PROBLEM: running, but its health check fails (TPM or replica)".to_owned(),
            _ => "starting up".to_owned(),
        }
    );
    println!(
        "Running:      migd {}, up {}",
        answer.version,
        duration_words(answer.uptime_seconds)
    );
    match answer.replica {
        Some(r) => println!(
            "Records:      {} patients, {} resources{}",
            r.patients,
            r.resources,
            match r.records_pending {
                0 => String::new(),
                n => format!(" ({n} patients' records being packed for fast reading)"),
            }
        ),
        None => println!("Records:      unknown (the replica could not be read)"),
    }
    println!(
        "Last import:  {}",
        answer.last_import.as_deref().unwrap_or("none yet")
    );
    println!(
        "Alerts:       {}",
        match answer.alerts_waiting {
            Some(0) => "none waiting".to_owned(),
            Some(n) => format!("{n} waiting for the privacy officer (migctl alerts list)"),
            None => "unknown (the audit trail could not be read)".to_owned(),
        }
    );
    if answer.audit.failed_commits > 0 {
        println!(
            "Audit:        PROBLEM: {} audit writes failed since start",
            answer.audit.failed_commits
        );
    }
    println!(
        "Partners:     {} registered, {} partner CRLs, {} clinical systems",
        answer.partners.len(),
        answer.crls,
        answer.upstreams
    );
    for p in &answer.partners {
        println!(
            "              {} {} ({}){}",
            p.ods,
            p.name,
            p.partner_type,
            p.expires
                .as_deref()
                .map(|d| format!(", agreement ends {d}"))
                .unwrap_or_default()
        );
    }
    let problems = &answer.registry_problems;
    if !problems.is_empty() {
        println!("registry files not applied: {}", problems.len());
    }
    for p in problems {
        // Quoted with escapes: the text comes from file names and contents.
        println!("  {:?}: {:?}", p.file, p.consequence);
    }
    Ok(if ready && healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The appliance certificate's expiry in words, read from the state directory.
fn certificate_expiry(config: &Config) -> String {
    use rustls_pki_types::pem::PemObject;
    let Ok(pem) = std::fs::read(config.state_dir.join(registry::CHAIN_FILE)) else {
        return "NOT INSTALLED".into();
    };
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(|c| c.ok())
        .and_then(|der| registry::cert_identity(&der));
    let Some(id) = leaf else {
        return "UNREADABLE (reinstall it with migctl cert install)".into();
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let date = time::OffsetDateTime::from_unix_timestamp(id.not_after)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "?".into());
    let days = (id.not_after - now).div_euclid(86_400);
    match days {
        d if d < 0 => format!("EXPIRED on {date}: partners cannot connect"),
        d if d < 30 => format!("expires on {date}, in {d} days: RENEW IT NOW"),
        d => format!("valid until {date} ({d} days)"),
    }
}

fn duration_words(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} seconds"),
        s if s < 7_200 => format!("{} minutes", s / 60),
        s if s < 172_800 => format!("{} hours", s / 3_600),
        s => format!("{} days", s / 86_400),
    }
}

pub mod check;
pub mod extract;
pub mod update;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn partner_add_attested_permission_is_registered_and_listed() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "migctl",
                "partner",
                "add",
                "--ods",
                "RYA",
                "--name",
                "Community Trust",
                "--type",
                "community-health",
                "--spki-sha256",
            ];
            let pin = "ab".repeat(32);
            argv.push(&pin);
            argv.extend(["--sections", "all", "--roles", "*"]);
            argv.extend(extra);
            match crate::cli::Cli::try_parse_from(argv).unwrap().command {
                crate::cli::Command::Partner(crate::cli::PartnerCommand::Add(args)) => {
                    partner_from_args(&args).unwrap()
                }
                other => panic!("{other:?}"),
            }
        };
        let attested = parse(&["--attested-permission"]);
        assert!(attested.agreement.attested_permission);
        assert!(describe_partner(&attested).contains("\tpermission=attested\t"));
        let asked = parse(&[]);
        assert!(!asked.agreement.attested_permission);
        assert!(describe_partner(&asked).contains("\tpermission=per-request\t"));
    }

    /// Every partner-supplied field at once, holding a line break, a screen clear, an OSC
    /// title change, a C1 CSI and a bidi override.
    fn nasty() -> String {
        "x\nFORGED\tline\r\x1b[2J\x1b]0;pwned\x07\u{9b}1m\u{202e}".to_owned()
    }

    fn assert_one_clean_line(line: &str) {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        assert!(
            !line.contains('\x1b') && !line.contains('\u{9b}'),
            "{line:?}"
        );
        assert!(
            !line.contains('\u{202e}') && !line.contains('\x07'),
            "{line:?}"
        );
        assert!(line.contains("\\nFORGED"), "{line:?}");
    }

    #[test]
    fn audit_patient_escapes_partner_values() {
        let n = nasty();
        let some = Some(n.clone());
        let access = proto::AccessSummary {
            seq: 1,
            time: "2026-12-06T09:00:00.000000Z".into(),
            partner_ods: some.clone(),
            requesting_org_ods: some.clone(),
            sds_user_id: some.clone(),
            sds_role_profile_id: some.clone(),
            job_role: some.clone(),
            interaction_id: some.clone(),
            from_asid: some.clone(),
            basis: proto::PermissionBasis::Override,
            override_reason: some,
            decision: proto::Decision::Permit,
            error_code: None,
            sections: vec![n],
        };
        let line = access_line(&access);
        // Only the separators migctl itself puts between fields remain as tabs.
        assert_eq!(line.matches('\t').count(), 9, "{line:?}");
        assert_one_clean_line(&line);
    }

    #[test]
    fn alerts_list_escapes_partner_values() {
        let n = nasty();
        let some = Some(n.clone());
        let alert = proto::Alert {
            id: 3,
            seq: 4,
            time: "2026-12-06T09:00:00.000000Z".into(),
            partner_ods: some.clone(),
            sds_user_id: some.clone(),
            sds_role_profile_id: some.clone(),
            job_role: some.clone(),
            requesting_org_ods: some.clone(),
            nhs_number: some.clone(),
            reason: some.clone(),
            justification: some,
            acknowledged: Some(proto::Acknowledgement {
                seq: 5,
                time: "t".into(),
                operator: n.clone(),
                note: n,
            }),
        };
        let line = alert_line(&alert);
        assert_eq!(line.matches('\t').count(), 7, "{line:?}");
        assert_one_clean_line(&line);
    }
}
