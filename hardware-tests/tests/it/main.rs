//! The TPM and whole-appliance tests, one module per former test binary, linked once (one link
//! instead of sixteen on a 2-core machine). nextest still runs each test in its own process.
#![forbid(unsafe_code)]

mod common;
mod e2e_common;

mod appliance_smoke;
mod audit_rollback;
mod bad_blobs;
mod bus_encryption;
mod e2e_api;
mod e2e_browser;
mod e2e_tls;
mod e2e_upstream;
mod extract;
mod fleet_metrics;
mod keystore;
mod lifecycle;
mod lockout;
mod migctl;
mod owner_auth;
mod pcr_policy;
