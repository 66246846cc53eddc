//! Validated value types of the config (ODS code, ASID, FHIR base URL, PCR selection, TCTI).
//! Each parses from the text an operator writes and prints back the same canonical text, so
//! `migctl` validates its flags with exactly the rules that migd applies to the file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A value in the config (or a `migctl` flag) that breaks its rule; the text says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// An NHS ODS organisation code: 3 to 6 upper-case letters or digits (e.g. `A81001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

impl OdsCode {
    /// The code as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OdsCode {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let ok = (3..=6).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if ok {
            Ok(OdsCode(s.to_string()))
        } else {
            Err(invalid(format!(
                "{s:?} is not an ODS code (3 to 6 upper-case letters or digits, e.g. \"A81001\")"
            )))
        }
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Spine Accredited System ID: exactly 12 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Asid(String);

impl Asid {
    /// The ASID as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Asid {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Asid(s.to_string()))
        } else {
            Err(invalid(format!("{s:?} is not an ASID (exactly 12 digits)")))
        }
    }
}

impl fmt::Display for Asid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The appliance's FHIR base URL: `https://host[:port]/path`, no query, fragment, user info or
/// trailing `/`. Partners' JWT `aud` must equal it byte for byte, so there is one spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FhirBase(String);

impl FhirBase {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part (`mig.example.nhs.uk` of `https://mig.example.nhs.uk:8443/fhir`), for
    /// certificate names.
    pub fn host(&self) -> &str {
        let authority = self
            .0
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default();
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        }
    }
}

impl FromStr for FhirBase {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| invalid(format!("{s:?} is not a usable FHIR base URL: {why}"));
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| bad("it must start with https://"))?;
        if s.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii())
        {
            return Err(bad("it contains spaces, control or non-ASCII characters"));
        }
        if s.contains(['?', '#']) {
            return Err(bad("it must not have a query or fragment"));
        }
        if s.ends_with('/') {
            return Err(bad("remove the trailing '/'"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("it has no host"));
        }
        if authority.contains('@') {
            return Err(bad("it must not carry user information"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').unwrap_or(("", "x"));
            (
                addr,
                after
                    .strip_prefix(':')
                    .map(Some)
                    .unwrap_or(if after.is_empty() { None } else { Some("") }),
            )
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
        let host_ok = !host.is_empty() && port_ok;
        if !host_ok {
            return Err(bad("its host or port is malformed"));
        }
        Ok(FhirBase(s.to_string()))
    }
}

impl fmt::Display for FhirBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The PCRs (SHA-256 bank) the replica key is sealed to, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PcrSelection {
    indices: Vec<u8>,
}

impl PcrSelection {
    /// PCR indices, ascending, each 0–23.
    pub fn indices(&self) -> &[u8] {
        &self.indices
    }
}

impl FromStr for PcrSelection {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: String| {
            invalid(format!(
                "{s:?} is not a PCR selection ({why}; write e.g. \"sha256:7\" or \"sha256:0,2,7\")"
            ))
        };
        let (bank, list) = s
            .split_once(':')
            .ok_or_else(|| bad("missing \"sha256:\"".into()))?;
        if bank != "sha256" {
            return Err(bad(format!("bank {bank:?} is not supported, only sha256")));
        }
        let mut indices = Vec::new();
        for part in list.split(',') {
            let part = part.trim();
            let index: u8 = part
                .parse()
                .map_err(|_| bad(format!("{part:?} is not a PCR index")))?;
            if index > 23 {
                return Err(bad(format!("PCR {index} is out of range 0-23")));
            }
            indices.push(index);
        }
        indices.sort_unstable();
        indices.dedup();
        Ok(PcrSelection { indices })
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, index) in self.indices.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{index}")?;
        }
        Ok(())
    }
}

/// Where the TPM is: the TCTI string handed to tpm2-tss.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tcti {
    /// A kernel TPM character device (`device:/dev/tpmrm0`).
    Device {
        /// The device node.
        path: PathBuf,
    },
    /// A software TPM over TCP (`swtpm:host=127.0.0.1,port=2321`); its control channel is on
    /// `port + 1`.
    Swtpm {
        /// Host name or address.
        host: String,
        /// Command port (1–65534: the control port is the next one).
        port: u16,
    },
    /// The TPM access broker daemon (`tabrmd` or `tabrmd:bus_name=…,bus_type=…`).
    Tabrmd {
        /// Whatever follows `tabrmd:`, passed to tpm2-tss unchanged.
        conf: Option<String>,
    },
}

impl Tcti {
    /// The device node to keep reachable in the sandbox, for a device TCTI.
    pub fn device_path(&self) -> Option<&std::path::Path> {
        match self {
            Tcti::Device { path } => Some(path),
            _ => None,
        }
    }
}

