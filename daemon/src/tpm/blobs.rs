//! The key files in `STATE_DIR/tpm/`: marshalled TPM2B_PUBLIC (`*.pub`) and TPM2B_PRIVATE
//! (`*.priv`) blobs, the same format as tpm2-tools, plus `manifest.json`, written last, which
//! records each public blob's SHA-256 and the PCRs the replica key was sealed to.
//!
//! Validates: every file present, well-formed, unaltered (public parts against the manifest) and
//! in its right place (a swapped pair is named). Does not validate private parts: the TPM's
//! integrity check on load does that, and a failure there is reported against the file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tss_esapi::structures::{Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::errors::TpmError;
use crate::system::atomic_file::{self, Existing};

/// The directory under the state directory that holds the key files.
pub(crate) const DIR: &str = "tpm";
const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

/// The objects stored as blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Object {
    /// The TLS server key.
    Tls,
    /// The audit checkpoint key.
    Audit,
    /// The sealed replica (SQLCipher) key.
    ReplicaKey,
}

impl Object {
    pub(crate) const ALL: [Object; 3] = [Object::Tls, Object::Audit, Object::ReplicaKey];

    /// The file stem, also the manifest key.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Object::Tls => "tls",
            Object::Audit => "audit",
            Object::ReplicaKey => "replica-key",
        }
    }

    fn public_file(self) -> String {
        format!("{}.pub", self.name())
    }

    fn private_file(self) -> String {
        format!("{}.priv", self.name())
    }
}

/// What provisioning recorded about the keys.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    /// File format version.
    pub format: u32,
    /// Object name → hex SHA-256 of its `.pub` file.
    pub public_sha256: BTreeMap<String, String>,
    /// PCR bank the replica key's policy uses; always "sha256".
    pub pcr_bank: String,
    /// PCR indices the replica key is sealed to.
    pub pcrs: Vec<u8>,
    /// PCR index → hex value at sealing, used only to name the PCR that changed.
    pub pcr_values: BTreeMap<u8, String>,
}

/// One object's public and private parts, as read from disk.
pub(crate) struct Blob {
    pub public: Public,
    pub private: Private,
    /// The `.pub` file, to name it in errors.
    pub public_path: PathBuf,
    /// The `.priv` file, to name it in errors from the TPM.
    pub private_path: PathBuf,
}

/// `STATE_DIR/tpm`.
pub(crate) fn tpm_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Fails with `AlreadyProvisioned` if the key directory holds anything at all: even a partial
/// earlier attempt must be looked at by a person rather than overwritten.
pub(crate) fn ensure_absent(state_dir: &Path) -> Result<(), TpmError> {
    let dir = tpm_dir(state_dir);
    match fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(TpmError::AlreadyProvisioned { dir });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TpmError::Io {
            operation: "read directory",
            path: dir,
            source,
        }),
    }
}

/// Marshals a public area as TPM2B_PUBLIC.
pub(crate) fn marshal_public(public: &Public) -> Result<Vec<u8>, TpmError> {
    PublicBuffer::try_from(public.clone())
        .and_then(|b| b.marshall())
        .map_err(|e| TpmError::tpm("marshal a public key area", e))
}

