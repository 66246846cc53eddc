#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Config errors name the key and the line (SPEC §10), and validation refuses bad values.

use std::path::Path;

use mig::config::{Config, ConfigError, CrlExpiredPolicy, Tcti};

const GOOD: &str = r#"state_dir = "/var/lib/mig"

[appliance]
ods = "A81001"
name = "The Surgery"
asid = "200000000123"
fhir_base = "https://mig.a81001.example.nhs.uk/fhir"

[tpm]
tcti = "device:/dev/tpmrm0"
pcrs = "sha256:7"
owner_auth_file = "/etc/mig/owner-auth"

[partner_api]
listen = "0.0.0.0:8443"
tls12 = false
crl_expired = "refuse"

[partner_api.limits]
max_connections = 1024
max_concurrent_handshakes = 64
handshake_timeout_ms = 10000
header_read_timeout_ms = 10000
max_header_bytes = 16384
max_body_bytes = 1048576
per_partner_concurrency = 64

[upstream]
listen = "0.0.0.0:8444"

[admin]
socket = "/run/mig/admin.sock"
group = "mig-admin"

[audit]
checkpoint_every_records = 1000
checkpoint_every_seconds = 60

[service]
user = "mig"
shutdown_grace_seconds = 10

[sensitive]
extra_codes_dir = "/etc/mig/sensitive.d"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("/etc/mig/migd.toml"))
}

fn error(text: &str) -> String {
    let e = parse(text).expect_err("config should be refused");
    let msg = e.to_string();
    eprintln!("{msg}");
    msg
}

/// The example from the brief parses, with every value typed.
#[test]
fn full_example_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.appliance.ods.as_str(), "A81001");
    assert_eq!(c.appliance.asid.as_str(), "200000000123");
    assert_eq!(
        c.tpm.tcti,
        Tcti::Device {
            path: "/dev/tpmrm0".into()
        }
    );
    assert_eq!(c.tpm.pcrs.indices(), &[7]);
    assert_eq!(c.partner_api.listen.port(), 8443);
    assert_eq!(c.partner_api.crl_expired, CrlExpiredPolicy::Refuse);
    assert_eq!(c.partner_api.limits.max_body_bytes, 1_048_576);
    assert_eq!(c.upstream.as_ref().unwrap().listen.port(), 8444);
    assert_eq!(c.audit.checkpoint_every.as_secs(), 60);
    assert_eq!(c.service.user.as_deref(), Some("mig"));
    assert_eq!(c.source_path, Path::new("/etc/mig/migd.toml"));
}

/// Only the required keys: every optional one takes its documented default.
#[test]
fn minimal_config_takes_defaults() {
    let text = r#"
state_dir = "/tmp/mig"
[appliance]
ods = "A81001"
name = "The Surgery"
asid = "200000000123"
fhir_base = "https://mig.example/fhir"
[tpm]
tcti = "swtpm:host=127.0.0.1,port=2321"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.partner_api.listen.to_string(), "0.0.0.0:8443");
    assert!(!c.partner_api.tls12);
    assert!(c.upstream.is_none());
    assert_eq!(c.admin.socket, Path::new("/run/mig/admin.sock"));
    assert_eq!(c.admin.group, "mig-admin");
    assert_eq!(c.tpm.pcrs.to_string(), "sha256:7");
    assert_eq!(c.audit.checkpoint_every_records, 1000);
    assert_eq!(c.service.shutdown_grace.as_secs(), 10);
    assert_eq!(c.partner_api.limits.max_connections, 1024);
}

