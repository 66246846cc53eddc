//! The replica key: 32 random bytes from the TPM, sealed under a PCR policy (SHA-256 bank, PCRs
//! from config) at provisioning, and unsealed once per start through a policy session.
//!
//! Validates: the PCRs now equal those at sealing (the TPM enforces it; we only name the PCR that
//! moved). Sessions that carry the key (GetRandom, Create, Unseal) are salted with the storage
//! primary and encrypt it, so the key never crosses the TPM bus in clear.

use std::collections::BTreeMap;

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public,
    PublicBuilder, PublicKeyedHashParameters, SensitiveData, SymmetricDefinition,
};
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::errors::{kind, tpm_err, TpmError};

/// Length of the replica key.
pub const REPLICA_KEY_LEN: usize = 32;

/// Checks the configured PCR indices and builds the SHA-256 selection.
pub(crate) fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let bad = |reason| TpmError::BadPcrSelection {
        pcrs: pcrs.to_vec(),
        reason,
    };
    if pcrs.is_empty() {
        return Err(bad("the replica key must be sealed to at least one PCR"));
    }
    let mut slots = Vec::with_capacity(pcrs.len());
    for &pcr in pcrs {
        if pcr > 23 {
            return Err(bad("PCR indices run from 0 to 23"));
        }
        let slot =
            PcrSlot::try_from(1u32 << pcr).map_err(|_| bad("PCR indices run from 0 to 23"))?;
        if slots.contains(&slot) {
            return Err(bad("a PCR is listed twice"));
        }
        slots.push(slot);
    }
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|_| bad("tpm2-tss refused the selection"))
}

/// Reads the current SHA-256 values of `pcrs`, as index → hex.
pub(crate) fn read_pcrs(
    context: &mut Context,
    pcrs: &[u8],
) -> Result<BTreeMap<u8, String>, TpmError> {
    let data = tss_esapi::abstraction::pcr::read_all(context, selection(pcrs)?)
        .map_err(tpm_err("read PCRs"))?;
    let bank =
        data.pcr_bank(HashingAlgorithm::Sha256)
            .ok_or_else(|| TpmError::BadPcrSelection {
                pcrs: pcrs.to_vec(),
                reason: "this TPM has no SHA-256 PCR bank enabled",
            })?;
    let mut values = BTreeMap::new();
    for &pcr in pcrs {
        let slot = PcrSlot::try_from(1u32 << pcr).map_err(tpm_err("read PCRs"))?;
        if let Some(digest) = bank.get_digest(slot) {
            values.insert(pcr, hex::encode(digest.value()));
        }
    }
    Ok(values)
}

