//! The integration tests of `mig`, one module per former test binary, linked once (one link
//! instead of two dozen on a 2-core machine). nextest still runs each test in its own process;
//! `tests/system_notify.rs` stays a binary of its own because it changes the process environment.
#![forbid(unsafe_code)]

mod audit_support;
mod tls_support;

mod api;
mod audit_crash;
mod audit_disk_full;
mod audit_fhir;
mod audit_log;
mod audit_rollback;
mod audit_tamper;
mod config_errors;
mod extract;
mod gpconnect_conformance;
mod registry_reload;
mod replica;
mod synthetic;
mod system_admin_socket;
mod system_hardening;
mod system_signals;
mod tls_curl;
mod tls_handshake;
mod tls_http_refusals;
mod tls_limits;
mod tls_preauth;
mod tls_reload;
mod tls_revocation;
mod tls_suites;
