//! The access decision (SPEC §5) and item filtering. Pure: no I/O, no clock, no async; the
//! current time is an argument, so every rule can be tested exhaustively.

mod agreement;

pub use agreement::{Agreement, PartnerType, RoleSet};
