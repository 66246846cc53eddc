//! The command line of `migctl` (SPEC §9): flag names are a published contract.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default config path; used only when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/mig/migd.toml";

/// The CA that signs update bundles, as installed in the image (default of `--keyring`).
pub const DEFAULT_UPDATE_KEYRING: &str = "/usr/lib/mig/rauc-keyring.pem";

#[derive(Debug, Parser)]
#[command(
    name = "migctl",
    version,
    about = "Provision and administer the MIG appliance"
)]
pub struct Cli {
    /// The appliance's config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the appliance: config, state directory, TPM keys, sealed replica key, empty replica.
    Init(InitArgs),
    /// Write a certificate signing request for the appliance, signed by its TPM key.
    Csr {
        /// Subject, e.g. "CN=mig.a81001.nhs.uk,O=The Surgery,C=GB".
        #[arg(long)]
        subject: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// The appliance's certificate.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Partner certificate authorities.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Certificate revocation lists.
    #[command(subcommand)]
    Crl(CrlCommand),
    /// The practice's clinical system that feeds the replica.
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// Partners and their data sharing agreements.
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// Import FHIR Bulk Data NDJSON files (each file is one atomic batch).
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Privacy-officer alerts raised by overrides.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Statistical extracts (anonymous, disclosure-controlled, signed).
    #[command(subcommand)]
    Extract(ExtractCommand),
    /// What the running appliance is doing.
    Status,
    /// Named health checks, each ok/warn/fail with what to do.
    Check,
    /// Signed A/B updates of the appliance image (RAUC bundles).
    #[command(subcommand)]
    Update(UpdateCommand),
    /// The first-boot wizard for the appliance console.
    Console {
        /// Where the wizard keeps its progress, so an interrupted run resumes.
        #[arg(long)]
        progress: Option<PathBuf>,
    },
    /// A complete development appliance on this machine (built with the `demo` feature only).
    #[cfg(feature = "demo")]
    Demo {
        /// Where the demo keeps everything (swtpm state, keys, certificates, replica).
        #[arg(long, default_value = "demo-state")]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        patients: usize,
        /// Start everything, print the commands, and exit leaving migd and swtpm running.
        #[arg(long)]
        detach: bool,
    },
    /// Print a fresh GP Connect access token for trying the demo appliance (valid 5 minutes).
    DemoToken {
        /// The requesting organisation's ODS code.
        #[arg(long)]
        ods: String,
        #[arg(long, default_value = "R8000")]
        role: String,
        /// Send permission_to_view=override with this reason.
        #[arg(long)]
        r#override: Option<String>,
        #[arg(long, requires = "override")]
        justification: Option<String>,
        /// Leave permission_to_view out (relies on a standing consent).
        #[arg(long, conflicts_with = "override")]
        no_permission: bool,
    },
    /// Write a synthetic practice as FHIR Bulk Data NDJSON.
    DemoData {
        #[arg(long)]
        patients: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The practice's ODS code.
    #[arg(long)]
    pub ods: String,
    /// The practice's name.
    #[arg(long)]
    pub name: String,
    /// This appliance's ASID (12 digits).
    #[arg(long)]
    pub asid: String,
    /// TPM access: device:/dev/tpmrm0, swtpm:host=H,port=P or tabrmd.
    #[arg(long)]
    pub tcti: String,
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: String,
    #[arg(long)]
    pub upstream_listen: Option<String>,
    #[arg(long, default_value = "/run/mig/admin.sock")]
    pub admin_socket: PathBuf,
    /// The FHIR base URL partners use (the JWT audience); default https://<hostname>:8443/fhir.
    #[arg(long)]
    pub fhir_base: Option<String>,
    #[arg(long, default_value = "sha256:7")]
    pub pcrs: String,
    /// The practice's sub-ICB location code (former CCG code, e.g. 16C), for statistical extracts.
    #[arg(long)]
    pub sub_icb: Option<String>,
    /// Where migd serves fleet metrics (loopback; default 127.0.0.1:9464), or `off`.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Install the issued chain (PEM, leaf first) after checking it matches the TPM key.
    Install { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a partner CA (PEM).
    Add { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Install a CRL (PEM or DER) issued by a trusted partner CA.
    Install { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Register the clinical system's client certificate.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Register a partner and its data sharing agreement.
    Add(Box<PartnerAddArgs>),
    /// List registered partners.
    List,
    /// Remove a partner.
    Remove { ods: String },
}

#[derive(Debug, Args)]
pub struct PartnerAddArgs {
    #[arg(long)]
    pub ods: String,
    #[arg(long)]
    pub name: String,
    /// ambulance, out-of-hours, community-health, social-care, acute or mental-health.
    #[arg(long = "type")]
    pub partner_type: String,
    /// The partner's client certificate (PEM), pinned by its public key.
    #[arg(
        long,
        conflicts_with = "spki_sha256",
        required_unless_present = "spki_sha256"
    )]
    pub cert: Option<PathBuf>,
    /// SHA-256 of the partner certificate's SubjectPublicKeyInfo (64 hex digits).
    #[arg(long)]
    pub spki_sha256: Option<String>,
    /// Comma-separated sections, or `all`.
    #[arg(long)]
    pub sections: String,
    /// Comma-separated SDS job role codes, or `*`.
    #[arg(long)]
    pub roles: String,
    /// Roles that may override; none if absent.
    #[arg(long)]
    pub override_roles: Option<String>,
    /// Sections released under an override; default core, end-of-life, communication-preferences,
    /// risks-and-warnings.
    #[arg(long)]
    pub override_sections: Option<String>,
    /// Other ODS codes the partner may send as requesting organisation.
    #[arg(long)]
    pub sites: Option<String>,
    /// Last day of the agreement, YYYY-MM-DD.
    #[arg(long)]
    pub expires: Option<String>,
    /// The agreement obliges the partner's users to ask the patient at the point of care, so
    /// its requests may leave the permission_to_view claim out (audited as `attested`).
    #[arg(long)]
    pub attested_permission: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Prove the hash chain, the checkpoint signatures and the TPM audit counter; name the
    /// first bad record. Works with migd stopped too.
    Verify,
    /// Write FHIR AuditEvent NDJSON.
    Export {
        /// Only records at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Output file; standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Who viewed a patient's record, when, and on what basis.
    Patient { nhs_number: String },
    /// Recovery, with migd stopped: archive a trail that does not verify (cut back, rolled
    /// back, missing or unreadable) and start a new one whose first record says so.
    NewTrail {
        /// Why, in words (recorded in the new trail's first record).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Unacknowledged alerts (all with --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an alert with a note.
    Ack {
        id: u64,
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExtractCommand {
    /// Count the fit notes issued in a period (both dates included) into FILE.csv, with its
    /// signature FILE.csv.sig.
    FitNotes {
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (not after today).
        #[arg(long)]
        to: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check FILE.csv against FILE.csv.sig and say which appliance signed it. By default the
    /// signature must be by this appliance's audit key; elsewhere give --key or --fingerprint.
    Verify {
        file: PathBuf,
        /// The signature file (default FILE.sig).
        #[arg(long)]
        sig: Option<PathBuf>,
        /// The signing appliance's audit public key (PEM or DER SubjectPublicKeyInfo).
        #[arg(long, conflicts_with = "fingerprint")]
        key: Option<PathBuf>,
        /// SHA-256 of the signing appliance's audit public key (64 hex digits).
        #[arg(long)]
        fingerprint: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Check a signed update bundle, then write it to the inactive slot (it runs after a restart).
    Install {
        file: PathBuf,
        /// The bundle signers' CA (PEM).
        #[arg(long, default_value = DEFAULT_UPDATE_KEYRING)]
        keyring: PathBuf,
    },
    /// The running version and slot, and what boots next.
    Status,
}
