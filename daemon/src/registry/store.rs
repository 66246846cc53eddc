//! Reading and changing the stores: the functions `migctl` calls. Every write is atomic (temp
//! file, fsync, rename, fsync of the directory) so a running migd never reads half a file.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::pki::{self, CrlInfo};
use super::{
    Partner, PartnerRegistry, RegistryError, Upstream, CHAIN_FILE, CRL_DIR, PARTNERS_DIR,
    TRUST_DIR, UPSTREAM_DIR,
};
use crate::keys::Signer;
use crate::system::atomic_file::{self, Existing};

/// The sorted regular files in `dir` (optionally only `*.ext`), skipping dot-files (temporary
/// files of an atomic write in progress). A missing directory is empty.
pub(crate) fn list_dir(dir: &Path, ext: Option<&str>) -> Result<Vec<PathBuf>, RegistryError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RegistryError::io("list", dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| RegistryError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if let Some(ext) = ext {
            if path.extension().and_then(|e| e.to_str()) != Some(ext) {
                continue;
            }
        }
        let file_type = entry
            .file_type()
            .map_err(|e| RegistryError::io("stat", &path, e))?;
        if file_type.is_file() || file_type.is_symlink() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| RegistryError::io("read", path, e))
}

pub(crate) fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, RegistryError> {
    let bytes = read(path)?;
    let text =
        String::from_utf8(bytes).map_err(|_| RegistryError::invalid(path, "not UTF-8 text"))?;
    toml::from_str(&text).map_err(|source| RegistryError::Toml {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temporary dot-file in the same directory, fsync,
/// rename over the target, fsync the directory (so the rename itself survives a power cut).
/// The file, and any directory created for it, belongs to the owner of the directory above
/// (the state directory's owner: the user migd runs as), mode 0640 (directories 0750), so a
/// `sudo migctl` never leaves a file migd cannot read. The owner is set before the rename: a
/// running migd never sees the file with the wrong owner.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path
        .parent()
        .ok_or_else(|| RegistryError::invalid(path, "has no parent directory"))?;
    create_dirs(dir)?;
    let owner = owner_of(dir)?;
    atomic_file::write(path, bytes, FILE_MODE, Existing::Replace, |file| {
        set_owner_and_mode(file, owner)
    })
    .map_err(|e| RegistryError::io(e.operation, &e.path, e.source))
}

/// Mode of store files and of directories made for them (the umask may only narrow these).
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

/// The owner (uid, gid) of `dir`.
fn owner_of(dir: &Path) -> Result<(u32, u32), RegistryError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| RegistryError::io("stat", dir, e))?;
    Ok((meta.uid(), meta.gid()))
}

/// Gives an open file (or directory) to `owner` and sets the mode exactly (the umask of a
/// `sudo` shell would narrow it). Only root may change an owner; anyone else writes as the
/// owner already, or into a directory they cannot give away anyway.
fn set_owner_and_mode(file: &std::fs::File, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = file.metadata()?;
    if (meta.uid(), meta.gid()) != (uid, gid) && nix::unistd::Uid::effective().is_root() {
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(file),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
    }
    let mode = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Creates `dir` and any missing parents, each owned like the directory above it.
fn create_dirs(dir: &Path) -> Result<(), RegistryError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(RegistryError::io("create directory", dir, e)),
    }
    let owner = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => owner_of(parent)?,
        None => owner_of(Path::new("."))?,
    };
    // No following a symlink swapped in meanwhile: root must not give away what it points to.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| RegistryError::io("open", dir, e))?;
    set_owner_and_mode(&handle, owner)
        .map_err(|e| RegistryError::io("set owner and mode of", dir, e))
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RegistryError::io("fsync directory", dir, e))
}

fn remove(path: &Path) -> Result<(), RegistryError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RegistryError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(RegistryError::io("remove", path, e)),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Names that become file names: letters, digits, `-` and `_` only, so no path tricks.
fn check_name(what: &str, name: &str, path_for_errors: &Path) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            path_for_errors,
            format!("{what} {name:?} must be 1-64 letters, digits, '-' or '_'"),
        ))
    }
}

