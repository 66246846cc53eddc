//! The on-disk stores in the state directory that decide who may connect: the appliance's
//! certificate chain, partner CAs, CRLs, registered partners and upstream clinical systems.
//!
//! Validates, file by file (a bad file is skipped and reported, see `load`): every file parses
//! (TOML with unknown keys refused, PEM/DER certificates and CRLs), partner file names match
//! their ODS codes, names are printable and bounded, no two partners claim the same certificate
//! or ODS code, no site is another partner; and on install that CAs are CAs, CRLs are signed by
//! a trusted CA and the appliance chain matches its key. Does not validate: client certificate
//! paths or revocation (rustls/webpki do that in the handshake, see `tls`), nor what an
//! agreement allows (the policy engine).
//!
//! Layout under the state directory:
//! `tls/chain.pem` (leaf first), `trust/*.pem`, `crl/*` (PEM or DER), `partners/<ODS>.toml`,
//! `upstream/<name stem>.toml`. Files whose names start with `.` are ignored (temporary files).
//! `migctl` writes them owned by the state directory's owner (migd's user), see `write_atomic`.

mod load;
mod pki;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::{Deserialize, Serialize};

use mig_policy::Agreement;

pub use load::{fingerprint, load, problems_for_check, FileStamp, Fingerprint};
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
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TOML store file does not parse or has unknown keys (the message carries line and column).
    #[error("{}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A record could not be written as TOML.
    #[error("cannot write {} as TOML", path.display())]
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

/// A store file (or directory) that could not be applied, and what migd does instead. Each
/// file applies on its own (SPEC §9): a bad one is skipped and reported, never blocking the
/// others, and what it describes fails closed (see `load`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What is wrong with it; the message names the file.
    pub error: String,
    /// What is done instead, for the operator.
    pub consequence: String,
}

impl Problem {
    fn new(path: &Path, error: impl std::error::Error, consequence: impl Into<String>) -> Self {
        Problem {
            path: path.to_path_buf(),
            error: crate::error::Chain(&error).to_string(),
            consequence: consequence.into(),
        }
    }

    /// A problem that is a finding, not an error value.
    fn found(path: &Path, what: String, consequence: impl Into<String>) -> Self {
        Problem {
            path: path.to_path_buf(),
            error: what,
            consequence: consequence.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error, self.consequence)
    }
}

/// Longest display name (partner or upstream) accepted, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;

/// A display name (a partner's or upstream's `name`): 1 to 100 printable characters, spaces
/// allowed ("EMIS Web"), no leading or trailing space, and nothing that could forge or hide
/// text where it is printed (control characters, bidirectional overrides, zero-width marks).
pub fn check_display_name(what: &str, name: &str) -> Result<(), String> {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
    };
    if name.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.trim() != name {
        return Err(format!("{what} {name:?} starts or ends with a space"));
    }
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(format!(
            "{what} is longer than {MAX_DISPLAY_NAME} characters"
        ));
    }
    if let Some(c) = name.chars().find(|c| invisible(*c)) {
        return Err(format!(
            "{what} {name:?} holds the unprintable character U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// An ODS code as partner files hold it: 3 to 6 upper-case letters or digits.
fn check_ods(what: &str, code: &str) -> Result<(), String> {
    let ok = (3..=6).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {code:?} is not an ODS code (3 to 6 upper-case letters or digits)"
        ))
    }
}

/// The file name an upstream's display name is stored under: lower-case letters and digits,
/// other runs as one `-` ("EMIS Web" → `emis-web`).
pub fn upstream_file_stem(name: &str) -> String {
    let mut stem = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            stem.push(c.to_ascii_lowercase());
        } else if !stem.is_empty() && !stem.ends_with('-') {
            stem.push('-');
        }
    }
    while stem.ends_with('-') {
        stem.pop();
    }
    stem
}

impl Partner {
    /// What a partner record must satisfy on its own, wherever it comes from: a valid ODS code
    /// and sites, and a printable bounded name.
    pub fn check(&self) -> Result<(), String> {
        let a = &self.agreement;
        check_ods("ODS code", &a.ods)?;
        for site in &a.sites {
            check_ods("site", site)?;
        }
        check_display_name("name", &a.name)
    }
}

impl Upstream {
    pub fn check(&self) -> Result<(), String> {
        check_display_name("upstream name", &self.name)?;
        if upstream_file_stem(&self.name).is_empty() {
            return Err(format!(
                "upstream name {:?} needs at least one letter or digit",
                self.name
            ));
        }
        Ok(())
    }
}

/// Registered partners indexed by how their certificates are matched.
#[derive(Debug, Default)]
pub struct PartnerRegistry {
    partners: Vec<Arc<Partner>>,
    by_spki: HashMap<[u8; 32], Arc<Partner>>,
}

