//! The MIG appliance: a consent-filtering FHIR gateway in front of an encrypted replica of a GP
//! practice's record. `migd` (src/main.rs) and `migctl` are thin shells over this library.

pub mod admin;
pub mod api;
pub mod audit;
pub mod config;
pub mod error;
pub mod extract;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod registry;
pub mod replica;
pub mod service;
pub mod system;
pub mod tls;
pub mod tpm;
