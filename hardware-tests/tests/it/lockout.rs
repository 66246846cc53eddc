//! A TPM in dictionary-attack lockout (someone guessed passwords) must not stop the appliance:
//! its keys have empty auth values and noDA, so lockout guards nothing of ours.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use hardware_tests::Swtpm;
use mig::tpm::{KeyRole, Tpm};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, EccScheme, HashScheme, SignatureScheme};

/// Drives the TPM into lockout by signing with a DA-protected key and the wrong password.
fn force_lockout(swtpm: &Swtpm) {
    let mut context = swtpm.raw_context().unwrap();
    let public = tss_esapi::utils::create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .unwrap();
    let key = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(
                Hierarchy::Owner,
                public,
                Some(Auth::try_from(b"right".to_vec()).unwrap()),
                None,
                None,
                None,
            )
        })
        .unwrap()
        .key_handle;
    context
        .tr_set_auth(key.into(), Auth::try_from(b"wrong".to_vec()).unwrap())
        .unwrap();
    for _ in 0..100 {
        let digest = tss_esapi::structures::Digest::try_from(vec![1u8; 32]).unwrap();
        let ticket = tss_esapi::structures::HashcheckTicket::try_from(
            tss_esapi::tss2_esys::TPMT_TK_HASHCHECK {
                tag: tss_esapi::constants::tss::TPM2_ST_HASHCHECK,
                hierarchy: tss_esapi::constants::tss::TPM2_RH_NULL,
                digest: Default::default(),
            },
        )
        .unwrap();
        let error = context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(key, digest, SignatureScheme::Null, ticket)
            })
            .unwrap_err();
        if let tss_esapi::Error::Tss2Error(rc) = error {
            if rc.kind() == Some(Tss2ResponseCodeKind::Lockout) {
                context.flush_context(key.into()).unwrap();
                return;
            }
        }
    }
    panic!("the TPM never entered lockout");
}

#[test]
fn the_appliance_provisions_signs_and_unseals_while_the_tpm_is_in_lockout() {
    let swtpm = Swtpm::start_software().unwrap();
    force_lockout(&swtpm);
    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&swtpm.settings(&[7])).unwrap();
    tpm.provision(state.path()).unwrap();
    tpm.load(state.path()).unwrap();
    let signature = tpm.sign(KeyRole::Tls, b"during lockout").unwrap();
    let spki = tpm.public_key_spki_der(KeyRole::Tls).unwrap();
    common::verify(&spki, b"during lockout", &signature).unwrap();
    tpm.unseal_replica_key().unwrap();
}
