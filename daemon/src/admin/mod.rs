//! The admin service that `migctl` talks to over a local Unix socket (SPEC §9). `transport`
//! carries JSON lines and checks who is calling; the command set sits on top of it.

pub mod commands;
pub mod extract;
pub mod transport;
