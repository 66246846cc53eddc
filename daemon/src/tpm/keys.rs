//! The two ECC P-256 signing keys (TLS and audit): their template, creation under the storage
//! primary at provisioning, loading from blobs, and their public key as SubjectPublicKeyInfo.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{EccScheme, HashScheme, Private, Public, PublicEccParametersBuilder};
use tss_esapi::Context;

use super::blobs::Blob;
use super::errors::{is_tpm_response, tpm_err, TpmError};

/// The signing key template: fixedTPM (never exportable), fixedParent, sensitiveDataOrigin (the
/// TPM made the private key), userWithAuth with an empty auth value, sign, unrestricted (it
/// signs digests computed outside the TPM), ECDSA with SHA-256 on P-256.
pub(crate) fn template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        // Empty auth value: dictionary-attack protection would guard nothing and a lockout
        // would stop every TLS handshake.
        .with_no_da(true)
        .with_sign_encrypt(true)
        .with_restricted(false)
        .with_decrypt(false)
        .build()
        .map_err(tpm_err("build the signing key template"))?;
    let parameters = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .build()
    .map_err(tpm_err("build the signing key template"))?;
    super::primary::ecc_template(attributes, parameters, "build the signing key template")
}

/// Creates a fresh signing key under `primary`, returning its blobs.
pub(crate) fn create(
    context: &mut Context,
    primary: KeyHandle,
) -> Result<(Public, Private), TpmError> {
    let public = template()?;
    let created = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create(primary, public, None, None, None, None)
        })
        .map_err(tpm_err("create a signing key"))?;
    Ok((created.out_public, created.out_private))
}

/// Loads blobs under `primary`. A TPM refusal (integrity, wrong parent, altered attributes) is
/// reported against the private file, since that is where the TPM found the mismatch.
pub(crate) fn load_blob(
    context: &mut Context,
    primary: KeyHandle,
    blob: Blob,
    operation: &'static str,
) -> Result<KeyHandle, TpmError> {
    let Blob {
        public,
        private,
        private_path,
        ..
    } = blob;
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.load(primary, private, public)
        })
        .map_err(|e| {
            let wrapped = TpmError::tpm(operation, e);
            match wrapped {
                TpmError::Tpm { source, .. } if is_tpm_response(&source) => TpmError::BlobCorrupt {
                    path: private_path,
                    reason: format!(
                        "the TPM refused it ({source}): it was altered, swapped with another \
                             key's, or the TPM was cleared since provisioning"
                    ),
                },
                other => other,
            }
        })
}

/// Checks that a public area is one of our signing keys and returns its SPKI (DER).
pub(crate) fn spki(public: &Public) -> Result<Vec<u8>, String> {
    let expected = template().map_err(|e| e.to_string())?;
    match (public, &expected) {
        (
            Public::Ecc {
                object_attributes,
                parameters,
                unique,
                name_hashing_algorithm,
                ..
            },
            Public::Ecc {
                object_attributes: want_attributes,
                parameters: want_parameters,
                ..
            },
        ) => {
            if object_attributes != want_attributes
                || parameters != want_parameters
                || *name_hashing_algorithm != HashingAlgorithm::Sha256
            {
                return Err("it is not an ECC P-256 signing key made by migctl".into());
            }
            let mut point = vec![0x04];
            for coordinate in [unique.x().value(), unique.y().value()] {
                if coordinate.len() > 32 {
                    return Err("its public point is not on P-256".into());
                }
                point.extend(std::iter::repeat_n(0u8, 32 - coordinate.len()));
                point.extend_from_slice(coordinate);
            }
            Ok(crate::keys::spki_from_uncompressed_point(&point))
        }
        _ => Err("it is not an ECC signing key".into()),
    }
}
