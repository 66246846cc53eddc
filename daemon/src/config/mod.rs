//! migd's configuration (`/etc/mig/migd.toml`, SPEC §10): TOML read with unknown keys refused,
//! then validated into a typed [`Config`] before anything starts. Every error names the file,
//! the key and the line. Reference: docs/operations.md.
//!
//! Validates: types, closed key sets, value syntax (ODS, ASID, URL, addresses, PCRs, TCTI) and
//! ranges. Does not check that paths exist or that the TPM answers: that is start-up's job.

mod locate;
mod raw;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use values::{Asid, CrlExpiredPolicy, FhirBase, InvalidValue, OdsCode, PcrSelection, Tcti};

use crate::system::atomic_file::{self, Existing};
use locate::{line_of, Locator};
use raw::{
    RawAdmin, RawAppliance, RawAudit, RawConfig, RawExtracts, RawLimits, RawMetrics, RawPartnerApi,
    RawSensitive, RawService, RawTpm, RawUpstream,
};

/// Where migd and migctl look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mig/migd.toml";
/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/mig/admin.sock";
/// Default group allowed on the admin socket.
pub const DEFAULT_ADMIN_GROUP: &str = "mig-admin";
/// Default partner API listen address.
pub const DEFAULT_PARTNER_LISTEN: &str = "0.0.0.0:8443";
/// Default metrics listen address (SPEC §14: local, off the partner network).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default PCR selection for sealing the replica key.
pub const DEFAULT_PCRS: &str = "sha256:7";
/// Largest allowed `audit.checkpoint_every_records` (SPEC §8: at least every 1,000 records).
pub const MAX_CHECKPOINT_RECORDS: u64 = 1000;
/// Largest allowed `audit.checkpoint_every_seconds` (SPEC §8: at least every 60 s).
pub const MAX_CHECKPOINT_SECONDS: u64 = 60;

/// Why a config could not be read, understood, or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML for this schema (syntax, unknown key, wrong type, missing key).
    #[error("{}: {}{}{message}", path.display(), fmt_line(*line), fmt_key(key.as_deref()))]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Dotted key path, where one could be found.
        key: Option<String>,
        /// 1-based line number, where known.
        line: Option<usize>,
        /// What is wrong, in toml's words.
        message: String,
    },
    /// A value has the right TOML type but breaks a rule (syntax of a code, range).
    #[error("{}: {}key `{key}`: {rule}", path.display(), fmt_line(*line))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key path.
        key: String,
        /// 1-based line number, where the key is written (absent for a defaulted key).
        line: Option<usize>,
        /// The rule it breaks: part of this message, not a cause.
        rule: InvalidValue,
    },
    /// The config could not be turned into TOML.
    #[error("cannot serialise the config")]
    Serialize {
        /// toml's error.
        source: toml::ser::Error,
    },
    /// The config file already exists; `write_new` never overwrites.
    #[error("config file {} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The config file.
        path: PathBuf,
    },
    /// Writing the new config file failed.
    #[error("cannot write config file {}: {operation}", path.display())]
    Write {
        /// The config file.
        path: PathBuf,
        /// The step that failed.
        operation: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn fmt_line(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn fmt_key(key: Option<&str>) -> String {
    key.map(|k| format!("key `{k}`: ")).unwrap_or_default()
}

/// This appliance's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceConfig {
    /// The practice's ODS code.
    pub ods: OdsCode,
    /// The practice's name, as shown in the Organization resource.
    pub name: String,
    /// This appliance's ASID: partners send it as `Ssp-To`.
    pub asid: Asid,
    /// The FHIR base URL: partners' JWT `aud` must equal it.
    pub fhir_base: FhirBase,
}

/// The TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    /// How to reach it.
    pub tcti: Tcti,
    /// PCRs the replica key is sealed to.
    pub pcrs: PcrSelection,
    /// File holding the owner hierarchy auth value, if the owner hierarchy has one.
    pub owner_auth_file: Option<PathBuf>,
}

