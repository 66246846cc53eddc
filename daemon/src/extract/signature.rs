//! The detached signature of an extract (`FILE.csv.sig`): a short text statement naming the
//! file (SHA-256, size, rows, period), the appliance that made it (practice, ODS code, ASID,
//! sub-ICB) and the audit record of the run, signed by the appliance's TPM audit key (ECDSA
//! P-256, SHA-256).
//!
//! Validates: the statement's exact layout, the signature over every byte above the
//! `signature:` line (domain-separated from audit checkpoints by its first line), and that the
//! CSV is the one signed. Trust: the statement carries the signing key, but a signature is only
//! accepted against a key the checker already trusts (this appliance's audit key, a public key
//! or a key fingerprint given out of band); the embedded key alone proves nothing.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::keys::Signer;

/// First line; also separates these signatures from audit checkpoints (`MIG-AUDIT-...`).
pub const MAGIC: &str = "MIG-EXTRACT-SIGNATURE-V1";
/// Keys of the statement, in order.
const KEYS: [&str; 14] = [
    "extract",
    "file",
    "sha256",
    "bytes",
    "rows",
    "period",
    "created",
    "practice",
    "ods",
    "asid",
    "sub-icb",
    "audit-record",
    "audit-key-sha256",
    "audit-key",
];

/// What a signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `fit-notes`.
    pub extract: String,
    /// The file's name when it was made (informational; the hash is what binds).
    pub file: String,
    pub sha256: [u8; 32],
    pub bytes: u64,
    pub rows: u64,
    /// `FROM..TO`, both included.
    pub period: String,
    /// RFC 3339 UTC.
    pub created: String,
    pub practice: String,
    pub ods: String,
    pub asid: String,
    pub sub_icb: String,
    /// Sequence number of the audit record of the run.
    pub audit_record: u64,
    /// DER SubjectPublicKeyInfo of the audit key.
    pub audit_key: Vec<u8>,
}

/// Why a signature does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not an extract signature: {0}")]
    Malformed(String),
    #[error(
        "signed by another key (audit key SHA-256 {found}), not by the trusted one ({expected})"
    )]
    UntrustedKey { found: String, expected: String },
    #[error("the signature does not verify: the .sig was altered or not made by this key")]
    BadSignature,
    #[error("the CSV does not match its signature: it was changed after signing (SHA-256 {found}, signed {signed})")]
    ContentMismatch { found: String, signed: String },
}

/// The key a checker trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedKey {
    /// A P-256 SubjectPublicKeyInfo (DER): this appliance's audit key, or one given.
    Spki(Vec<u8>),
    /// SHA-256 of the SubjectPublicKeyInfo, given out of band.
    Fingerprint([u8; 32]),
}

