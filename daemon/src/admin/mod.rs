//! The admin service that `migctl` talks to over a local Unix socket (SPEC §9), speaking the
//! typed protocol of `mig-admin-proto`. `server` accepts and frames, `peer` decides who may
//! connect, `client` is migctl's end; the command set (`commands`, `extract`) sits on top.

pub mod answers;
pub mod client;
pub mod commands;
pub mod extract;
pub mod peer;
pub mod server;