/// Serialises `migctl` changes whose checks read other files (partner and upstream
/// conflicts), so two at once cannot each pass the checks against the other. Held until the
/// returned lock drops. `.registry.lock` in the state directory; migd never reads it.
fn lock(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, RegistryError> {
    let path = state_dir.join(".registry.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| RegistryError::io("open", &path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| RegistryError::io("lock", &path, e.into()))
}

/// Registers a partner as `partners/<ODS>.toml`. Refuses an invalid record, an existing ODS
/// code, a certificate already claimed by another partner, a site that is another partner's
/// ODS code and an ODS code that is another partner's site (migd would leave such a partner
/// out). Nothing is written when refused.
pub fn add_partner(state_dir: &Path, partner: &Partner) -> Result<PathBuf, RegistryError> {
    let dir = state_dir.join(PARTNERS_DIR);
    let ods = &partner.agreement.ods;
    check_name("ODS code", ods, &dir)?;
    let path = dir.join(format!("{ods}.toml"));
    partner
        .check()
        .map_err(|reason| RegistryError::invalid(&path, reason))?;
    let _lock = lock(state_dir)?;
    if path.exists() {
        return Err(RegistryError::Exists { path });
    }
    let mut all: Vec<(PathBuf, Partner)> = list_partners_with_paths(state_dir)?;
    // A site that is another partner would act as that partner (and use its standing
    // consents): refused both ways, naming the partner concerned.
    for (_, other) in &all {
        let theirs = &other.agreement;
        if let Some(site) = partner
            .agreement
            .sites
            .iter()
            .find(|s| s.eq_ignore_ascii_case(&theirs.ods))
        {
            return Err(RegistryError::invalid(
                &path,
                format!(
                    "site {site} is the ODS code of registered partner {} ({}); a site may not be another partner",
                    theirs.name, theirs.ods
                ),
            ));
        }
        if theirs.sites.iter().any(|s| s.eq_ignore_ascii_case(ods)) {
            return Err(RegistryError::invalid(
                &path,
                format!(
                    "ODS code {ods} is a site of registered partner {} ({}); a site may not be another partner",
                    theirs.name, theirs.ods
                ),
            ));
        }
    }
    all.push((path.clone(), partner.clone()));
    PartnerRegistry::new(all)?;
    let text = toml::to_string(partner).map_err(|source| RegistryError::TomlWrite {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Every partner file, each checked as migd checks it (so nothing unprintable is listed).
fn list_partners_with_paths(state_dir: &Path) -> Result<Vec<(PathBuf, Partner)>, RegistryError> {
    list_dir(&state_dir.join(PARTNERS_DIR), Some("toml"))?
        .into_iter()
        .map(|path| {
            let partner: Partner = read_toml(&path)?;
            partner
                .check()
                .map_err(|reason| RegistryError::invalid(&path, reason))?;
            Ok((path, partner))
        })
        .collect()
}

/// Every registered partner, in ODS order; a broken file is an error naming it.
pub fn list_partners(state_dir: &Path) -> Result<Vec<Partner>, RegistryError> {
    Ok(list_partners_with_paths(state_dir)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// Removes `partners/<ODS>.toml`.
pub fn remove_partner(state_dir: &Path, ods: &str) -> Result<(), RegistryError> {
    let dir = state_dir.join(PARTNERS_DIR);
    check_name("ODS code", ods, &dir)?;
    remove(&dir.join(format!("{ods}.toml")))
}

/// Registers an upstream clinical system by the key of its certificate (PEM, first
/// certificate), as `upstream/<file stem of name>.toml`. `name` is a display name like a
/// partner's ("EMIS Web" is stored as `upstream/emis-web.toml`).
pub fn add_upstream(
    state_dir: &Path,
    name: &str,
    cert_pem: &[u8],
) -> Result<PathBuf, RegistryError> {
    let dir = state_dir.join(UPSTREAM_DIR);
    let source = Path::new("<upstream certificate>");
    let certs = pki::parse_pem_certs(source, cert_pem)?;
    let identity = certs
        .first()
        .and_then(|c| pki::cert_identity(c))
        .ok_or_else(|| RegistryError::invalid(source, "no certificate"))?;
    let upstream = Upstream {
        name: name.to_string(),
        spki_sha256: identity.spki_sha256,
    };
    upstream
        .check()
        .map_err(|reason| RegistryError::invalid(&dir, reason))?;
    let path = dir.join(format!("{}.toml", super::upstream_file_stem(name)));
    let _lock = lock(state_dir)?;
    if path.exists() {
        return Err(RegistryError::Exists { path });
    }
    for existing in list_upstreams(state_dir)? {
        if existing.spki_sha256 == upstream.spki_sha256 {
            return Err(RegistryError::invalid(
                &path,
                format!("upstream {} already pins this key", existing.name),
            ));
        }
    }
    let text = toml::to_string(&upstream).map_err(|source| RegistryError::TomlWrite {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

pub fn list_upstreams(state_dir: &Path) -> Result<Vec<Upstream>, RegistryError> {
    list_dir(&state_dir.join(UPSTREAM_DIR), Some("toml"))?
        .into_iter()
        .map(|path| read_toml(&path))
        .collect()
}

/// Removes the upstream registered under display name `name`.
pub fn remove_upstream(state_dir: &Path, name: &str) -> Result<(), RegistryError> {
    let dir = state_dir.join(UPSTREAM_DIR);
    let stem = super::upstream_file_stem(name);
    check_name("upstream name", &stem, &dir)?;
    remove(&dir.join(format!("{stem}.toml")))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Adds partner CA certificate(s) from PEM; each must be a CA. One file per certificate,
/// `trust/<SHA-256 prefix>.pem`, so adding the same CA twice is harmless.
pub fn add_trust_ca(state_dir: &Path, pem: &[u8]) -> Result<Vec<PathBuf>, RegistryError> {
    let source = Path::new("<CA certificate>");
    let certs = pki::parse_pem_certs(source, pem)?;
    for cert in &certs {
        pki::check_ca(source, cert)?;
    }
    let mut written = Vec::new();
    for cert in certs {
        let hash = hex::encode(Sha256::digest(&cert));
        let path = state_dir
            .join(TRUST_DIR)
            .join(format!("{}.pem", &hash[..16]));
        write_atomic(&path, pem_encode("CERTIFICATE", &cert).as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// Installs CRL(s) (PEM or DER). Each must be signed by a partner CA in the trust store, or by
/// an intermediate CA given in `issuers_pem` that itself chains to one (intermediates are used
/// only for this check, never trusted). A CRL replaces the installed one from the same issuer,
/// unless the installed one is newer (`thisUpdate`), which is refused as a rollback.
pub fn install_crl(
    state_dir: &Path,
    crl_bytes: &[u8],
    issuers_pem: Option<&[u8]>,
) -> Result<Vec<(PathBuf, CrlInfo)>, RegistryError> {
    let source = Path::new("<CRL>");
    let crls = pki::parse_crls(source, crl_bytes)?;

    // Known CAs: the trust store, then any given intermediates that chain to it.
    let mut known: Vec<CertificateDer<'static>> = Vec::new();
    // A broken CA file must not block a revocation: the CRL needs its signer, not every CA
    // (`migctl check` reports the broken file).
    for path in list_dir(&state_dir.join(TRUST_DIR), None)? {
        if let Ok(certs) = read(&path).and_then(|pem| pki::parse_pem_certs(&path, &pem)) {
            known.extend(certs);
        }
    }
    if let Some(pem) = issuers_pem {
        let source = Path::new("<issuing CA certificates>");
        let mut pending = pki::parse_pem_certs(source, pem)?;
        loop {
            let before = pending.len();
            let mut still = Vec::new();
            for cert in pending {
                let parsed = pki::parse_cert(source, &cert)?;
                let chains = parsed.is_ca()
                    && known.iter().any(|k| {
                        pki::parse_cert(source, k).is_ok_and(|k| pki::issued_by(&parsed, &k))
                    });
                if chains {
                    known.push(cert);
                } else {
                    still.push(cert);
                }
            }
            pending = still;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
    }

    let mut installed = Vec::new();
    for der in crls {
        let crl = pki::parse_crl(source, &der)?;
        let signed = known.iter().any(|ca| {
            pki::parse_cert(source, ca).is_ok_and(|ca| {
                ca.subject() == crl.issuer() && crl.verify_signature(ca.public_key()).is_ok()
            })
        });
        if !signed {
            return Err(RegistryError::invalid(
                source,
                format!(
                    "CRL issued by {} is not signed by a partner CA in the trust store (add the CA \
                     with `migctl trust add`, or give the issuing intermediate)",
                    crl.issuer()
                ),
            ));
        }
        let issuer_hash = hex::encode(Sha256::digest(crl.issuer().as_raw()));
        let path = state_dir
            .join(CRL_DIR)
            .join(format!("{}.crl", &issuer_hash[..16]));
        if let Ok(old) = std::fs::read(&path) {
            if let Ok(old) = pki::parse_crl(&path, &old) {
                if old.last_update() > crl.last_update() {
                    return Err(RegistryError::invalid(
                        source,
                        format!(
                            "CRL from {} (thisUpdate {}) is older than the installed one ({})",
                            crl.issuer(),
                            crl.last_update(),
                            old.last_update()
                        ),
                    ));
                }
            }
        }
        let info = pki::crl_info(source, &der)?;
        write_atomic(&path, &der)?;
        installed.push((path, info));
    }
    Ok(installed)
}

/// Installs the appliance's own chain (PEM, leaf first) as `tls/chain.pem` after checking that
/// the leaf holds `signer`'s key, every certificate is in date at `now`, and each certificate
/// is signed by the next one (and a final self-signed root by itself).
pub fn install_appliance_chain(
    state_dir: &Path,
    pem: &[u8],
    signer: &dyn Signer,
    now: SystemTime,
) -> Result<PathBuf, RegistryError> {
    let source = Path::new("<appliance chain>");
    let chain = pki::parse_pem_certs(source, pem)?;
    check_appliance_chain(source, &chain, &signer.public_key_spki_der(), Some(now))?;
    let text: String = chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
    let path = state_dir.join(CHAIN_FILE);
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// The checks behind `install_appliance_chain`, also run on every reload. Validity dates are
/// checked only when `now` is given: at install. On reload an expired certificate must not
/// block unrelated changes (partners, CRLs); the reloader logs it instead.
pub(crate) fn check_appliance_chain(
    path: &Path,
    chain: &[CertificateDer<'_>],
    signer_spki: &[u8],
    now: Option<SystemTime>,
) -> Result<(), RegistryError> {
    let parsed = chain
        .iter()
        .map(|c| pki::parse_cert(path, c))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(leaf) = parsed.first() else {
        return Err(RegistryError::invalid(
            path,
            "the chain holds no certificate",
        ));
    };
    if leaf.public_key().raw != signer_spki {
        return Err(RegistryError::invalid(
            path,
            format!(
                "the leaf certificate {} does not hold this appliance's TLS key (issue it from \
                 the CSR made by `migctl csr`)",
                leaf.subject()
            ),
        ));
    }
    if let Some(now) = now {
        for cert in &parsed {
            pki::check_in_date(path, cert, now)?;
        }
    }
    for pair in parsed.windows(2) {
        let (child, parent) = (&pair[0], &pair[1]);
        if !parent.is_ca() || !pki::issued_by(child, parent) {
            return Err(RegistryError::invalid(
                path,
                format!(
                    "the chain does not build: {} is not signed by the next certificate {}",
                    child.subject(),
                    parent.subject()
                ),
            ));
        }
    }
    if let Some(last) = parsed.last() {
        if parsed.len() > 1 && last.subject() == last.issuer() && !pki::issued_by(last, last) {
            return Err(RegistryError::invalid(
                path,
                format!("the root {} is not validly self-signed", last.subject()),
            ));
        }
    }
    Ok(())
}