#[test]
fn metrics_listen_on_loopback_by_default_and_elsewhere_only_when_allowed() {
    assert_eq!(
        parse(GOOD).unwrap().metrics.listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let off = parse(&format!("{GOOD}\n[metrics]\nenabled = false\n")).unwrap();
    assert_eq!(off.metrics.listen, None);
    let open = format!("{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n");
    let msg = error(&open);
    assert!(
        msg.contains("metrics.listen") && msg.contains("allow_non_loopback"),
        "{msg}"
    );
    let allowed = parse(&format!("{open}allow_non_loopback = true\n")).unwrap();
    assert_eq!(
        allowed.metrics.listen,
        Some("0.0.0.0:9464".parse().unwrap())
    );
    let back = Config::from_toml_str(&allowed.to_toml().unwrap(), Path::new("x")).unwrap();
    assert_eq!(back.metrics, allowed.metrics);
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replace("tls12 = false", "tls12 = false\nlisten_v6 = \"[::]:8443\"");
    let msg = error(&text);
    assert!(msg.contains("listen_v6"), "{msg}");
    assert!(msg.contains("line 17"), "{msg}");
    assert!(msg.contains("/etc/mig/migd.toml"), "{msg}");
}

#[test]
fn unknown_key_in_nested_table_names_key_and_line() {
    let text = GOOD.replace(
        "max_connections = 1024",
        "max_connections = 1024\nmax_conns = 3",
    );
    let msg = error(&text);
    assert!(msg.contains("max_conns"), "{msg}");
    assert!(msg.contains("line 21"), "{msg}");
    assert!(msg.contains("partner_api.limits.max_conns"), "{msg}");
}

#[test]
fn unknown_table_names_it() {
    let text = format!("{GOOD}\n[telemetry]\nlisten = \"127.0.0.1:9100\"\n");
    let msg = error(&text);
    assert!(msg.contains("telemetry"), "{msg}");
    assert!(msg.contains("line 46"), "{msg}");
}

#[test]
fn bad_value_type_names_key_and_line() {
    let text = GOOD.replace("max_body_bytes = 1048576", "max_body_bytes = \"1 MiB\"");
    let msg = error(&text);
    assert!(msg.contains("partner_api.limits.max_body_bytes"), "{msg}");
    assert!(msg.contains("line 25"), "{msg}");
}

#[test]
fn bad_value_syntax_names_key_and_line() {
    let text = GOOD.replace("asid = \"200000000123\"", "asid = \"2000000001\"");
    let msg = error(&text);
    assert!(msg.contains("appliance.asid"), "{msg}");
    assert!(msg.contains("line 6"), "{msg}");
    assert!(msg.contains("12 digits"), "{msg}");
}

#[test]
fn missing_required_key_names_key_and_line() {
    let text = GOOD.replace("asid = \"200000000123\"\n", "");
    let msg = error(&text);
    assert!(msg.contains("key `appliance.asid`"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn missing_required_top_level_key_names_key() {
    let text = GOOD.replace("state_dir = \"/var/lib/mig\"\n", "");
    let msg = error(&text);
    assert!(msg.contains("state_dir"), "{msg}");
}

#[test]
fn missing_file_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let e = Config::load(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn syntax_error_names_line() {
    let text = GOOD.replace("tls12 = false", "tls12 = fals");
    let msg = error(&text);
    assert!(msg.contains("line 16"), "{msg}");
}

/// Each rule in turn: the message names the key whose value breaks it.
#[test]
fn validation_failures_name_the_key() {
    let cases = [
        ("ods = \"A81001\"", "ods = \"a81001\"", "appliance.ods"),
        ("ods = \"A81001\"", "ods = \"A8\"", "appliance.ods"),
        (
            "fhir_base = \"https://mig.a81001.example.nhs.uk/fhir\"",
            "fhir_base = \"http://mig/fhir\"",
            "appliance.fhir_base",
        ),
        ("name = \"The Surgery\"", "name = \"  \"", "appliance.name"),
        (
            "tcti = \"device:/dev/tpmrm0\"",
            "tcti = \"mssim:host=x,port=1\"",
            "tpm.tcti",
        ),
        ("pcrs = \"sha256:7\"", "pcrs = \"sha256:0,24\"", "tpm.pcrs"),
        ("pcrs = \"sha256:7\"", "pcrs = \"sha1:7\"", "tpm.pcrs"),
        (
            "owner_auth_file = \"/etc/mig/owner-auth\"",
            "owner_auth_file = \"owner-auth\"",
            "tpm.owner_auth_file",
        ),
        (
            "listen = \"0.0.0.0:8443\"",
            "listen = \"0.0.0.0\"",
            "partner_api.listen",
        ),
        (
            "crl_expired = \"refuse\"",
            "crl_expired = \"ignore\"",
            "partner_api.crl_expired",
        ),
        (
            "max_connections = 1024",
            "max_connections = 0",
            "partner_api.limits.max_connections",
        ),
        (
            "handshake_timeout_ms = 10000",
            "handshake_timeout_ms = 5",
            "partner_api.limits.handshake_timeout_ms",
        ),
        (
            "listen = \"0.0.0.0:8444\"",
            "listen = \"0.0.0.0:8443\"",
            "upstream.listen",
        ),
        (
            "socket = \"/run/mig/admin.sock\"",
            "socket = \"admin.sock\"",
            "admin.socket",
        ),
        (
            "group = \"mig-admin\"",
            "group = \"mig admin\"",
            "admin.group",
        ),
        (
            "checkpoint_every_records = 1000",
            "checkpoint_every_records = 5000",
            "audit.checkpoint_every_records",
        ),
        (
            "checkpoint_every_seconds = 60",
            "checkpoint_every_seconds = 0",
            "audit.checkpoint_every_seconds",
        ),
        (
            "state_dir = \"/var/lib/mig\"",
            "state_dir = \"var/lib/mig\"",
            "state_dir",
        ),
        ("user = \"mig\"", "user = \"\"", "service.user"),
        (
            "extra_codes_dir = \"/etc/mig/sensitive.d\"",
            "extra_codes_dir = \"sensitive.d\"",
            "sensitive.extra_codes_dir",
        ),
    ];
    for (from, to, key) in cases {
        assert!(GOOD.contains(from), "{from}");
        let text = GOOD.replacen(from, to, 1);
        let e = parse(&text).expect_err(to);
        let msg = e.to_string();
        assert!(msg.contains(&format!("key `{key}`")), "{to}: {msg}");
        assert!(msg.contains("line "), "{to}: {msg}");
    }
}

/// What `to_toml` writes reads back to the same config.
#[test]
fn to_toml_round_trips() {
    let c = parse(GOOD).unwrap();
    let text = c.to_toml().unwrap();
    let back = parse(&text).unwrap();
    assert_eq!(c, back);
}

/// `write_new` writes a config that loads, and never overwrites one.
#[test]
fn write_new_creates_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("migd.toml");
    let appliance = mig::config::ApplianceConfig {
        ods: "A81001".parse().unwrap(),
        name: "The Surgery".into(),
        asid: "200000000123".parse().unwrap(),
        fhir_base: "https://mig.example/fhir".parse().unwrap(),
    };
    let mut c = Config::new(
        dir.path().join("state"),
        appliance,
        "swtpm:host=127.0.0.1,port=2321".parse().unwrap(),
    )
    .unwrap();
    c.upstream = Some(mig::config::UpstreamConfig {
        listen: "127.0.0.1:9444".parse().unwrap(),
    });
    c.write_new(&path).unwrap();
    let loaded = Config::load(&path).unwrap();
    assert_eq!(loaded.upstream, c.upstream);
    assert_eq!(loaded.appliance, c.appliance);
    assert_eq!(loaded.source_path, path);
    let err = c.write_new(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Exists { .. }), "{err}");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
