//! The on-disk stores in the state directory that decide who may connect: the appliance's
//! certificate chain, partner CAs, CRLs, registered partners and upstream clinical systems.
//!
//! Validates: every file parses (TOML with unknown keys refused, PEM/DER certificates and CRLs),
//! partner file names match their ODS codes, no two partners claim the same certificate, and on
//! install that CAs are CAs, CRLs are signed by a trusted CA and the appliance chain matches its
//! key. Does not validate: client certificate paths or revocation (rustls/webpki do that in the
//! handshake, see `tls`), nor what an agreement allows (the policy engine).
//!
//! Layout under the state directory:
//! `tls/chain.pem` (leaf first), `trust/*.pem`, `crl/*` (PEM or DER), `partners/<ODS>.toml`,
//! `upstream/<name>.toml`. Files whose names start with `.` are ignored (temporary files).

mod pki;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::{Deserialize, Serialize};

use crate::policy::Agreement;

pub(crate) use pki::unix_seconds;
pub use pki::{cert_identity, cert_not_after, CertIdentity, CrlInfo};
pub(crate) use store::check_appliance_chain;
pub use store::{
    add_partner, add_trust_ca, add_upstream, install_appliance_chain, install_crl, list_partners,
    list_upstreams, remove_partner, remove_upstream, write_atomic,
};

/// Sub-directory and file names inside the state directory.
pub const CHAIN_FILE: &str = "tls/chain.pem";
pub const TRUST_DIR: &str = "trust";
pub const CRL_DIR: &str = "crl";
pub const PARTNERS_DIR: &str = "partners";
pub const UPSTREAM_DIR: &str = "upstream";

/// Why a store could not be read or changed. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Reading, writing, renaming or syncing a file or directory failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TOML store file does not parse or has unknown keys (the message carries line and column).
    #[error("{}: {source}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A record could not be written as TOML.
    #[error("cannot write {} as TOML: {source}", path.display())]
    TomlWrite {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
    /// A certificate, CRL or chain is unusable; `reason` says why.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// An `add` would overwrite an existing record.
    #[error("{} already exists; remove it first", path.display())]
    Exists { path: PathBuf },
    /// A `remove` named a record that is not there.
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
}

impl RegistryError {
    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> RegistryError {
        RegistryError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        RegistryError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How a partner's client certificate is recognised (SPEC §5 step 1): by the SHA-256 of its
/// DER SubjectPublicKeyInfo (survives re-issue with the same key).
///
/// Matching by subject and issuer names is deliberately not offered: names compared as text
/// are ambiguous (RFC 4514 escaping of `,` and `+`) and, unless tied to the CA that verified
/// the chain, any other trusted CA can issue a certificate with the same names. A partner file
/// with `subject_issuer` is refused at load, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CertificateMatch {
    SpkiSha256(#[serde(with = "hex32")] [u8; 32]),
}

/// A registered partner: its data sharing agreement and the certificate it connects with.
/// Stored as `partners/<ODS>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    pub agreement: Agreement,
    pub identity: CertificateMatch,
}

/// A registered upstream clinical system, pinned by its certificate's key. Stored as
/// `upstream/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    #[serde(with = "hex32")]
    pub spki_sha256: [u8; 32],
}

/// Registered partners indexed by how their certificates are matched.
#[derive(Debug, Default)]
pub struct PartnerRegistry {
    partners: Vec<Arc<Partner>>,
    by_spki: HashMap<[u8; 32], Arc<Partner>>,
}

impl PartnerRegistry {
    /// Indexes `partners` (each paired with the file it came from, for error messages); two
    /// partners claiming the same certificate is an error naming both files.
    pub fn new(partners: Vec<(PathBuf, Partner)>) -> Result<PartnerRegistry, RegistryError> {
        let mut registry = PartnerRegistry::default();
        let mut seen: HashMap<CertificateMatch, PathBuf> = HashMap::new();
        let mut seen_ods: HashMap<String, PathBuf> = HashMap::new();
        for (path, partner) in partners {
            if let Some(first) = seen.get(&partner.identity) {
                return Err(RegistryError::invalid(
                    &path,
                    format!(
                        "claims the same certificate as {}; a certificate identifies one partner",
                        first.display()
                    ),
                ));
            }
            if let Some(first) = seen_ods.get(&partner.agreement.ods) {
                return Err(RegistryError::invalid(
                    &path,
                    format!("ODS code also registered in {}", first.display()),
                ));
            }
            seen.insert(partner.identity.clone(), path.clone());
            seen_ods.insert(partner.agreement.ods.clone(), path);
            let partner = Arc::new(partner);
            match &partner.identity {
                CertificateMatch::SpkiSha256(hash) => {
                    registry.by_spki.insert(*hash, partner.clone());
                }
            }
            registry.partners.push(partner);
        }
        Ok(registry)
    }

    /// The partner a (handshake-verified) client certificate belongs to, by its key.
    pub fn identify(&self, cert: &CertIdentity) -> Option<Arc<Partner>> {
        self.by_spki.get(&cert.spki_sha256).cloned()
    }

    /// Every registered partner, in ODS order.
    pub fn partners(&self) -> &[Arc<Partner>] {
        &self.partners
    }
}

/// Registered upstream systems indexed by key hash.
#[derive(Debug, Default)]
pub struct UpstreamRegistry {
    by_spki: HashMap<[u8; 32], Arc<Upstream>>,
}

