//! The storage primary key: recreated from a fixed template under the owner hierarchy on every
//! start (the TPM derives the same key from its seed each time), never stored.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, EccPoint, Public, PublicBuilder, PublicEccParameters, PublicEccParametersBuilder,
    SymmetricDefinitionObject,
};
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::errors::{is_auth_failure, tpm_err, TpmError};

/// The fixed template: ECC P-256 restricted decryption (storage) key, AES-128-CFB for its
/// children, like the TCG SRK template. Changing any field changes the key and orphans every
/// blob made under it, so this must never change once boxes are in the field.
pub(crate) fn template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        // Empty auth value: dictionary-attack protection would guard nothing and a lockout
        // would only stop the appliance from starting.
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(tpm_err("build the primary key template"))?;
    let parameters = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .map_err(tpm_err("build the primary key template"))?;
    ecc_template(attributes, parameters, "build the primary key template")
}

/// An ECC key template with SHA-256 names, as every key of ours has.
pub(crate) fn ecc_template(
    attributes: ObjectAttributes,
    parameters: PublicEccParameters,
    operation: &'static str,
) -> Result<Public, TpmError> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(tpm_err(operation))
}

/// Creates (re-derives) the storage primary. The caller must flush it.
pub(crate) fn create(
    context: &mut Context,
    owner_auth: Option<&Zeroizing<Vec<u8>>>,
) -> Result<KeyHandle, TpmError> {
    let auth = match owner_auth {
        Some(secret) => Auth::try_from(secret.as_slice()).map_err(|_| TpmError::BadOwnerAuth)?,
        None => Auth::default(),
    };
    context
        .tr_set_auth(ObjectHandle::Owner, auth)
        .map_err(tpm_err("set the owner hierarchy password"))?;
    let public = template()?;
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
        })
        .map(|result| result.key_handle)
        .map_err(|e| {
            if is_auth_failure(&e) {
                TpmError::OwnerAuthRejected
            } else {
                TpmError::tpm("create the storage primary key", e)
            }
        })
}