/// Resource limits of the partner listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// TLS handshakes in progress at once (each costs a TPM signature).
    pub max_concurrent_handshakes: usize,
    /// A handshake that takes longer is dropped.
    pub handshake_timeout: Duration,
    /// Request headers must arrive within this time.
    pub header_read_timeout: Duration,
    /// Largest request header block.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Requests in progress at once from one partner (by ODS code).
    pub per_partner_concurrency: usize,
    /// A connection must deliver its whole ClientHello within this time (before it holds a
    /// handshake slot or TPM time).
    pub client_hello_timeout: Duration,
    /// Open connections per source address (IPv4, or IPv6 /64).
    pub max_connections_per_source: usize,
    /// Open connections per partner.
    pub max_connections_per_partner: usize,
    /// Full handshakes per second per source address, and the burst allowed above it.
    pub handshake_rate_per_source: u32,
    pub handshake_burst_per_source: u32,
    /// Connections are closed gracefully at this age.
    pub max_connection_age: Duration,
}

/// The partner FHIR API listener (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerApiConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Also accept TLS 1.2 (ECDHE + AEAD suites only).
    pub tls12: bool,
    /// What to do when a CRL is past its nextUpdate.
    pub crl_expired: CrlExpiredPolicy,
    /// Resource limits.
    pub limits: Limits,
}

/// The upstream (clinical system) listener; absent = no listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
}

/// The admin socket (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Group whose members may use it (besides root and migd's own user).
    pub group: String,
}

/// Audit checkpoints (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Sign a checkpoint at least every this many records (1–1000).
    pub checkpoint_every_records: u64,
    /// Sign a checkpoint at least this often (1–60 s).
    pub checkpoint_every: Duration,
}

/// Process settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// User to switch to when started as root.
    pub user: Option<String>,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// Practice-supplied sensitive-code lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SensitiveConfig {
    /// Directory of extra concept lists, added to the shipped ones.
    pub extra_codes_dir: Option<PathBuf>,
}

/// Statistical extracts (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtractsConfig {
    /// The practice's sub-ICB location code (the former CCG code), written in every row.
    pub sub_icb: Option<String>,
    /// The practice's SNOMED CT → ICD-10 list, added to the shipped one.
    pub condition_types_file: Option<PathBuf>,
}

/// The fleet metrics listener (SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; `None` when disabled.
    pub listen: Option<SocketAddr>,
    /// A non-loopback `listen` was allowed explicitly (plain HTTP, no authentication).
    pub allow_non_loopback: bool,
}

/// The validated configuration. Every field has passed its rule; nothing else starts before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this was read from (kept readable in the sandbox); empty for a config built in
    /// code and not yet written.
    pub source_path: PathBuf,
    /// State directory: keys, replica, audit.
    pub state_dir: PathBuf,
    /// Identity.
    pub appliance: ApplianceConfig,
    /// TPM.
    pub tpm: TpmConfig,
    /// Partner API.
    pub partner_api: PartnerApiConfig,
    /// Upstream listener, if any.
    pub upstream: Option<UpstreamConfig>,
    /// Admin socket.
    pub admin: AdminConfig,
    /// Audit.
    pub audit: AuditConfig,
    /// Process.
    pub service: ServiceConfig,
    /// Sensitive codes.
    pub sensitive: SensitiveConfig,
    /// Statistical extracts.
    pub extracts: ExtractsConfig,
    /// Fleet metrics.
    pub metrics: MetricsConfig,
}