/// SHA-256 of a key's DER SubjectPublicKeyInfo, lower-case hex: how keys are named.
pub fn fingerprint(spki: &[u8]) -> String {
    hex::encode(Sha256::digest(spki))
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Statement {
    /// The signed text: every line up to and including `audit-key:`.
    pub fn render(&self) -> String {
        let values = [
            self.extract.clone(),
            self.file.clone(),
            hex::encode(self.sha256),
            self.bytes.to_string(),
            self.rows.to_string(),
            self.period.clone(),
            self.created.clone(),
            self.practice.clone(),
            self.ods.clone(),
            self.asid.clone(),
            self.sub_icb.clone(),
            self.audit_record.to_string(),
            fingerprint(&self.audit_key),
            B64.encode(&self.audit_key),
        ];
        let mut text = format!("{MAGIC}\n");
        for (key, value) in KEYS.iter().zip(values) {
            // Values are single-line by construction; a newline would forge a field.
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            text.push_str(&format!("{key}: {value}\n"));
        }
        text
    }

    /// The whole `.sig` text, signed by `signer` (blocking: the TPM).
    pub fn sign(&self, signer: &dyn Signer) -> Result<String, super::ExtractError> {
        let text = self.render();
        let signature = signer
            .sign(text.as_bytes())
            .map_err(|e| super::ExtractError::Sign(e.to_string()))?;
        Ok(format!("{text}signature: {}\n", B64.encode(signature)))
    }
}

/// Reads a `.sig` without judging it: the statement, the signed bytes and the signature.
pub fn parse(sig: &str) -> Result<(Statement, &str, Vec<u8>), VerifyError> {
    let malformed = |why: &str| VerifyError::Malformed(why.to_owned());
    let split = sig
        .rfind("\nsignature: ")
        .ok_or_else(|| malformed("no signature line"))?;
    let (signed, last) = sig.split_at(split + 1);
    let signature = last
        .strip_prefix("signature: ")
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| !s.contains('\n'))
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| malformed("the signature line is not base64"))?;
    let mut lines = signed.lines();
    if lines.next() != Some(MAGIC) {
        return Err(malformed(&format!("the first line is not {MAGIC}")));
    }
    let mut values = Vec::with_capacity(KEYS.len());
    for key in KEYS {
        let line = lines
            .next()
            .ok_or_else(|| malformed(&format!("no {key} line")))?;
        let value = line
            .strip_prefix(key)
            .and_then(|l| l.strip_prefix(": "))
            .ok_or_else(|| malformed(&format!("expected {key}: …, found {line:?}")))?;
        values.push(value);
    }
    if lines.next().is_some() {
        return Err(malformed("unexpected lines before the signature"));
    }
    let number = |i: usize| {
        values[i]
            .parse::<u64>()
            .map_err(|_| malformed(&format!("{} is not a number", KEYS[i])))
    };
    let sha256: [u8; 32] = hex::decode(values[2])
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("sha256 is not 64 hex digits"))?;
    let audit_key = B64
        .decode(values[13])
        .map_err(|_| malformed("audit-key is not base64"))?;
    if fingerprint(&audit_key) != values[12] {
        return Err(malformed("audit-key-sha256 does not name audit-key"));
    }
    let statement = Statement {
        extract: values[0].to_owned(),
        file: values[1].to_owned(),
        sha256,
        bytes: number(3)?,
        rows: number(4)?,
        period: values[5].to_owned(),
        created: values[6].to_owned(),
        practice: values[7].to_owned(),
        ods: values[8].to_owned(),
        asid: values[9].to_owned(),
        sub_icb: values[10].to_owned(),
        audit_record: number(11)?,
        audit_key,
    };
    Ok((statement, signed, signature))
}

/// The uncompressed point of a P-256 SubjectPublicKeyInfo, `None` for any other key.
fn p256_point(spki: &[u8]) -> Option<&[u8]> {
    let expected = crate::keys::spki_from_uncompressed_point(&[0u8; 65]);
    (spki.len() == expected.len() && spki[..26] == expected[..26]).then(|| &spki[26..])
}

