//! Unit tests of the TLS configuration.
