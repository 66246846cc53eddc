//! The listener's limits, as read from the config file. Durations are written as `"10s"`,
//! `"500ms"`, `"2m"` or a whole number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Limits that keep one client from starving the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Open connections at once; further ones are closed at accept, before TLS.
    pub max_connections: usize,
    /// Handshakes in progress at once (each full handshake costs one TPM signature).
    pub max_concurrent_handshakes: usize,
    /// From accept to a finished handshake, including the wait for a handshake slot.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Time to send a request's headers (HTTP/1.1; 408 after). Also closes idle keep-alive
    /// connections after this long.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Time to send a request's body once its headers are in (408 after).
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Request line and headers (431 above).
    pub max_header_bytes: usize,
    /// Request body (413 above).
    pub max_body_bytes: usize,
    /// Requests in flight per partner across all its connections (429 above).
    pub per_partner_concurrency: usize,
    /// On shutdown, how long in-flight requests get to finish.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// From accept to a complete ClientHello. A connection that is silent this long is closed
    /// before it holds a handshake slot or any TPM time.
    #[serde(deserialize_with = "duration")]
    pub client_hello_timeout: Duration,
    /// Open connections per source address (IPv4 address, IPv6 /64); more are closed at accept.
    pub max_connections_per_source: usize,
    /// Open connections per partner (or per unregistered certificate) after the handshake.
    pub max_connections_per_partner: usize,
    /// Full handshakes (each one TPM signature) per second per source address, refilled
    /// continuously; resumed handshakes are not counted.
    pub handshake_rate_per_source: u32,
    /// How many full handshakes a source may make at once before the rate applies.
    pub handshake_burst_per_source: u32,
    /// A connection older than this is closed gracefully (after its in-flight requests);
    /// the client reconnects and is checked afresh.
    #[serde(deserialize_with = "duration")]
    pub max_connection_age: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 1024,
            max_concurrent_handshakes: 64,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            per_partner_concurrency: 64,
            shutdown_grace: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(5),
            max_connections_per_source: 64,
            max_connections_per_partner: 128,
            handshake_rate_per_source: 10,
            handshake_burst_per_source: 64,
            max_connection_age: Duration::from_secs(3600),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(text) => parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: write e.g. \"10s\", \"500ms\" or \"2m\""
            ))
        }),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_durations_parse() {
        let limits: ListenerLimits =
            toml::from_str("handshake_timeout = \"500ms\"\nheader_read_timeout = 3\n").unwrap();
        assert_eq!(limits.handshake_timeout, Duration::from_millis(500));
        assert_eq!(limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_connections, 1024);
        assert_eq!(limits.max_header_bytes, 16384);
        assert_eq!(limits.max_body_bytes, 1 << 20);
        assert_eq!(limits.per_partner_concurrency, 64);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        let err = toml::from_str::<ListenerLimits>("max_conections = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
        let err = toml::from_str::<ListenerLimits>("shutdown_grace = \"ten\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
