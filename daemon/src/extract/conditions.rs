//! The condition types of the fit-note extract: ICD-10 chapters, as NHS England's fit note
//! statistics report diagnoses, reached from a note's SNOMED CT condition through a shipped
//! concept → ICD-10 list (`daemon/data/fit-notes/condition-types.txt`) that a practice may
//! extend with its own file (config `extracts.condition_types_file`).

use std::collections::HashMap;

use super::ExtractError;

/// The shipped list (starter set; see the file's header).
const SHIPPED: &str = include_str!("../../data/fit-notes/condition-types.txt");

/// An ICD-10 chapter, or no known diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionType {
    Infectious,
    Neoplasms,
    Blood,
    Endocrine,
    Mental,
    Nervous,
    Eye,
    Ear,
    Circulatory,
    Respiratory,
    Digestive,
    Skin,
    Musculoskeletal,
    Genitourinary,
    Pregnancy,
    Perinatal,
    Congenital,
    Symptoms,
    Injury,
    ExternalCauses,
    HealthServices,
    SpecialPurposes,
    /// No condition on the note, or one the list does not map.
    Unknown,
}

impl ConditionType {
    /// Every value, in the order rows are written.
    pub const ALL: [ConditionType; 23] = [
        ConditionType::Infectious,
        ConditionType::Neoplasms,
        ConditionType::Blood,
        ConditionType::Endocrine,
        ConditionType::Mental,
        ConditionType::Nervous,
        ConditionType::Eye,
        ConditionType::Ear,
        ConditionType::Circulatory,
        ConditionType::Respiratory,
        ConditionType::Digestive,
        ConditionType::Skin,
        ConditionType::Musculoskeletal,
        ConditionType::Genitourinary,
        ConditionType::Pregnancy,
        ConditionType::Perinatal,
        ConditionType::Congenital,
        ConditionType::Symptoms,
        ConditionType::Injury,
        ConditionType::ExternalCauses,
        ConditionType::HealthServices,
        ConditionType::SpecialPurposes,
        ConditionType::Unknown,
    ];

    /// The ICD-10 chapter title (WHO ICD-10 2019), as the published statistics label it.
    pub fn label(self) -> &'static str {
        match self {
            ConditionType::Infectious => "Certain infectious and parasitic diseases",
            ConditionType::Neoplasms => "Neoplasms",
            ConditionType::Blood => "Diseases of the blood and blood-forming organs and certain disorders involving the immune mechanism",
            ConditionType::Endocrine => "Endocrine, nutritional and metabolic diseases",
            ConditionType::Mental => "Mental and behavioural disorders",
            ConditionType::Nervous => "Diseases of the nervous system",
            ConditionType::Eye => "Diseases of the eye and adnexa",
            ConditionType::Ear => "Diseases of the ear and mastoid process",
            ConditionType::Circulatory => "Diseases of the circulatory system",
            ConditionType::Respiratory => "Diseases of the respiratory system",
            ConditionType::Digestive => "Diseases of the digestive system",
            ConditionType::Skin => "Diseases of the skin and subcutaneous tissue",
            ConditionType::Musculoskeletal => {
                "Diseases of the musculoskeletal system and connective tissue"
            }
            ConditionType::Genitourinary => "Diseases of the genitourinary system",
            ConditionType::Pregnancy => "Pregnancy, childbirth and the puerperium",
            ConditionType::Perinatal => "Certain conditions originating in the perinatal period",
            ConditionType::Congenital => {
                "Congenital malformations, deformations and chromosomal abnormalities"
            }
            ConditionType::Symptoms => "Symptoms, signs and abnormal clinical and laboratory findings, not elsewhere classified",
            ConditionType::Injury => {
                "Injury, poisoning and certain other consequences of external causes"
            }
            ConditionType::ExternalCauses => "External causes of morbidity and mortality",
            ConditionType::HealthServices => {
                "Factors influencing health status and contact with health services"
            }
            ConditionType::SpecialPurposes => "Codes for special purposes",
            ConditionType::Unknown => "Unknown",
        }
    }

    /// The chapter of an ICD-10 code such as `F32.9` or `J22`; `None` if it is not one.
    pub fn of_icd10(code: &str) -> Option<ConditionType> {
        let bytes = code.as_bytes();
        let letter = *bytes.first()?;
        let digits = code.get(1..3)?;
        if !letter.is_ascii_uppercase() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rest = &code[3..];
        let rest_ok = rest.is_empty()
            || (rest.starts_with('.')
                && rest.len() >= 2
                && rest[1..].bytes().all(|b| b.is_ascii_alphanumeric()));
        if !rest_ok {
            return None;
        }
        let number: u8 = digits.parse().ok()?;
        Some(match letter {
            b'A' | b'B' => ConditionType::Infectious,
            b'C' => ConditionType::Neoplasms,
            b'D' if number <= 48 => ConditionType::Neoplasms,
            b'D' => ConditionType::Blood,
            b'E' => ConditionType::Endocrine,
            b'F' => ConditionType::Mental,
            b'G' => ConditionType::Nervous,
            b'H' if number <= 59 => ConditionType::Eye,
            b'H' => ConditionType::Ear,
            b'I' => ConditionType::Circulatory,
            b'J' => ConditionType::Respiratory,
            b'K' => ConditionType::Digestive,
            b'L' => ConditionType::Skin,
            b'M' => ConditionType::Musculoskeletal,
            b'N' => ConditionType::Genitourinary,
            b'O' => ConditionType::Pregnancy,
            b'P' => ConditionType::Perinatal,
            b'Q' => ConditionType::Congenital,
            b'R' => ConditionType::Symptoms,
            b'S' | b'T' => ConditionType::Injury,
            b'V' | b'W' | b'X' | b'Y' => ConditionType::ExternalCauses,
            b'Z' => ConditionType::HealthServices,
            b'U' => ConditionType::SpecialPurposes,
            _ => return None,
        })
    }
}