impl UpstreamRegistry {
    pub fn new(upstreams: Vec<(PathBuf, Upstream)>) -> Result<UpstreamRegistry, RegistryError> {
        let mut by_spki = HashMap::new();
        for (path, upstream) in upstreams {
            if by_spki.contains_key(&upstream.spki_sha256) {
                return Err(RegistryError::invalid(
                    &path,
                    "pins a key that another upstream already pins",
                ));
            }
            by_spki.insert(upstream.spki_sha256, Arc::new(upstream));
        }
        Ok(UpstreamRegistry { by_spki })
    }

    pub fn identify(&self, cert: &CertIdentity) -> Option<Arc<Upstream>> {
        self.by_spki.get(&cert.spki_sha256).cloned()
    }

    /// The pinned key hashes, for the upstream listener's verifier.
    pub fn pins(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.by_spki.keys()
    }

    pub fn len(&self) -> usize {
        self.by_spki.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_spki.is_empty()
    }
}

/// Everything read from the state directory, parsed and cross-checked; what a TLS snapshot is
/// built from.
#[derive(Debug)]
pub struct StateFiles {
    /// The appliance chain, leaf first; empty when no certificate is installed yet.
    pub chain: Vec<CertificateDer<'static>>,
    /// Partner CA certificates with the file each came from.
    pub trust: Vec<(PathBuf, CertificateDer<'static>)>,
    /// CRLs (as DER) with the file each came from, and their parsed summary.
    pub crls: Vec<(PathBuf, CertificateRevocationListDer<'static>, CrlInfo)>,
    pub partners: PartnerRegistry,
    pub upstreams: UpstreamRegistry,
}

/// Reads and checks every store in `state_dir`. Any broken file fails the whole load, naming
/// the file, so a caller never serves half a configuration.
pub fn load(state_dir: &Path) -> Result<StateFiles, RegistryError> {
    let chain_path = state_dir.join(CHAIN_FILE);
    let chain = match std::fs::read(&chain_path) {
        Ok(pem) => pki::parse_pem_certs(&chain_path, &pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RegistryError::io("read", &chain_path, e)),
    };

    let mut trust = Vec::new();
    for path in store::list_dir(&state_dir.join(TRUST_DIR), None)? {
        let pem = store::read(&path)?;
        for cert in pki::parse_pem_certs(&path, &pem)? {
            pki::check_ca(&path, &cert)?;
            trust.push((path.clone(), cert));
        }
    }

    let mut crls = Vec::new();
    for path in store::list_dir(&state_dir.join(CRL_DIR), None)? {
        let bytes = store::read(&path)?;
        for der in pki::parse_crls(&path, &bytes)? {
            let info = pki::crl_info(&path, &der)?;
            crls.push((path.clone(), der, info));
        }
    }

    let mut partners = Vec::new();
    for path in store::list_dir(&state_dir.join(PARTNERS_DIR), Some("toml"))? {
        let partner: Partner = store::read_toml(&path)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != partner.agreement.ods {
            return Err(RegistryError::invalid(
                &path,
                format!(
                    "file name must be the partner's ODS code ({}.toml)",
                    partner.agreement.ods
                ),
            ));
        }
        partners.push((path, partner));
    }
    let partners = PartnerRegistry::new(partners)?;

    let mut upstreams = Vec::new();
    for path in store::list_dir(&state_dir.join(UPSTREAM_DIR), Some("toml"))? {
        let upstream: Upstream = store::read_toml(&path)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != upstream.name {
            return Err(RegistryError::invalid(
                &path,
                format!(
                    "file name must be the upstream's name ({}.toml)",
                    upstream.name
                ),
            ));
        }
        upstreams.push((path, upstream));
    }
    let upstreams = UpstreamRegistry::new(upstreams)?;

    Ok(StateFiles {
        chain,
        trust,
        crls,
        partners,
        upstreams,
    })
}

/// A cheap summary (names, sizes, modification times, inodes) of every store file, so a poll
/// can tell that something changed without parsing anything. Split by what a change affects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// The appliance chain, partner CAs and CRLs: a change needs new TLS configurations.
    pub certificates: Vec<FileStamp>,
    /// Partner records: a change needs only a new partner registry.
    pub partners: Vec<FileStamp>,
    /// Upstream records: a change needs a new upstream verifier.
    pub upstreams: Vec<FileStamp>,
}

/// One file's name, size, modification time (s, ns) and inode.
pub type FileStamp = (PathBuf, u64, i64, i64, u64);

/// Stats the store files under `state_dir`. Missing directories count as empty.
pub fn fingerprint(state_dir: &Path) -> Result<Fingerprint, RegistryError> {
    let mut certificates = vec![state_dir.join(CHAIN_FILE)];
    certificates.extend(store::list_dir(&state_dir.join(TRUST_DIR), None)?);
    certificates.extend(store::list_dir(&state_dir.join(CRL_DIR), None)?);
    Ok(Fingerprint {
        certificates: stamps(certificates)?,
        partners: stamps(store::list_dir(&state_dir.join(PARTNERS_DIR), None)?)?,
        upstreams: stamps(store::list_dir(&state_dir.join(UPSTREAM_DIR), None)?)?,
    })
}

fn stamps(paths: Vec<PathBuf>) -> Result<Vec<FileStamp>, RegistryError> {
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    for path in paths {
        match std::fs::metadata(&path) {
            Ok(meta) => entries.push((
                path,
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RegistryError::io("stat", &path, e)),
        }
    }
    Ok(entries)
}

/// Serde adapter: a 32-byte hash as 64 hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out)
            .map_err(|_| serde::de::Error::custom("expected a SHA-256 as 64 hexadecimal digits"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
