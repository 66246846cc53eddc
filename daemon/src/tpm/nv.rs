//! The audit checkpoint counter: a TPM NV index of type counter (TPM2_NV_Increment), defined at
//! provisioning under the owner hierarchy, read and incremented with its own (empty) auth value.
//!
//! Why a TPM counter: it only ever goes up, and it lives outside the disk, so restoring an older
//! copy of the audit database or cutting its tail leaves the database's last checkpoint behind
//! the counter. Even deleting and re-defining the index cannot move it back: a new counter
//! starts at the highest value any counter on this TPM has had. Only a TPM clear resets it, and
//! that also destroys every key the appliance has.
//!
//! Validates: the index at `AUDIT_COUNTER_INDEX` is a counter (an ordinary index at that handle
//! could be written back to any value) and is not orderly (an orderly counter jumps forward
//! after a power loss). NV commands use no transient object slot and a password session, so
//! nothing needs flushing.

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::NvIndexType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::NvPublicBuilder;
use tss_esapi::Context;

use super::errors::{is_auth_failure, kind, tpm_err, TpmError};

/// The counter's NV index, in the owner range (TCG handle registry: 0x01800000-0x01BFFFFF).
pub const AUDIT_COUNTER_INDEX: u32 = 0x0180_4D49;

fn tpm_handle() -> Result<NvIndexTpmHandle, TpmError> {
    NvIndexTpmHandle::new(AUDIT_COUNTER_INDEX).map_err(tpm_err("name the audit counter index"))
}

/// Defines the counter (or adopts one already at the index, after checking its type) and
/// makes sure it has been written once, so it can be read. Owner auth must be set on the
/// context already (the primary key's creation does that). Returns its handle.
pub(crate) fn provision(context: &mut Context) -> Result<NvIndexHandle, TpmError> {
    let index = tpm_handle()?;
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_auth_write(true)
        .with_auth_read(true)
        // An empty auth value guards nothing, and a lockout would only stop the checkpoints.
        .with_no_da(true)
        .build()
        .map_err(tpm_err("build the audit counter's attributes"))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(index)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()
        .map_err(tpm_err("build the audit counter's definition"))?;
    let defined = context.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_define_space(Provision::Owner, None, public)
    });
    let handle = match defined {
        Ok(handle) => handle,
        // Left by an earlier provisioning of this TPM: a counter only goes up, so adopting it
        // is as safe as a new one, once `open` has checked it is a counter.
        Err(e) if kind(&e) == Some(Tss2ResponseCodeKind::NvDefined) => open(context)?,
        Err(e) if is_auth_failure(&e) => return Err(TpmError::OwnerAuthRejected),
        Err(e) => return Err(TpmError::tpm("define the audit counter", e)),
    };
    if read(context, handle).is_err() {
        // A counter cannot be read before its first increment (TPM_RC_NV_UNINITIALIZED).
        increment(context, handle)?;
    }
    Ok(handle)
}

/// Opens the provisioned counter, checking that it is one.
pub(crate) fn open(context: &mut Context) -> Result<NvIndexHandle, TpmError> {
    let index = tpm_handle()?;
    let object = context
        .tr_from_tpm_public(TpmHandle::NvIndex(index))
        .map_err(|e| match kind(&e) {
            Some(Tss2ResponseCodeKind::Handle) => TpmError::CounterMissing {
                index: AUDIT_COUNTER_INDEX,
            },
            _ => TpmError::tpm("open the audit counter", e),
        })?;
    let handle = NvIndexHandle::from(object);
    let (public, _) = context
        .nv_read_public(handle)
        .map_err(tpm_err("read the audit counter's definition"))?;
    let attributes = public.attributes();
    let is_counter = matches!(attributes.index_type(), Ok(NvIndexType::Counter));
    if !is_counter || attributes.orderly() || !attributes.auth_write() || !attributes.auth_read() {
        return Err(TpmError::CounterWrongType {
            index: AUDIT_COUNTER_INDEX,
        });
    }
    Ok(handle)
}

/// TPM2_NV_Increment.
pub(crate) fn increment(context: &mut Context, handle: NvIndexHandle) -> Result<(), TpmError> {
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_increment(NvAuth::NvIndex(handle), handle)
        })
        .map_err(tpm_err("increment the audit counter"))
}

/// TPM2_NV_Read of the counter's 8 bytes (big-endian).
pub(crate) fn read(context: &mut Context, handle: NvIndexHandle) -> Result<u64, TpmError> {
    let data = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_read(NvAuth::NvIndex(handle), handle, 8, 0)
        })
        .map_err(tpm_err("read the audit counter"))?;
    let bytes = <[u8; 8]>::try_from(data.value()).map_err(|_| {
        TpmError::tpm(
            "read the audit counter",
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}