impl PartnerRegistry {
    /// Indexes `partners` (each paired with the file it came from, for error messages),
    /// refusing any conflict: the first is an error naming both files.
    pub fn new(partners: Vec<(PathBuf, Partner)>) -> Result<PartnerRegistry, RegistryError> {
        let (registry, mut conflicts) = PartnerRegistry::index(partners, &[]);
        match conflicts.is_empty() {
            true => Ok(registry),
            false => Err(conflicts.remove(0)),
        }
    }

    /// Indexes `partners`, leaving out every one in conflict (fail closed: none of them is
    /// chosen over another) and returning why: two files claiming one certificate or one ODS
    /// code (both left out), or a partner whose site is another partner's ODS code (it would
    /// act as that partner and use its standing consents; the claimant is left out).
    /// `other_ods` are ODS codes of partner files that could not be read: still not a site.
    pub(crate) fn index(
        partners: Vec<(PathBuf, Partner)>,
        other_ods: &[String],
    ) -> (PartnerRegistry, Vec<RegistryError>) {
        let mut conflicts = Vec::new();
        let mut keep = vec![true; partners.len()];
        for (i, (path, partner)) in partners.iter().enumerate() {
            for (j, (other_path, other)) in partners.iter().enumerate() {
                if i == j {
                    continue;
                }
                let same_cert = partner.identity == other.identity;
                let same_ods = partner
                    .agreement
                    .ods
                    .eq_ignore_ascii_case(&other.agreement.ods);
                let site = partner
                    .agreement
                    .sites
                    .iter()
                    .find(|s| s.eq_ignore_ascii_case(&other.agreement.ods));
                let reason = if same_cert && i > j {
                    Some(format!(
                        "claims the same certificate as {}; a certificate identifies one partner",
                        other_path.display()
                    ))
                } else if same_ods && i > j {
                    Some(format!(
                        "ODS code also registered in {}",
                        other_path.display()
                    ))
                } else {
                    site.map(|site| {
                        format!(
                            "site {site} is the ODS code of the partner registered in {}; a site \
                             may not be another partner",
                            other_path.display()
                        )
                    })
                };
                if let Some(reason) = reason {
                    keep[i] = false;
                    if same_cert || same_ods {
                        keep[j] = false;
                    }
                    conflicts.push(RegistryError::invalid(path, reason));
                }
            }
            if let Some(site) = partner
                .agreement
                .sites
                .iter()
                .find(|s| other_ods.iter().any(|o| o.eq_ignore_ascii_case(s)))
            {
                keep[i] = false;
                conflicts.push(RegistryError::invalid(
                    path,
                    format!(
                        "site {site} is the ODS code of a partner whose file is unreadable; a \
                         site may not be another partner"
                    ),
                ));
            }
        }
        let mut registry = PartnerRegistry::default();
        for ((_, partner), keep) in partners.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            let partner = Arc::new(partner);
            match &partner.identity {
                CertificateMatch::SpkiSha256(hash) => {
                    registry.by_spki.insert(*hash, partner.clone());
                }
            }
            registry.partners.push(partner);
        }
        (registry, conflicts)
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
    /// Indexes `upstreams`; two pinning one key are both left out (fail closed), with why.
    pub(crate) fn index(
        upstreams: Vec<(PathBuf, Upstream)>,
    ) -> (UpstreamRegistry, Vec<RegistryError>) {
        let mut conflicts = Vec::new();
        let mut by_spki = HashMap::new();
        let mut pinned_twice = std::collections::HashSet::new();
        for (i, (path, upstream)) in upstreams.iter().enumerate() {
            if let Some((other, _)) = upstreams[..i]
                .iter()
                .find(|(_, u)| u.spki_sha256 == upstream.spki_sha256)
            {
                pinned_twice.insert(upstream.spki_sha256);
                conflicts.push(RegistryError::invalid(
                    path,
                    format!("pins the key that {} already pins", other.display()),
                ));
            }
        }
        for (_, upstream) in upstreams {
            if !pinned_twice.contains(&upstream.spki_sha256) {
                by_spki.insert(upstream.spki_sha256, Arc::new(upstream));
            }
        }
        (UpstreamRegistry { by_spki }, conflicts)
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
/// built from. `problems` lists every file that was not applied and what was done instead.
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
    pub problems: Vec<Problem>,
}

/// What a load keeps from the one before when a file it applied has become unreadable.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub chain: Vec<CertificateDer<'static>>,
    pub crls: Vec<(PathBuf, CertificateRevocationListDer<'static>, CrlInfo)>,
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