/// Writes every object's blobs, then the manifest, each atomically (temp file, fsync, rename).
pub(crate) fn write_all(
    state_dir: &Path,
    objects: &[(Object, &Public, &Private)],
    mut manifest: Manifest,
) -> Result<(), TpmError> {
    let dir = tpm_dir(state_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| TpmError::Io {
            operation: "create directory",
            path: dir.clone(),
            source,
        })?;
    manifest.format = FORMAT;
    for (object, public, private) in objects {
        let public_bytes = marshal_public(public)?;
        manifest.public_sha256.insert(
            object.name().to_string(),
            hex::encode(Sha256::digest(&public_bytes)),
        );
        write_atomic(&dir.join(object.public_file()), &public_bytes)?;
        let value = private.value();
        let len = u16::try_from(value.len()).map_err(|_| TpmError::BlobCorrupt {
            path: dir.join(object.private_file()),
            reason: "the TPM returned a private part too large to store".into(),
        })?;
        let mut private_bytes = len.to_be_bytes().to_vec();
        private_bytes.extend_from_slice(value);
        write_atomic(&dir.join(object.private_file()), &private_bytes)?;
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| TpmError::Io {
        operation: "serialise",
        path: dir.join(MANIFEST),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&dir.join(MANIFEST), &json)
}

/// Mode 0600: the TPM directory is migd's alone.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TpmError> {
    atomic_file::write(path, bytes, 0o600, Existing::Replace, |_| Ok(())).map_err(|e| {
        TpmError::Io {
            operation: e.operation,
            path: e.path,
            source: e.source,
        }
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, TpmError> {
    fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TpmError::BlobMissing {
                path: path.to_path_buf(),
            }
        } else {
            TpmError::Io {
                operation: "read",
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads and checks the manifest. An absent or empty key directory means "not provisioned".
pub(crate) fn read_manifest(state_dir: &Path) -> Result<Manifest, TpmError> {
    let dir = tpm_dir(state_dir);
    let path = dir.join(MANIFEST);
    if !path.exists() {
        let empty = fs::read_dir(&dir)
            .map(|mut e| e.next().is_none())
            .unwrap_or(true);
        if empty {
            return Err(TpmError::NotProvisioned { dir });
        }
    }
    let bytes = read_file(&path)?;
    let corrupt = |reason: String| TpmError::BlobCorrupt {
        path: path.clone(),
        reason,
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a key manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!(
            "format {} is not the supported format {FORMAT}",
            manifest.format
        )));
    }
    if manifest.pcr_bank != "sha256" {
        return Err(corrupt(format!(
            "unsupported PCR bank {}",
            manifest.pcr_bank
        )));
    }
    for object in Object::ALL {
        if !manifest.public_sha256.contains_key(object.name()) {
            return Err(corrupt(format!("no entry for the {} key", object.name())));
        }
    }
    Ok(manifest)
}

/// Reads one object's blobs and checks the public part against the manifest.
pub(crate) fn read(
    state_dir: &Path,
    object: Object,
    manifest: &Manifest,
) -> Result<Blob, TpmError> {
    let dir = tpm_dir(state_dir);
    let public_path = dir.join(object.public_file());
    let private_path = dir.join(object.private_file());
    let public_bytes = read_file(&public_path)?;
    let private_bytes = read_file(&private_path)?;

    let digest = hex::encode(Sha256::digest(&public_bytes));
    if manifest.public_sha256.get(object.name()) != Some(&digest) {
        let holder = Object::ALL
            .into_iter()
            .find(|o| manifest.public_sha256.get(o.name()) == Some(&digest));
        let reason = match holder {
            Some(other) => format!(
                "it is the {} key's public part ({}): the files were swapped or copied over",
                other.name(),
                other.public_file()
            ),
            None => "it does not match the key recorded at provisioning (altered or replaced)"
                .to_string(),
        };
        return Err(TpmError::BlobCorrupt {
            path: public_path,
            reason,
        });
    }
    let public = unmarshal_public(&public_bytes).ok_or_else(|| TpmError::BlobCorrupt {
        path: public_path.clone(),
        reason: "not a marshalled TPM2B_PUBLIC".into(),
    })?;

    let private = match private_bytes.as_slice() {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Private::try_from(rest).ok()
        }
        _ => None,
    }
    .ok_or_else(|| TpmError::BlobCorrupt {
        path: private_path.clone(),
        reason: "not a marshalled TPM2B_PRIVATE (truncated or padded)".into(),
    })?;
    Ok(Blob {
        public,
        private,
        public_path,
        private_path,
    })
}

/// Parses a TPM2B_PUBLIC, insisting that it re-marshals to the same bytes (tpm2-tss ignores
/// trailing bytes).
fn unmarshal_public(bytes: &[u8]) -> Option<Public> {
    let buffer = PublicBuffer::unmarshall(bytes).ok()?;
    let public = Public::try_from(buffer).ok()?;
    let again = marshal_public(&public).ok()?;
    (again == bytes).then_some(public)
}