impl Config {
    /// A config with every optional setting at its default, for `migctl init`.
    pub fn new(
        state_dir: PathBuf,
        appliance: ApplianceConfig,
        tcti: Tcti,
    ) -> Result<Config, ConfigError> {
        let raw = RawConfig {
            state_dir: state_dir.to_string_lossy().into_owned(),
            appliance: RawAppliance {
                ods: appliance.ods.to_string(),
                name: appliance.name,
                asid: appliance.asid.to_string(),
                fhir_base: appliance.fhir_base.to_string(),
            },
            tpm: RawTpm {
                tcti: tcti.to_string(),
                pcrs: DEFAULT_PCRS.to_string(),
                owner_auth_file: None,
            },
            partner_api: RawPartnerApi::default(),
            upstream: None,
            admin: RawAdmin::default(),
            audit: RawAudit::default(),
            service: RawService::default(),
            sensitive: RawSensitive::default(),
            extracts: RawExtracts::default(),
            metrics: RawMetrics::default(),
        };
        let text = toml::to_string(&raw).map_err(|source| ConfigError::Serialize { source })?;
        Config::from_toml_str(&text, Path::new(""))
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages and as `source_path`.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let locator = Locator::new(text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let line = span.as_ref().map(|s| line_of(text, s.start));
            let mut key = span.and_then(|s| locator.key_at(s.start));
            // serde names the missing field only in the message; join it to the table's path.
            if let Some(field) = e
                .message()
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                key = Some(match key {
                    Some(table) => format!("{table}.{field}"),
                    None => field.to_string(),
                });
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                key,
                line,
                message: e.message().trim_end().to_string(),
            }
        })?;
        let check = Checker {
            path,
            locator: &locator,
        };
        check.config(raw)
    }

    /// The config as TOML text that [`Config::from_toml_str`] reads back to an equal value.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let l = &self.partner_api.limits;
        let raw = RawConfig {
            state_dir: self.state_dir.to_string_lossy().into_owned(),
            appliance: RawAppliance {
                ods: self.appliance.ods.to_string(),
                name: self.appliance.name.clone(),
                asid: self.appliance.asid.to_string(),
                fhir_base: self.appliance.fhir_base.to_string(),
            },
            tpm: RawTpm {
                tcti: self.tpm.tcti.to_string(),
                pcrs: self.tpm.pcrs.to_string(),
                owner_auth_file: self
                    .tpm
                    .owner_auth_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            },
            partner_api: RawPartnerApi {
                listen: self.partner_api.listen.to_string(),
                tls12: self.partner_api.tls12,
                crl_expired: self.partner_api.crl_expired.to_string(),
                limits: RawLimits {
                    max_connections: l.max_connections as u64,
                    max_concurrent_handshakes: l.max_concurrent_handshakes as u64,
                    handshake_timeout_ms: millis(l.handshake_timeout),
                    header_read_timeout_ms: millis(l.header_read_timeout),
                    max_header_bytes: l.max_header_bytes as u64,
                    max_body_bytes: l.max_body_bytes as u64,
                    per_partner_concurrency: l.per_partner_concurrency as u64,
                    client_hello_timeout_ms: millis(l.client_hello_timeout),
                    max_connections_per_source: l.max_connections_per_source as u64,
                    max_connections_per_partner: l.max_connections_per_partner as u64,
                    handshake_rate_per_source: u64::from(l.handshake_rate_per_source),
                    handshake_burst_per_source: u64::from(l.handshake_burst_per_source),
                    max_connection_age_s: l.max_connection_age.as_secs(),
                },
            },
            upstream: self.upstream.as_ref().map(|u| RawUpstream {
                listen: u.listen.to_string(),
            }),
            admin: RawAdmin {
                socket: self.admin.socket.to_string_lossy().into_owned(),
                group: self.admin.group.clone(),
            },
            audit: RawAudit {
                checkpoint_every_records: self.audit.checkpoint_every_records,
                checkpoint_every_seconds: self.audit.checkpoint_every.as_secs(),
            },
            service: RawService {
                user: self.service.user.clone(),
                shutdown_grace_seconds: self.service.shutdown_grace.as_secs(),
            },
            sensitive: RawSensitive {
                extra_codes_dir: self
                    .sensitive
                    .extra_codes_dir
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            },
            extracts: RawExtracts {
                sub_icb: self.extracts.sub_icb.clone(),
                condition_types_file: self
                    .extracts
                    .condition_types_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            },
            metrics: RawMetrics {
                enabled: self.metrics.listen.is_some(),
                listen: self
                    .metrics
                    .listen
                    .map_or_else(|| DEFAULT_METRICS_LISTEN.to_string(), |a| a.to_string()),
                allow_non_loopback: self.metrics.allow_non_loopback,
            },
        };
        let body =
            toml::to_string_pretty(&raw).map_err(|source| ConfigError::Serialize { source })?;
        Ok(format!(
            "# migd configuration (see docs/operations.md for every key).\n{body}"
        ))
    }

    /// Writes this config to `path` as a new file (mode 0644), atomically: a temporary file in
    /// the same directory is written, synced, then linked into place, which fails if `path`
    /// exists, so an initialised box is never overwritten. The text is validated by reading it
    /// back first. The parent directory must exist.
    pub fn write_new(&self, path: &Path) -> Result<(), ConfigError> {
        let text = self.to_toml()?;
        Config::from_toml_str(&text, path)?;
        if path.symlink_metadata().is_ok() {
            return Err(ConfigError::Exists {
                path: path.to_path_buf(),
            });
        }
        atomic_file::write(path, text.as_bytes(), 0o644, Existing::Refuse, |_| Ok(())).map_err(
            |e| {
                if e.already_exists() {
                    ConfigError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    ConfigError::Write {
                        path: path.to_path_buf(),
                        operation: e.operation,
                        source: e.source,
                    }
                }
            },
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Turns raw values into typed ones, naming the key and line of the first that breaks a rule.
struct Checker<'a> {
    path: &'a Path,
    locator: &'a Locator<'a>,
}

impl Checker<'_> {
    fn fail(&self, key: &str, rule: InvalidValue) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            line: self.locator.line_of_key(key),
            rule,
        }
    }

    fn parse<T: std::str::FromStr<Err = InvalidValue>>(
        &self,
        key: &str,
        value: &str,
    ) -> Result<T, ConfigError> {
        value.parse().map_err(|e| self.fail(key, e))
    }

    fn addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.fail(
                key,
                InvalidValue(format!(
                    "{value:?} is not an address and port (e.g. \"0.0.0.0:8443\" or \"[::]:8443\")"
                )),
            )
        })
    }

    fn absolute(&self, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
        if value.starts_with('/') && !value.contains('\0') {
            Ok(PathBuf::from(value))
        } else {
            Err(self.fail(
                key,
                InvalidValue(format!("{value:?} must be an absolute path")),
            ))
        }
    }

    fn range(&self, key: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(self.fail(
                key,
                InvalidValue(format!("{value} is out of range {min}-{max}")),
            ))
        }
    }

    /// A per-second rate or burst: 1 to 100,000.
    fn count(&self, key: &str, value: u64) -> Result<u32, ConfigError> {
        let v = self.range(key, value, 1, 100_000)?;
        u32::try_from(v).map_err(|_| self.fail(key, InvalidValue(format!("{v} is too large"))))
    }

    fn size(&self, key: &str, value: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
        let v = self.range(key, value, min, max)?;
        usize::try_from(v).map_err(|_| self.fail(key, InvalidValue(format!("{v} is too large"))))
    }

    fn name(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let ok = !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !value.starts_with('-');
        if ok {
            Ok(value.to_string())
        } else {
            Err(self.fail(
                key,
                InvalidValue(format!("{value:?} is not a user or group name")),
            ))
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let name = raw.appliance.name.trim();
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(self.fail(
                "appliance.name",
                InvalidValue("must be 1 to 200 characters without control characters".into()),
            ));
        }
        let appliance = ApplianceConfig {
            ods: self.parse("appliance.ods", &raw.appliance.ods)?,
            name: name.to_string(),
            asid: self.parse("appliance.asid", &raw.appliance.asid)?,
            fhir_base: self.parse("appliance.fhir_base", &raw.appliance.fhir_base)?,
        };
        let tpm = TpmConfig {
            tcti: self.parse("tpm.tcti", &raw.tpm.tcti)?,
            pcrs: self.parse("tpm.pcrs", &raw.tpm.pcrs)?,
            owner_auth_file: raw
                .tpm
                .owner_auth_file
                .as_deref()
                .map(|p| self.absolute("tpm.owner_auth_file", p))
                .transpose()?,
        };
        let l = &raw.partner_api.limits;
        let k = |f: &str| format!("partner_api.limits.{f}");
        let limits = Limits {
            max_connections: self.size(&k("max_connections"), l.max_connections, 1, 1_000_000)?,
            max_concurrent_handshakes: self.size(
                &k("max_concurrent_handshakes"),
                l.max_concurrent_handshakes,
                1,
                100_000,
            )?,
            handshake_timeout: Duration::from_millis(self.range(
                &k("handshake_timeout_ms"),
                l.handshake_timeout_ms,
                100,
                600_000,
            )?),
            header_read_timeout: Duration::from_millis(self.range(
                &k("header_read_timeout_ms"),
                l.header_read_timeout_ms,
                100,
                600_000,
            )?),
            max_header_bytes: self.size(
                &k("max_header_bytes"),
                l.max_header_bytes,
                1024,
                1 << 20,
            )?,
            max_body_bytes: self.size(&k("max_body_bytes"), l.max_body_bytes, 1024, 1 << 30)?,
            per_partner_concurrency: self.size(
                &k("per_partner_concurrency"),
                l.per_partner_concurrency,
                1,
                100_000,
            )?,
            client_hello_timeout: Duration::from_millis(self.range(
                &k("client_hello_timeout_ms"),
                l.client_hello_timeout_ms,
                100,
                60_000,
            )?),
            max_connections_per_source: self.size(
                &k("max_connections_per_source"),
                l.max_connections_per_source,
                1,
                1_000_000,
            )?,
            max_connections_per_partner: self.size(
                &k("max_connections_per_partner"),
                l.max_connections_per_partner,
                1,
                1_000_000,
            )?,
            handshake_rate_per_source: self
                .count(&k("handshake_rate_per_source"), l.handshake_rate_per_source)?,
            handshake_burst_per_source: self.count(
                &k("handshake_burst_per_source"),
                l.handshake_burst_per_source,
            )?,
            max_connection_age: Duration::from_secs(self.range(
                &k("max_connection_age_s"),
                l.max_connection_age_s,
                10,
                7 * 24 * 3600,
            )?),
        };
        let partner_api = PartnerApiConfig {
            listen: self.addr("partner_api.listen", &raw.partner_api.listen)?,
            tls12: raw.partner_api.tls12,
            crl_expired: self.parse("partner_api.crl_expired", &raw.partner_api.crl_expired)?,
            limits,
        };
        let upstream = raw
            .upstream
            .as_ref()
            .map(|u| {
                Ok::<_, ConfigError>(UpstreamConfig {
                    listen: self.addr("upstream.listen", &u.listen)?,
                })
            })
            .transpose()?;
        if let Some(up) = &upstream {
            if up.listen == partner_api.listen {
                return Err(self.fail(
                    "upstream.listen",
                    InvalidValue(format!(
                        "{} is also partner_api.listen; the upstream listener needs its own port",
                        up.listen
                    )),
                ));
            }
        }
        let admin = AdminConfig {
            socket: self.absolute("admin.socket", &raw.admin.socket)?,
            group: self.name("admin.group", &raw.admin.group)?,
        };
        if admin.socket.parent().is_none_or(|p| p == Path::new("/")) {
            return Err(self.fail(
                "admin.socket",
                InvalidValue("the socket needs a directory of its own, e.g. /run/mig".into()),
            ));
        }
        let audit = AuditConfig {
            checkpoint_every_records: self.range(
                "audit.checkpoint_every_records",
                raw.audit.checkpoint_every_records,
                1,
                MAX_CHECKPOINT_RECORDS,
            )?,
            checkpoint_every: Duration::from_secs(self.range(
                "audit.checkpoint_every_seconds",
                raw.audit.checkpoint_every_seconds,
                1,
                MAX_CHECKPOINT_SECONDS,
            )?),
        };
        let service = ServiceConfig {
            user: raw
                .service
                .user
                .as_deref()
                .map(|u| self.name("service.user", u))
                .transpose()?,
            shutdown_grace: Duration::from_secs(self.range(
                "service.shutdown_grace_seconds",
                raw.service.shutdown_grace_seconds,
                0,
                600,
            )?),
        };
        let sensitive = SensitiveConfig {
            extra_codes_dir: raw
                .sensitive
                .extra_codes_dir
                .as_deref()
                .map(|p| self.absolute("sensitive.extra_codes_dir", p))
                .transpose()?,
        };
        let extracts = ExtractsConfig {
            sub_icb: raw
                .extracts
                .sub_icb
                .as_deref()
                .map(|code| {
                    if crate::extract::is_sub_icb_code(code) {
                        Ok(code.to_owned())
                    } else {
                        Err(self.fail(
                            "extracts.sub_icb",
                            InvalidValue(format!(
                                "{code:?} is not a sub-ICB location code (3 or 5 upper-case letters and digits, e.g. \"16C\")"
                            )),
                        ))
                    }
                })
                .transpose()?,
            condition_types_file: raw
                .extracts
                .condition_types_file
                .as_deref()
                .map(|p| self.absolute("extracts.condition_types_file", p))
                .transpose()?,
        };
        let metrics_listen = self.addr("metrics.listen", &raw.metrics.listen)?;
        if !metrics_listen.ip().is_loopback() && !raw.metrics.allow_non_loopback {
            return Err(self.fail(
                "metrics.listen",
                InvalidValue(format!(
                    "{metrics_listen} is not a loopback address; metrics are plain HTTP without \
                     authentication, so set metrics.allow_non_loopback = true to serve them there"
                )),
            ));
        }
        let metrics = MetricsConfig {
            listen: raw.metrics.enabled.then_some(metrics_listen),
            allow_non_loopback: raw.metrics.allow_non_loopback,
        };
        Ok(Config {
            source_path: self.path.to_path_buf(),
            state_dir: self.absolute("state_dir", &raw.state_dir)?,
            appliance,
            tpm,
            partner_api,
            upstream,
            admin,
            audit,
            service,
            sensitive,
            extracts,
            metrics,
        })
    }
}
