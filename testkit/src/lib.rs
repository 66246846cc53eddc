//! What the tests and `migctl demo` need around an appliance, written once: a software TPM per
//! caller ([`swtpm`]), free loopback ports ([`ports`]) and a throw-away PKI made with rcgen
//! ([`pki`]). Never part of migd: nothing here is fit for production (keys sit in memory and
//! in files next to the demo).
#![forbid(unsafe_code)]

pub mod pki;
pub mod ports;
pub mod swtpm;

pub use pki::{Ca, Leaf};
/// The rcgen these certificates are made with, for callers that add names or read CSRs.
pub use rcgen;
pub use swtpm::Swtpm;
