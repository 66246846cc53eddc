//! `migctl`: provisioning and administration of the MIG appliance (SPEC §9). The binary is a
//! thin shell over these modules so the console wizard and the demo reuse the same steps.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod console;
#[cfg(feature = "demo")]
pub mod demo;
