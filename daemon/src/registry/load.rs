//! Reading the whole state directory, one file at a time (SPEC §9): a file that cannot be read
//! or parsed is skipped and reported, and never stops the others from applying. What the bad
//! file describes fails closed:
//!
//! - appliance chain: the previously applied chain keeps serving (at start, migd refuses to);
//! - partner CA (`trust/`): not trusted, so its partners are refused;
//! - CRL (`crl/`): the CRL previously applied from that file stays in force, so no revocation
//!   is silently dropped; with none (migd just started, or a new file), the partner CA it names
//!   (`<issuer hash>.crl`, as `migctl crl install` writes) or, if that is unknown, every partner
//!   CA is not trusted until the file is fixed;
//! - partner (`partners/`): not registered, so its old agreement is not in force either;
//! - upstream (`upstream/`): not pinned.
//!
//! A directory that cannot be listed counts as every file in it being bad.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::pki;
use super::store;
use super::{
    Applied, Partner, PartnerRegistry, Problem, RegistryError, StateFiles, Upstream,
    UpstreamRegistry, CHAIN_FILE, CRL_DIR, PARTNERS_DIR, TRUST_DIR, UPSTREAM_DIR,
};

/// Reads every store in `state_dir`, file by file. `previous` is what the last load applied
/// (`None` at start); it stands in for a chain or CRL file that has become unreadable.
pub fn load(state_dir: &Path, previous: Option<&Applied>) -> StateFiles {
    let mut problems = Vec::new();
    let chain_path = state_dir.join(CHAIN_FILE);
    let chain = match std::fs::read(&chain_path) {
        Ok(pem) => pki::parse_pem_certs(&chain_path, &pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(RegistryError::io("read", &chain_path, e)),
    };
    let chain = match (chain, previous) {
        (Ok(chain), _) => chain,
        (Err(error), Some(previous)) if !previous.chain.is_empty() => {
            problems.push(Problem::new(
                &chain_path,
                error,
                "the previous appliance certificate keeps serving",
            ));
            previous.chain.clone()
        }
        (Err(error), _) => {
            problems.push(Problem::new(
                &chain_path,
                error,
                "no appliance certificate: partners cannot connect",
            ));
            Vec::new()
        }
    };

    let mut trust = Vec::new();
    let (trust_files, trust_listing) = listing(state_dir, TRUST_DIR, None);
    if let Some(error) = trust_listing {
        problems.push(Problem::new(
            &state_dir.join(TRUST_DIR),
            error,
            "no partner CA is trusted: every partner is refused",
        ));
    }
    for path in trust_files {
        let certs = store::read(&path)
            .and_then(|pem| pki::parse_pem_certs(&path, &pem))
            .and_then(|certs| {
                certs.iter().try_for_each(|c| pki::check_ca(&path, c))?;
                Ok(certs)
            });
        match certs {
            Ok(certs) => trust.extend(certs.into_iter().map(|c| (path.clone(), c))),
            Err(error) => problems.push(Problem::new(
                &path,
                error,
                "this CA is not trusted: its partners are refused",
            )),
        }
    }

    let mut crls = Vec::new();
    // Files with no usable CRL and no previous one: the CAs they may cover are dropped below.
    let mut uncovered: Vec<PathBuf> = Vec::new();
    let (crl_files, crl_listing) = listing(state_dir, CRL_DIR, None);
    let previous_crls = |path: &Path| -> Vec<_> {
        previous
            .map(|p| {
                p.crls
                    .iter()
                    .filter(|(from, _, _)| from == path || path.is_dir())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(error) = crl_listing {
        let dir = state_dir.join(CRL_DIR);
        let kept = previous_crls(&dir);
        let consequence = match previous {
            Some(_) => "the CRLs previously applied stay in force",
            None => "no revocation list is known: every partner CA is distrusted",
        };
        problems.push(Problem::new(&dir, error, consequence));
        if previous.is_none() {
            uncovered.push(dir.clone());
        }
        crls.extend(kept);
    }
    for path in crl_files {
        let parsed = store::read(&path)
            .and_then(|bytes| pki::parse_crls(&path, &bytes))
            .and_then(|ders| {
                ders.into_iter()
                    .map(|der| pki::crl_info(&path, &der).map(|info| (path.clone(), der, info)))
                    .collect::<Result<Vec<_>, _>>()
            });
        match parsed {
            Ok(parsed) => crls.extend(parsed),
            Err(error) => {
                let kept = previous_crls(&path);
                let consequence = if kept.is_empty() {
                    uncovered.push(path.clone());
                    "no earlier copy of this CRL is known: the partner CA it covers is \
                     distrusted until it is fixed"
                } else {
                    "the CRL previously applied from this file stays in force"
                };
                problems.push(Problem::new(&path, error, consequence));
                crls.extend(kept);
            }
        }
    }
    for path in uncovered {
        distrust_covered(&path, &mut trust, &mut problems);
    }

    let mut partners = Vec::new();
    let mut unreadable_ods = Vec::new();
    let (partner_files, partner_listing) = listing(state_dir, PARTNERS_DIR, Some("toml"));
    if let Some(error) = partner_listing {
        problems.push(Problem::new(
            &state_dir.join(PARTNERS_DIR),
            error,
            "no partner is registered: every partner is refused",
        ));
    }
    for path in partner_files {
        let stem = stem(&path);
        match read_partner(&path, &stem) {
            Ok(partner) => partners.push((path, partner)),
            Err(error) => {
                unreadable_ods.push(stem);
                problems.push(Problem::new(
                    &path,
                    error,
                    "this partner is not registered: it is refused",
                ));
            }
        }
    }
    let (partners, conflicts) = PartnerRegistry::index(partners, &unreadable_ods);
    problems.extend(conflicts.into_iter().map(|error| {
        Problem::new(
            error_path(&error),
            &error,
            "this partner is not registered: it is refused",
        )
    }));

    let mut upstreams = Vec::new();
    let (upstream_files, upstream_listing) = listing(state_dir, UPSTREAM_DIR, Some("toml"));
    if let Some(error) = upstream_listing {
        problems.push(Problem::new(
            &state_dir.join(UPSTREAM_DIR),
            error,
            "no clinical system is registered: updates are refused",
        ));
    }
    for path in upstream_files {
        match read_upstream(&path) {
            Ok(upstream) => upstreams.push((path, upstream)),
            Err(error) => problems.push(Problem::new(
                &path,
                error,
                "this clinical system is not registered: its updates are refused",
            )),
        }
    }
    let (upstreams, conflicts) = UpstreamRegistry::index(upstreams);
    problems.extend(conflicts.into_iter().map(|error| {
        Problem::new(
            error_path(&error),
            &error,
            "neither clinical system pinning this key is registered",
        )
    }));

    StateFiles {
        chain,
        trust,
        crls,
        partners,
        upstreams,
        problems,
    }
}

/// Everything `migctl check` reports about the store files: what `load` would skip, and every
/// file or directory that the state directory's owner (the user migd runs as) could not read,
/// which migctl, running as root, reads regardless.
pub fn problems_for_check(state_dir: &Path) -> (StateFiles, Vec<Problem>) {
    use std::os::unix::fs::MetadataExt;
    let files = load(state_dir, None);
    let mut problems = files.problems.clone();
    let Ok(owner) = std::fs::metadata(state_dir) else {
        return (files, problems);
    };
    let (uid, gid) = (owner.uid(), owner.gid());
    let mut paths = vec![state_dir.join(CHAIN_FILE)];
    for dir in [TRUST_DIR, CRL_DIR, PARTNERS_DIR, UPSTREAM_DIR] {
        let dir = state_dir.join(dir);
        paths.push(dir.clone());
        paths.extend(store::list_dir(&dir, None).unwrap_or_default());
    }
    for path in paths {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let need = if meta.is_dir() { 0o5 } else { 0o4 };
        let mode = meta.mode();
        let readable = if meta.uid() == uid {
            (mode >> 6) & need == need
        } else if meta.gid() == gid {
            (mode >> 3) & need == need
        } else {
            mode & need == need
        };
        if !readable && !problems.iter().any(|p| p.path == path) {
            problems.push(Problem::found(
                &path,
                format!(
                    "{}: owned by uid {} gid {} mode {:04o}, which migd (uid {uid}) cannot read",
                    path.display(),
                    meta.uid(),
                    meta.gid(),
                    mode & 0o7777
                ),
                format!("skipped by migd: `chown {uid}:{gid}` it (migctl does this itself)"),
            ));
        }
    }
    (files, problems)
}

fn listing(
    state_dir: &Path,
    dir: &str,
    ext: Option<&str>,
) -> (Vec<PathBuf>, Option<RegistryError>) {
    match store::list_dir(&state_dir.join(dir), ext) {
        Ok(files) => (files, None),
        Err(error) => (Vec::new(), Some(error)),
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_owned()
}

fn error_path(error: &RegistryError) -> &Path {
    match error {
        RegistryError::Io { path, .. }
        | RegistryError::Toml { path, .. }
        | RegistryError::TomlWrite { path, .. }
        | RegistryError::Invalid { path, .. }
        | RegistryError::Exists { path }
        | RegistryError::NotFound { path } => path,
    }
}

fn read_partner(path: &Path, stem: &str) -> Result<Partner, RegistryError> {
    let partner: Partner = store::read_toml(path)?;
    partner
        .check()
        .map_err(|reason| RegistryError::invalid(path, reason))?;
    if stem != partner.agreement.ods {
        return Err(RegistryError::invalid(
            path,
            format!(
                "file name must be the partner's ODS code ({}.toml)",
                partner.agreement.ods
            ),
        ));
    }
    Ok(partner)
}

fn read_upstream(path: &Path) -> Result<Upstream, RegistryError> {
    let upstream: Upstream = store::read_toml(path)?;
    upstream
        .check()
        .map_err(|reason| RegistryError::invalid(path, reason))?;
    let want = super::upstream_file_stem(&upstream.name);
    if stem(path) != want {
        return Err(RegistryError::invalid(
            path,
            format!("file name must follow the upstream's name ({want}.toml)"),
        ));
    }
    Ok(upstream)
}

/// Drops the trust anchors a CRL file with no usable content may cover: the CA whose subject
/// hash names the file (`migctl crl install` names it so), else every CA, since an unknown CRL
/// could revoke under any of them.
fn distrust_covered(
    path: &Path,
    trust: &mut Vec<(PathBuf, CertificateDer<'static>)>,
    problems: &mut Vec<Problem>,
) {
    let name = stem(path);
    let subject_hash = |der: &CertificateDer<'_>| {
        pki::parse_cert(path, der)
            .map(|c| hex::encode(Sha256::digest(c.subject().as_raw())))
            .unwrap_or_default()
    };
    let named = name.len() == 16
        && trust
            .iter()
            .any(|(_, der)| subject_hash(der).starts_with(&name));
    let before = trust.len();
    trust.retain(|(_, der)| named && !subject_hash(der).starts_with(&name));
    if trust.len() < before {
        let which = if named {
            "the CA it names"
        } else {
            "every partner CA"
        };
        problems.push(Problem::found(
            path,
            format!(
                "{}: {} distrusted while this CRL is unusable",
                path.display(),
                which
            ),
            "partners under it are refused",
        ));
    }
}

/// A cheap summary (names, sizes, times, inodes) of every store file, so a poll can tell that
/// something changed without parsing anything. Split by what a change affects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// The appliance chain, partner CAs and CRLs: a change needs new TLS configurations.
    pub certificates: Vec<FileStamp>,
    /// Partner records: a change needs only a new partner registry.
    pub partners: Vec<FileStamp>,
    /// Upstream records: a change needs a new upstream verifier.
    pub upstreams: Vec<FileStamp>,
}

/// One file's name, size, modification time (s, ns), inode and change time (s, ns): the change
/// time moves on `chmod` and `chown`, so fixing a file's owner is noticed too. A file or
/// directory that cannot be listed or stat'ed gets zeros, so its repair is a change as well.
pub type FileStamp = (PathBuf, u64, i64, i64, u64, i64, i64);

/// Stats the store files under `state_dir`. Never fails: a poll must go on seeing changes to
/// the other files whatever one of them is like.
pub fn fingerprint(state_dir: &Path) -> Fingerprint {
    let list = |dir: &str| -> Vec<PathBuf> {
        let dir = state_dir.join(dir);
        // A directory that cannot be listed stands for itself.
        store::list_dir(&dir, None).unwrap_or_else(|_| vec![dir])
    };
    let mut certificates = vec![state_dir.join(CHAIN_FILE)];
    certificates.extend(list(TRUST_DIR));
    certificates.extend(list(CRL_DIR));
    Fingerprint {
        certificates: stamps(certificates),
        partners: stamps(list(PARTNERS_DIR)),
        upstreams: stamps(list(UPSTREAM_DIR)),
    }
}

fn stamps(paths: Vec<PathBuf>) -> Vec<FileStamp> {
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
                meta.ctime(),
                meta.ctime_nsec(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => entries.push((path, 0, 0, 0, 0, 0, 0)),
        }
    }
    entries
}
