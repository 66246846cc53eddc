//! Signing with a loaded TPM key: SHA-256 of the message in software, TPM2_Sign with a NULL
//! hash-check ticket (the key is unrestricted), and DER encoding of the raw (r, s) the TPM returns.

use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket, Signature, SignatureScheme};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use super::errors::{tpm_err, TpmError};

/// Signs a SHA-256 digest with `key` and returns the DER `ECDSA-Sig-Value`.
pub(crate) fn sign_digest(
    context: &mut Context,
    key: KeyHandle,
    digest: &[u8; 32],
) -> Result<Vec<u8>, TpmError> {
    let digest = Digest::try_from(digest.as_slice()).map_err(tpm_err("sign"))?;
    // A NULL ticket: the TPM need not vouch that it hashed the data itself, which only
    // restricted keys require.
    let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(tpm_err("sign"))?;
    let scheme = SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
    };
    let signature = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.sign(key, digest, scheme, validation)
        })
        .map_err(tpm_err("sign"))?;
    match signature {
        Signature::EcDsa(ecc) => Ok(ecdsa_der(
            ecc.signature_r().value(),
            ecc.signature_s().value(),
        )),
        _ => Err(TpmError::tpm(
            "sign",
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        )),
    }
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` from big-endian unsigned r and s.
pub(crate) fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut body = der_unsigned_integer(r);
    body.extend(der_unsigned_integer(s));
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend(body);
    out
}

/// A minimal DER INTEGER for an unsigned big-endian value: leading zeros stripped, one zero
/// added back when the top bit is set (so it is not read as negative).
fn der_unsigned_integer(value: &[u8]) -> Vec<u8> {
    let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
    let trimmed = &value[first..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    match trimmed.first() {
        None => content.push(0),
        Some(&b) if b & 0x80 != 0 => {
            content.push(0);
            content.extend_from_slice(trimmed);
        }
        Some(_) => content.extend_from_slice(trimmed),
    }
    let mut out = vec![0x02];
    push_len(&mut out, content.len());
    out.extend(content);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - first) as u8);
        out.extend_from_slice(&bytes[first..]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(der_unsigned_integer(&[0, 0, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(
            der_unsigned_integer(&[0, 0x80]),
            vec![0x02, 0x02, 0x00, 0x80]
        );
        assert_eq!(der_unsigned_integer(&[0, 0]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn signature_parses_as_der_with_p256() {
        // r with a high bit, s with leading zeros: the cases a naive encoder gets wrong.
        let mut r = [0x11u8; 32];
        r[0] = 0xf0;
        let mut s = [0x22u8; 32];
        s[0] = 0;
        s[1] = 0;
        let der = ecdsa_der(&r, &s);
        let parsed = p256::ecdsa::Signature::from_der(&der).unwrap();
        assert_eq!(&parsed.r().to_bytes()[..], &r[..]);
        assert_eq!(&parsed.s().to_bytes()[..], &s[..]);
    }
}
