//! The partner FHIR API (SPEC §3): routing, the `Ssp-*` headers and access token, the access
//! decision, the audit record, and the consent-filtered response.

pub mod bundle;
pub mod capability;
pub mod headers;
pub mod jwt;
pub mod outcome;
pub mod parameters;
