//! The TPM module's one error type. Every Display is a single line that names the cause and what
//! the operator should do, because migd prints it as its last word before refusing to start.

use std::path::PathBuf;

use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string from the config is not one tpm2-tss understands.
    #[error("TPM connection string {tcti:?} is not valid; use device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=N or tabrmd")]
    BadTcti {
        /// The string as configured.
        tcti: String,
    },
    /// No TPM answered on the configured TCTI.
    #[error("no TPM reachable at {tcti} ({}); check that the TPM is enabled in firmware (or that swtpm is running) and that the tcti setting is right", describe(source))]
    NoTpm {
        /// The TCTI that was tried.
        tcti: String,
        /// What tpm2-tss reported.
        source: tss_esapi::Error,
    },
    /// The PCR selection in the config cannot be used.
    #[error("PCR selection {pcrs:?} is not usable: {reason}; list SHA-256 PCR indices 0-23, e.g. pcrs = [7]")]
    BadPcrSelection {
        /// The configured indices.
        pcrs: Vec<u8>,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A PCR selection string (config or command line) does not parse.
    #[error("PCR selection {text:?} is not valid: {reason}; write it as sha256:7 or sha256:0,2,7")]
    BadPcrSelectionText {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The state directory holds no TPM keys at all.
    #[error("the appliance is not provisioned: no TPM keys in {}; run `migctl init` first", dir.display())]
    NotProvisioned {
        /// The `tpm/` directory that was looked in.
        dir: PathBuf,
    },
    /// Provisioning was asked for, but keys already exist: overwriting them would lose the replica.
    #[error("TPM keys already exist in {}; refusing to overwrite them (the replica key would be lost); use a fresh state directory to re-provision", dir.display())]
    AlreadyProvisioned {
        /// The `tpm/` directory that holds them.
        dir: PathBuf,
    },
    /// Keys are already loaded into this TPM service.
    #[error("TPM keys are already loaded in this process; load them once at start-up")]
    AlreadyLoaded,
    /// An operation needed the keys, but `load` has not succeeded yet.
    #[error("TPM keys are not loaded; call load after provisioning (a programming error in migd)")]
    NotLoaded,
    /// One key file is missing from an otherwise provisioned state directory.
    #[error("TPM key file {} is missing; restore the state directory from its backup or re-provision the appliance", path.display())]
    BlobMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// A key file is unreadable, altered, truncated, swapped with another, or the TPM refused it.
    #[error("TPM key file {} is unusable: {reason}; restore the state directory from its backup or re-provision the appliance", path.display())]
    BlobCorrupt {
        /// The bad file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a key file failed at the operating-system level.
    #[error("cannot {operation} {}; check the state directory's permissions and free space", path.display())]
    Io {
        /// What was being done ("write", "read", "create directory", ...).
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TPM refused to release the replica key because a measured boot component changed.
    #[error("the TPM refused to release the replica key because a measured boot component changed ({}); if the firmware, boot loader or kernel was updated on purpose, re-provision the appliance and re-import the replica, otherwise treat the box as tampered with", pcr_list(changed))]
    PcrMismatch {
        /// The SHA-256 PCRs whose values differ from those at sealing (all sealed PCRs when the
        /// values recorded at sealing are unavailable).
        changed: Vec<u8>,
    },
    /// The configured PCRs differ from the ones the replica key was sealed to.
    #[error("the replica key was sealed to SHA-256 PCRs {sealed:?} but the config now lists {configured:?}; put the original list back in the config")]
    PcrSelectionChanged {
        /// PCRs recorded at provisioning.
        sealed: Vec<u8>,
        /// PCRs in the config now.
        configured: Vec<u8>,
    },
    /// The audit counter's NV index is not defined on this TPM.
    #[error("the audit counter (TPM NV index {index:#010x}) is not defined on this TPM: the TPM was cleared or replaced, or the appliance was provisioned before audit counters; re-provision the appliance (migctl init)")]
    CounterMissing {
        /// The NV index.
        index: u32,
    },
    /// Something other than a plain, non-orderly counter sits at the audit counter's index.
    #[error("TPM NV index {index:#010x} is not the audit counter (not a non-orderly NV counter with its own auth); another program defined it: remove it (tpm2_nvundefine) and re-provision the appliance")]
    CounterWrongType {
        /// The NV index.
        index: u32,
    },
    /// The owner-hierarchy password was refused.
    #[error("the TPM refused the owner hierarchy password; set owner_auth in the config to the TPM's owner password (or leave it out if the owner password is empty)")]
    OwnerAuthRejected,
    /// The configured owner password is longer than the TPM accepts.
    #[error("owner_auth in the config is longer than the 64 bytes a TPM accepts; set it to the TPM's owner password")]
    BadOwnerAuth,
    /// The TPM is in dictionary-attack lockout (TPM_RC_LOCKOUT).
    #[error("the TPM is in dictionary-attack lockout after repeated wrong passwords; wait for the lockout to expire or clear it with the lockout password (tpm2_dictionarylockout --clear-lockout)")]
    Lockout,
    /// Any other TPM failure, naming the operation.
    #[error("TPM operation '{operation}' failed ({}); run `migctl check` and, if it persists, restart the appliance", describe(source))]
    Tpm {
        /// The operation that failed.
        operation: &'static str,
        /// What tpm2-tss or the TPM reported.
        source: tss_esapi::Error,
    },
    /// The TPM service thread could not be started.
    #[error("cannot start the TPM service thread; the system is short of memory or threads, restart migd")]
    Thread(#[source] std::io::Error),
    /// The TPM service thread is gone, so no request can be served.
    #[error("the TPM service thread has stopped; restart migd")]
    ServiceStopped,
}

impl TpmError {
    /// Wraps a tss-esapi error from `operation`, turning lockout into its own variant.
    pub(crate) fn tpm(operation: &'static str, source: tss_esapi::Error) -> TpmError {
        if kind(&source) == Some(Tss2ResponseCodeKind::Lockout) {
            return TpmError::Lockout;
        }
        TpmError::Tpm { operation, source }
    }
}

/// Returns a closure for `map_err` that wraps a tss-esapi error from `operation`.
pub(crate) fn tpm_err(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::tpm(operation, source)
}

/// The raw TSS2_RC. tss-esapi 7 keeps the field private but prints it in Display, so we read
/// it back from there: the TPM layer byte is needed to tell TPM answers from TSS/TCTI errors,
/// which tss-esapi's `kind()` confuses (it ignores the layer).
pub(crate) fn response_code(error: &tss_esapi::Error) -> Option<u32> {
    let text = match error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// The TPM's own response kind, or None when the error came from the software stack.
pub(crate) fn kind(error: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    let code = response_code(error)?;
    if code >> 16 != 0 {
        return None; // a tpm2-tss layer (ESYS, SYS, TCTI...), not the TPM
    }
    match error {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// True when the TPM itself answered with an error (as opposed to the link or the TSS).
pub(crate) fn is_tpm_response(error: &tss_esapi::Error) -> bool {
    matches!(response_code(error), Some(code) if code >> 16 == 0)
}

/// True when the TPM refused an authorization value.
pub(crate) fn is_auth_failure(error: &tss_esapi::Error) -> bool {
    matches!(
        kind(error),
        Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail)
    )
}

/// The raw code of a tss-esapi error and the layer it came from; the error's own text follows
/// as the source.
fn describe(error: &tss_esapi::Error) -> String {
    match (response_code(error), kind(error)) {
        (Some(code), Some(_)) => format!("TPM response {code:#x}"),
        (Some(code), None) => {
            let layer = match code >> 16 {
                6 | 7 => "TSS ESAPI",
                8 => "TSS SAPI",
                9 => "TSS marshalling",
                10 => "TSS TCTI (the link to the TPM)",
                _ => "TSS",
            };
            format!("{layer} error {code:#x}")
        }
        (None, _) => "tss-esapi".to_owned(),
    }
}

/// "PCR 7 (Secure Boot policy)", "PCRs 0, 7".
fn pcr_list(pcrs: &[u8]) -> String {
    match pcrs {
        [one] => format!("PCR {one}{}", pcr_meaning(*one)),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|p| format!("{p}{}", pcr_meaning(*p)))
                .collect();
            format!("PCRs {}", names.join(", "))
        }
    }
}

/// What a PCR usually measures on a UEFI machine (TCG PC Client profile), to help the operator.
fn pcr_meaning(pcr: u8) -> &'static str {
    match pcr {
        0 => ": firmware",
        1 => ": firmware settings",
        2 => ": option ROMs",
        4 => ": boot loader",
        5 => ": partition table",
        7 => ": Secure Boot policy",
        8 | 9 => ": kernel command line and files",
        11 => ": unified kernel image",
        _ => "",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pcr_mismatch_is_one_line_naming_the_pcr() {
        let text = TpmError::PcrMismatch { changed: vec![7] }.to_string();
        assert!(!text.contains('\n'));
        assert!(text.contains("PCR 7: Secure Boot policy"), "{text}");
        let text = TpmError::PcrMismatch {
            changed: vec![0, 16],
        }
        .to_string();
        assert!(text.contains("PCRs 0: firmware, 16"), "{text}");
    }
}
