//! Test support for TPM-backed tests.