/// SNOMED CT concept → condition type.
#[derive(Debug, Clone, Default)]
pub struct ConditionMap {
    by_concept: HashMap<String, ConditionType>,
}

impl ConditionMap {
    /// The shipped list alone.
    pub fn shipped() -> Result<ConditionMap, ExtractError> {
        let mut map = ConditionMap::default();
        map.add("shipped condition-types.txt", SHIPPED)?;
        Ok(map)
    }

    /// The shipped list extended (and, for a concept in both, overridden) by the practice's
    /// file. The file must exist and hold at least one mapping: a configured list that is
    /// missing or empty is an error, never a silent "Unknown" for every note.
    pub fn with_practice_file(path: &std::path::Path) -> Result<ConditionMap, ExtractError> {
        let mut map = ConditionMap::shipped()?;
        let text =
            std::fs::read_to_string(path).map_err(|source| ExtractError::ConditionListFile {
                path: path.to_owned(),
                source,
            })?;
        if map.add(&path.display().to_string(), &text)? == 0 {
            return Err(ExtractError::ConditionList {
                source_name: path.display().to_string(),
                line: 0,
                reason: "holds no mappings".into(),
            });
        }
        Ok(map)
    }

    /// Adds the lines of a list; returns how many mappings it held.
    pub fn add(&mut self, source_name: &str, text: &str) -> Result<usize, ExtractError> {
        let mut added = 0;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            let line = line.split('|').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| ExtractError::ConditionList {
                source_name: source_name.to_owned(),
                line: index + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(concept), Some(icd10), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(
                    "expected a SNOMED CT concept id and an ICD-10 code".into()
                ));
            };
            if !(6..=18).contains(&concept.len()) || !concept.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("{concept:?} is not a SNOMED CT concept id")));
            }
            let kind = ConditionType::of_icd10(icd10)
                .ok_or_else(|| bad(format!("{icd10:?} is not an ICD-10 code such as F32.9")))?;
            self.by_concept.insert(concept.to_owned(), kind);
            added += 1;
        }
        Ok(added)
    }

    /// The type of a SNOMED CT concept; `Unknown` if the list does not map it.
    pub fn condition_type(&self, concept: &str) -> ConditionType {
        self.by_concept
            .get(concept)
            .copied()
            .unwrap_or(ConditionType::Unknown)
    }

    pub fn len(&self) -> usize {
        self.by_concept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_concept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn icd10_codes_fall_in_their_chapters() {
        assert_eq!(
            ConditionType::of_icd10("F32.9"),
            Some(ConditionType::Mental)
        );
        assert_eq!(
            ConditionType::of_icd10("J22"),
            Some(ConditionType::Respiratory)
        );
        assert_eq!(
            ConditionType::of_icd10("D48.9"),
            Some(ConditionType::Neoplasms)
        );
        assert_eq!(ConditionType::of_icd10("D50"), Some(ConditionType::Blood));
        assert_eq!(ConditionType::of_icd10("H59"), Some(ConditionType::Eye));
        assert_eq!(ConditionType::of_icd10("H60.1"), Some(ConditionType::Ear));
        assert_eq!(
            ConditionType::of_icd10("T14.2"),
            Some(ConditionType::Injury)
        );
        assert_eq!(
            ConditionType::of_icd10("U07.1"),
            Some(ConditionType::SpecialPurposes)
        );
        for bad in ["", "F", "F3", "f32", "F32.", "F32-9", "332.1", "F32.9 x"] {
            assert_eq!(ConditionType::of_icd10(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shipped_list_parses_and_covers_the_common_reasons() {
        let map = ConditionMap::shipped().unwrap();
        assert!(map.len() >= 60);
        assert_eq!(map.condition_type("35489007"), ConditionType::Mental);
        assert_eq!(
            map.condition_type("279039007"),
            ConditionType::Musculoskeletal
        );
        assert_eq!(map.condition_type("25374005"), ConditionType::Infectious);
        assert_eq!(map.condition_type("1"), ConditionType::Unknown);
    }

    #[test]
    fn practice_file_extends_and_overrides_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.txt");
        std::fs::write(
            &path,
            "# practice\n999000111 M54.5 |Our back code|\n35489007 F33\n",
        )
        .unwrap();
        let map = ConditionMap::with_practice_file(&path).unwrap();
        assert_eq!(
            map.condition_type("999000111"),
            ConditionType::Musculoskeletal
        );
        assert_eq!(map.condition_type("35489007"), ConditionType::Mental);
        let missing = ConditionMap::with_practice_file(&dir.path().join("nope.txt"));
        let message = missing.unwrap_err().to_string();
        assert!(message.contains("nope.txt"), "{message}");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(ConditionMap::with_practice_file(&path).is_err());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let mut map = ConditionMap::default();
        let e = map.add("x.txt", "35489007 F32\n12ab F32\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "condition list x.txt line 2: \"12ab\" is not a SNOMED CT concept id"
        );
        let e = map.add("x.txt", "35489007 depression\n").unwrap_err();
        assert!(e.to_string().contains("line 1"));
        assert!(map.add("x.txt", "35489007\n").is_err());
    }
}