/// Checks `csv` against its `.sig` with a key the caller trusts; the statement if all is well.
pub fn verify(sig: &str, csv: &[u8], trusted: &TrustedKey) -> Result<Statement, VerifyError> {
    let (statement, signed, signature) = parse(sig)?;
    let found = fingerprint(&statement.audit_key);
    let key = match trusted {
        TrustedKey::Spki(spki) if *spki == statement.audit_key => spki.as_slice(),
        TrustedKey::Spki(spki) => {
            return Err(VerifyError::UntrustedKey {
                found,
                expected: fingerprint(spki),
            })
        }
        TrustedKey::Fingerprint(pin) if hex::encode(pin) == found => &statement.audit_key,
        TrustedKey::Fingerprint(pin) => {
            return Err(VerifyError::UntrustedKey {
                found,
                expected: hex::encode(pin),
            })
        }
    };
    let point = p256_point(key)
        .ok_or_else(|| VerifyError::Malformed("the audit key is not an ECC P-256 key".into()))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    let actual: [u8; 32] = Sha256::digest(csv).into();
    if actual != statement.sha256 || csv.len() as u64 != statement.bytes {
        return Err(VerifyError::ContentMismatch {
            found: hex::encode(actual),
            signed: hex::encode(statement.sha256),
        });
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::InMemorySigner;

    fn statement(key: Vec<u8>, csv: &[u8]) -> Statement {
        Statement {
            extract: "fit-notes".into(),
            file: "fit-notes.csv".into(),
            sha256: Sha256::digest(csv).into(),
            bytes: csv.len() as u64,
            rows: 2,
            period: "2025-04-01..2026-03-31".into(),
            created: "2026-12-06T09:00:00Z".into(),
            practice: "Riverside: Medical Practice".into(),
            ods: "A81001".into(),
            asid: "200000000123".into(),
            sub_icb: "16C".into(),
            audit_record: 42,
            audit_key: key,
        }
    }

    #[test]
    fn a_signed_extract_verifies_against_the_trusted_key_or_its_fingerprint() {
        let signer = InMemorySigner::generate().unwrap();
        let csv = b"a,count\r\nx,10\r\n";
        let s = statement(signer.public_key_spki_der(), csv);
        let sig = s.sign(signer.as_ref()).unwrap();
        let spki = signer.public_key_spki_der();
        assert_eq!(
            verify(&sig, csv, &TrustedKey::Spki(spki.clone())).unwrap(),
            s
        );
        let pin: [u8; 32] = Sha256::digest(&spki).into();
        assert_eq!(verify(&sig, csv, &TrustedKey::Fingerprint(pin)).unwrap(), s);
    }

    #[test]
    fn a_changed_csv_fails() {
        let signer = InMemorySigner::generate().unwrap();
        let csv = b"a,count\r\nx,10\r\n";
        let sig = statement(signer.public_key_spki_der(), csv)
            .sign(signer.as_ref())
            .unwrap();
        let trusted = TrustedKey::Spki(signer.public_key_spki_der());
        assert!(matches!(
            verify(&sig, b"a,count\r\nx,15\r\n", &trusted),
            Err(VerifyError::ContentMismatch { .. })
        ));
    }

    #[test]
    fn a_changed_statement_fails() {
        let signer = InMemorySigner::generate().unwrap();
        let csv = b"a,count\r\nx,10\r\n";
        let sig = statement(signer.public_key_spki_der(), csv)
            .sign(signer.as_ref())
            .unwrap();
        let trusted = TrustedKey::Spki(signer.public_key_spki_der());
        let forged = sig.replace("ods: A81001", "ods: B82002");
        assert_eq!(
            verify(&forged, csv, &trusted),
            Err(VerifyError::BadSignature)
        );
    }

    /// A signature made by some other key and carrying that key verifies "by itself"; it must
    /// still be refused, whether the checker trusts this appliance's key or a fingerprint.
    #[test]
    fn a_self_consistent_signature_by_an_untrusted_key_fails() {
        let appliance = InMemorySigner::generate().unwrap();
        let forger = InMemorySigner::generate().unwrap();
        let csv = b"a,count\r\nx,10\r\n";
        let sig = statement(forger.public_key_spki_der(), csv)
            .sign(forger.as_ref())
            .unwrap();
        let spki = appliance.public_key_spki_der();
        assert!(matches!(
            verify(&sig, csv, &TrustedKey::Spki(spki.clone())),
            Err(VerifyError::UntrustedKey { .. })
        ));
        let pin: [u8; 32] = Sha256::digest(&spki).into();
        assert!(matches!(
            verify(&sig, csv, &TrustedKey::Fingerprint(pin)),
            Err(VerifyError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn a_swapped_key_line_fails() {
        // The forger keeps the appliance's key in the statement but signs with its own key.
        let appliance = InMemorySigner::generate().unwrap();
        let forger = InMemorySigner::generate().unwrap();
        let csv = b"a,count\r\nx,10\r\n";
        let text = statement(appliance.public_key_spki_der(), csv).render();
        let signature = forger.sign(text.as_bytes()).unwrap();
        let sig = format!("{text}signature: {}\n", B64.encode(signature));
        let trusted = TrustedKey::Spki(appliance.public_key_spki_der());
        assert_eq!(verify(&sig, csv, &trusted), Err(VerifyError::BadSignature));
    }

    #[test]
    fn malformed_signatures_are_named() {
        let trusted = TrustedKey::Fingerprint([0; 32]);
        for bad in ["", "hello\n", "MIG-EXTRACT-SIGNATURE-V1\nsignature: AAAA\n"] {
            assert!(
                matches!(verify(bad, b"", &trusted), Err(VerifyError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn control_characters_cannot_forge_a_field() {
        let signer = InMemorySigner::generate().unwrap();
        let mut s = statement(signer.public_key_spki_der(), b"x");
        s.file = "x.csv\nods: EVIL1".into();
        let sig = s.sign(signer.as_ref()).unwrap();
        let ok = verify(&sig, b"x", &TrustedKey::Spki(signer.public_key_spki_der())).unwrap();
        assert_eq!(ok.ods, "A81001");
        assert_eq!(ok.file, "x.csvods: EVIL1");
    }
}