/// Starts a policy (or trial) session, optionally salted with `salt_key`, with parameter
/// encryption of responses when salted.
fn start_policy_session(
    context: &mut Context,
    session_type: SessionType,
    salt_key: Option<KeyHandle>,
) -> Result<PolicySession, TpmError> {
    let session = context
        .start_auth_session(
            salt_key,
            None,
            None,
            session_type,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(tpm_err("start a policy session"))?
        .ok_or_else(|| {
            TpmError::tpm(
                "start a policy session",
                tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
            )
        })?;
    if salt_key.is_some() {
        let (attributes, mask) = SessionAttributesBuilder::new().with_encrypt(true).build();
        if let Err(e) = context.tr_sess_set_attributes(session, attributes, mask) {
            flush_session(context, session);
            return Err(TpmError::tpm("set policy session attributes", e));
        }
    }
    PolicySession::try_from(session).map_err(|e| {
        flush_session(context, session);
        TpmError::tpm("start a policy session", e)
    })
}

fn flush_session(context: &mut Context, session: AuthSession) {
    // Best effort: a failure here leaves a session slot used until the TPM or the context goes;
    // the original error is the one worth reporting.
    let _ = context.flush_context(SessionHandle::from(session).into());
}

/// Computes the policy digest "PolicyPCR over the current values of `pcrs`" with a trial session.
fn policy_digest(context: &mut Context, pcrs: &[u8]) -> Result<Digest, TpmError> {
    let selection = selection(pcrs)?;
    let session = start_policy_session(context, SessionType::Trial, None)?;
    // An empty PCR digest tells the TPM to use the PCRs' current values.
    let result = context
        .policy_pcr(session, Digest::default(), selection)
        .map_err(tpm_err("compute the PCR policy"))
        .and_then(|()| {
            context
                .policy_get_digest(session)
                .map_err(tpm_err("compute the PCR policy"))
        });
    flush_session(context, session.into());
    result
}

/// Creates the sealed replica key under `primary`: 32 bytes from TPM2_GetRandom, sealed to the
/// current values of `pcrs`. Returns the blobs; the secret itself never leaves this function.
/// Both commands run in a session salted with the primary that encrypts the secret on the bus.
pub(crate) fn create(
    context: &mut Context,
    primary: KeyHandle,
    pcrs: &[u8],
) -> Result<(Public, Private), TpmError> {
    let policy = policy_digest(context, pcrs)?;
    let session = start_salted_hmac_session(context, primary)?;
    let result = create_in_session(context, primary, session, policy);
    flush_session(context, session);
    result
}

/// A HMAC session salted with `salt_key` (ECDH), so its key is unknown to a bus observer.
fn start_salted_hmac_session(
    context: &mut Context,
    salt_key: KeyHandle,
) -> Result<AuthSession, TpmError> {
    context
        .start_auth_session(
            Some(salt_key),
            None,
            None,
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(tpm_err("start an encrypted session"))?
        .ok_or_else(|| {
            TpmError::tpm(
                "start an encrypted session",
                tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
            )
        })
}

/// Sets which direction a session encrypts: the first parameter of the response (`encrypt`)
/// and/or of the command (`decrypt`); the TPM refuses decrypt on a command without one.
fn set_encryption(
    context: &mut Context,
    session: AuthSession,
    encrypt: bool,
    decrypt: bool,
) -> Result<(), TpmError> {
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_encrypt(encrypt)
        .with_decrypt(decrypt)
        .build();
    context
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(tpm_err("set session attributes"))
}

fn create_in_session(
    context: &mut Context,
    primary: KeyHandle,
    session: AuthSession,
    policy: Digest,
) -> Result<(Public, Private), TpmError> {
    set_encryption(context, session, true, false)?;
    let secret = context
        .execute_with_session(Some(session), |ctx| ctx.get_random(REPLICA_KEY_LEN))
        .map_err(tpm_err("get random bytes for the replica key"))?;
    if secret.value().len() != REPLICA_KEY_LEN {
        return Err(TpmError::tpm(
            "get random bytes for the replica key",
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        ));
    }
    let sensitive =
        SensitiveData::try_from(secret.value()).map_err(tpm_err("seal the replica key"))?;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        // Only the PCR policy may release it: no password use, and admin actions by policy too.
        .with_user_with_auth(false)
        .with_admin_with_policy(true)
        .with_no_da(true)
        .build()
        .map_err(tpm_err("build the sealed object template"))?;
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(tpm_err("build the sealed object template"))?;
    set_encryption(context, session, false, true)?;
    // The salted session also authorizes the primary (its auth value is empty).
    let created = context
        .execute_with_session(Some(session), |ctx| {
            ctx.create(primary, public, None, Some(sensitive), None, None)
        })
        .map_err(tpm_err("seal the replica key"))?;
    Ok((created.out_public, created.out_private))
}

/// Why an unseal failed, before the caller names the changed PCRs.
pub(crate) enum UnsealError {
    /// The TPM's policy check failed: the PCRs are not what they were at sealing.
    PolicyFailed,
    /// Anything else.
    Other(TpmError),
}

/// Unseals the loaded sealed object `sealed`, salting the session with `primary`.
pub(crate) fn unseal(
    context: &mut Context,
    primary: KeyHandle,
    sealed: ObjectHandle,
    pcrs: &[u8],
) -> Result<Zeroizing<[u8; REPLICA_KEY_LEN]>, UnsealError> {
    let selection = selection(pcrs).map_err(UnsealError::Other)?;
    let session = start_policy_session(context, SessionType::Policy, Some(primary))
        .map_err(UnsealError::Other)?;
    let result = context
        .policy_pcr(session, Digest::default(), selection)
        .map_err(|e| UnsealError::Other(TpmError::tpm("apply the PCR policy", e)))
        .and_then(|()| {
            context
                .execute_with_session(Some(session.into()), |ctx| ctx.unseal(sealed))
                .map_err(|e| match kind(&e) {
                    Some(Tss2ResponseCodeKind::PolicyFail) => UnsealError::PolicyFailed,
                    _ => UnsealError::Other(TpmError::tpm("unseal the replica key", e)),
                })
        });
    flush_session(context, session.into());
    let data = result?;
    if data.value().len() != REPLICA_KEY_LEN {
        return Err(UnsealError::Other(TpmError::tpm(
            "unseal the replica key",
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        )));
    }
    // Copy straight into the zeroizing buffer: no un-wiped intermediate on the stack.
    let mut key = Zeroizing::new([0u8; REPLICA_KEY_LEN]);
    key.copy_from_slice(data.value());
    Ok(key)
}
