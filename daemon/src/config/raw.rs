//! The TOML file as written: serde structs with every table closed to unknown keys. Nothing
//! here is validated beyond TOML types; `Config::from_raw` turns this into the typed config.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub state_dir: String,
    pub appliance: RawAppliance,
    pub tpm: RawTpm,
    #[serde(default)]
    pub partner_api: RawPartnerApi,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub service: RawService,
    #[serde(default)]
    pub sensitive: RawSensitive,
    #[serde(default, skip_serializing_if = "RawExtracts::is_empty")]
    pub extracts: RawExtracts,
    #[serde(default)]
    pub metrics: RawMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppliance {
    pub ods: String,
    pub name: String,
    pub asid: String,
    pub fhir_base: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTpm {
    pub tcti: String,
    #[serde(default = "default_pcrs")]
    pub pcrs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_auth_file: Option<String>,
}

fn default_pcrs() -> String {
    super::DEFAULT_PCRS.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPartnerApi {
    #[serde(default = "default_partner_listen")]
    pub listen: String,
    #[serde(default)]
    pub tls12: bool,
    #[serde(default = "default_crl_expired")]
    pub crl_expired: String,
    #[serde(default)]
    pub limits: RawLimits,
}

fn default_partner_listen() -> String {
    super::DEFAULT_PARTNER_LISTEN.to_string()
}

fn default_crl_expired() -> String {
    "refuse".to_string()
}

impl Default for RawPartnerApi {
    fn default() -> Self {
        RawPartnerApi {
            listen: default_partner_listen(),
            tls12: false,
            crl_expired: default_crl_expired(),
            limits: RawLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLimits {
    pub max_connections: u64,
    pub max_concurrent_handshakes: u64,
    pub handshake_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub max_header_bytes: u64,
    pub max_body_bytes: u64,
    pub per_partner_concurrency: u64,
    pub client_hello_timeout_ms: u64,
    pub max_connections_per_source: u64,
    pub max_connections_per_partner: u64,
    pub handshake_rate_per_source: u64,
    pub handshake_burst_per_source: u64,
    pub max_connection_age_s: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: 1024,
            max_concurrent_handshakes: 64,
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16_384,
            max_body_bytes: 1_048_576,
            per_partner_concurrency: 64,
            client_hello_timeout_ms: 5_000,
            max_connections_per_source: 64,
            max_connections_per_partner: 128,
            handshake_rate_per_source: 10,
            handshake_burst_per_source: 64,
            max_connection_age_s: 3_600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub socket: String,
    pub group: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            socket: super::DEFAULT_ADMIN_SOCKET.to_string(),
            group: super::DEFAULT_ADMIN_GROUP.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAudit {
    pub checkpoint_every_records: u64,
    pub checkpoint_every_seconds: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            checkpoint_every_records: 1000,
            checkpoint_every_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
}

fn default_grace() -> u64 {
    10
}

impl Default for RawService {
    fn default() -> Self {
        RawService {
            user: None,
            shutdown_grace_seconds: default_grace(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSensitive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_codes_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExtracts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_icb: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_types_file: Option<String>,
}

impl RawExtracts {
    pub fn is_empty(&self) -> bool {
        self.sub_icb.is_none() && self.condition_types_file.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    pub enabled: bool,
    pub listen: String,
    pub allow_non_loopback: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            listen: super::DEFAULT_METRICS_LISTEN.to_string(),
            allow_non_loopback: false,
        }
    }
}
