//! The MIG appliance: a consent-filtering FHIR gateway in front of an encrypted replica of a GP
//! practice's record. `migd` (src/main.rs) and `migctl` are thin shells over this library.

pub mod audit;
pub mod fhir;
pub mod keys;
pub mod policy;