impl FromStr for Tcti {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| {
            invalid(format!(
                "{s:?} is not a TCTI ({why}; write \"device:/dev/tpmrm0\", \
                 \"swtpm:host=127.0.0.1,port=2321\" or \"tabrmd\")"
            ))
        };
        let (kind, conf) = match s.split_once(':') {
            Some((k, c)) => (k, Some(c)),
            None => (s, None),
        };
        match kind {
            "device" => {
                let path = conf.unwrap_or_default();
                if !path.starts_with('/') {
                    return Err(bad("the device path must be absolute"));
                }
                if path.contains(',') {
                    return Err(bad("the device path must not contain ','"));
                }
                Ok(Tcti::Device { path: path.into() })
            }
            "swtpm" => {
                let conf = conf.ok_or_else(|| bad("swtpm needs host= and port="))?;
                let mut host = None;
                let mut port = None;
                for pair in conf.split(',') {
                    match pair.split_once('=') {
                        Some(("host", h)) if !h.is_empty() => host = Some(h.to_string()),
                        Some(("port", p)) => {
                            port = Some(
                                p.parse::<u16>()
                                    .ok()
                                    .filter(|p| *p != 0 && *p != u16::MAX)
                                    .ok_or_else(|| bad("port must be 1-65534"))?,
                            )
                        }
                        _ => return Err(bad(&format!("unexpected {pair:?}"))),
                    }
                }
                match (host, port) {
                    (Some(host), Some(port)) => Ok(Tcti::Swtpm { host, port }),
                    _ => Err(bad("swtpm needs both host= and port=")),
                }
            }
            "tabrmd" => Ok(Tcti::Tabrmd {
                conf: conf.filter(|c| !c.is_empty()).map(str::to_string),
            }),
            _ => Err(bad(&format!("unknown kind {kind:?}"))),
        }
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tcti::Device { path } => write!(f, "device:{}", path.display()),
            Tcti::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
            Tcti::Tabrmd { conf: None } => f.write_str("tabrmd"),
            Tcti::Tabrmd { conf: Some(c) } => write!(f, "tabrmd:{c}"),
        }
    }
}

/// What to do with a partner certificate when the CRL of its CA is past its `nextUpdate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrlExpiredPolicy {
    /// Refuse the handshake (fail closed): the default.
    Refuse,
    /// Accept, with a warning in the log and in `migctl check`.
    Warn,
}

impl FromStr for CrlExpiredPolicy {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "refuse" => Ok(CrlExpiredPolicy::Refuse),
            "warn" => Ok(CrlExpiredPolicy::Warn),
            _ => Err(invalid(format!("{s:?} must be \"refuse\" or \"warn\""))),
        }
    }
}

impl fmt::Display for CrlExpiredPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrlExpiredPolicy::Refuse => "refuse",
            CrlExpiredPolicy::Warn => "warn",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ods_codes() {
        for ok in ["A81001", "RX6", "Y0123"] {
            assert!(ok.parse::<OdsCode>().is_ok(), "{ok}");
        }
        for bad in ["a81001", "AB", "A810012", "A8-001", ""] {
            assert!(bad.parse::<OdsCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn asids() {
        assert!("200000000123".parse::<Asid>().is_ok());
        for bad in ["20000000012", "2000000001234", "20000000012x"] {
            assert!(bad.parse::<Asid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fhir_bases() {
        for ok in [
            "https://mig.a81001.example.nhs.uk/fhir",
            "https://10.0.0.1:8443/fhir",
            "https://[::1]:8443/fhir",
            "https://host",
        ] {
            assert!(ok.parse::<FhirBase>().is_ok(), "{ok}");
        }
        for bad in [
            "http://mig/fhir",
            "https:///fhir",
            "https://mig/fhir/",
            "https://mig/fhir?x=1",
            "https://u@mig/fhir",
            "https://mig:0/fhir",
            "https://mig:http/fhir",
            "https://mig/f hir",
        ] {
            assert!(bad.parse::<FhirBase>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pcr_selections() {
        let p: PcrSelection = "sha256:7,0,2,7".parse().unwrap();
        assert_eq!(p.indices(), &[0, 2, 7]);
        assert_eq!(p.to_string(), "sha256:0,2,7");
        for bad in [
            "7",
            "sha1:7",
            "sha256:",
            "sha256:24",
            "sha256:a",
            "sha256:1,,2",
        ] {
            assert!(bad.parse::<PcrSelection>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tctis() {
        for ok in [
            "device:/dev/tpmrm0",
            "swtpm:host=127.0.0.1,port=2321",
            "tabrmd",
            "tabrmd:bus_name=com.intel.tss2.Tabrmd",
        ] {
            assert_eq!(ok.parse::<Tcti>().unwrap().to_string(), ok);
        }
        for bad in [
            "device:dev/tpm0",
            "swtpm:host=x",
            "swtpm:port=1",
            "swtpm:host=x,port=65535",
            "mssim:host=x,port=1",
            "",
        ] {
            assert!(bad.parse::<Tcti>().is_err(), "{bad}");
        }
    }
}
