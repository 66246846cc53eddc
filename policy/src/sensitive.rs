//! The four NHS sensitive categories (SPEC §6) and the SNOMED concept lists that put an item in
//! one: the shipped starter lists, extra codes from config, and the parser for practice files.
//!
//! Validates: every concept id is a well-formed SNOMED CT concept identifier (6 to 18 digits, no
//! leading zero, concept partition `00` or `10`, Verhoeff check digit), so a typo in a practice
//! file is caught at load, naming the line. Does not validate: that the concept exists or is
//! active in any SNOMED release (the appliance has no terminology server).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::PolicyError;
use crate::fhir::{Coding, ItemFacts, SNOMED};

/// One of the four NHS exclusion refsets (SPEC §6).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum SensitiveCategory {
    Gender,
    AssistedFertilisation,
    TerminationOfPregnancy,
    SexuallyTransmittedDisease,
}

impl SensitiveCategory {
    pub const ALL: [SensitiveCategory; 4] = [
        SensitiveCategory::Gender,
        SensitiveCategory::AssistedFertilisation,
        SensitiveCategory::TerminationOfPregnancy,
        SensitiveCategory::SexuallyTransmittedDisease,
    ];

    /// The name used in config, file names and the audit trail.
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<SensitiveCategory> {
        name.parse().ok()
    }

    /// The SNOMED CT id of the NHS refset for this category.
    pub fn refset_id(self) -> &'static str {
        match self {
            SensitiveCategory::Gender => "999004351000000109",
            SensitiveCategory::AssistedFertilisation => "999004371000000100",
            SensitiveCategory::TerminationOfPregnancy => "999004361000000107",
            SensitiveCategory::SexuallyTransmittedDisease => "999004381000000103",
        }
    }

    pub fn from_refset_id(id: &str) -> Option<SensitiveCategory> {
        SensitiveCategory::ALL
            .into_iter()
            .find(|c| c.refset_id() == id)
    }

    /// The concept list shipped in `policy/data/sensitive/`.
    fn shipped_list(self) -> &'static str {
        match self {
            SensitiveCategory::Gender => include_str!("../data/sensitive/gender.txt"),
            SensitiveCategory::AssistedFertilisation => {
                include_str!("../data/sensitive/assisted-fertilisation.txt")
            }
            SensitiveCategory::TerminationOfPregnancy => {
                include_str!("../data/sensitive/termination-of-pregnancy.txt")
            }
            SensitiveCategory::SexuallyTransmittedDisease => {
                include_str!("../data/sensitive/sexually-transmitted-disease.txt")
            }
        }
    }
}

impl std::fmt::Display for SensitiveCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The SNOMED concepts that put an item in each sensitive category.
///
/// Only codings in system `http://snomed.info/sct` are matched against the lists: the lists
/// are SNOMED concept ids, and a digit string in another code system means something else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SensitiveCodes {
    concepts: BTreeMap<SensitiveCategory, BTreeSet<String>>,
    /// The same lists by concept id, for the lookup every coding of every item needs.
    categories_by_concept: rustc_hash::FxHashMap<u64, Categories>,
}

/// A set of sensitive categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Categories(u8);

impl Categories {
    fn bit(category: SensitiveCategory) -> u8 {
        1 << category as u8
    }

    pub fn contains(self, category: SensitiveCategory) -> bool {
        self.0 & Categories::bit(category) != 0
    }

    pub fn insert(&mut self, category: SensitiveCategory) {
        self.0 |= Categories::bit(category);
    }

    fn union(self, other: Categories) -> Categories {
        Categories(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = SensitiveCategory> {
        SensitiveCategory::ALL
            .into_iter()
            .filter(move |&c| self.contains(c))
    }
}

impl SensitiveCodes {
    /// No concepts at all: items are then in a category only through their security labels.
    pub fn empty() -> SensitiveCodes {
        SensitiveCodes::default()
    }

    /// The starter lists shipped with migd (`policy/data/sensitive/*.txt`).
    pub fn shipped() -> Result<SensitiveCodes, PolicyError> {
        let mut codes = SensitiveCodes::empty();
        for category in SensitiveCategory::ALL {
            let source = format!("shipped {}.txt", category.name());
            for code in parse_concept_list(&source, category.shipped_list())? {
                codes.insert(category, code);
            }
        }
        Ok(codes)
    }

    /// Adds concept ids for a category (from config or a practice file); each must be a valid
    /// SNOMED CT concept id.
    pub fn with_extra<I, S>(
        mut self,
        category: SensitiveCategory,
        codes: I,
    ) -> Result<SensitiveCodes, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for code in codes {
            let code = code.as_ref().trim();
            if let Err(reason) = check_concept_id(code) {
                return Err(PolicyError::ConceptId {
                    category: category.name(),
                    code: code.to_owned(),
                    reason,
                });
            }
            self.insert(category, code.to_owned());
        }
        Ok(self)
    }

    /// Adds a checked concept id.
    fn insert(&mut self, category: SensitiveCategory, code: String) {
        // A checked concept id is at most 18 digits, so it always fits.
        if let Ok(id) = code.parse::<u64>() {
            self.categories_by_concept
                .entry(id)
                .or_default()
                .insert(category);
        }
        self.concepts.entry(category).or_default().insert(code);
    }

    /// The concept ids of one category.
    pub fn concepts(&self, category: SensitiveCategory) -> impl Iterator<Item = &str> {
        self.concepts
            .get(&category)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The categories whose concept lists hold a coding.
    fn categories_of_coding(&self, coding: &Coding) -> Categories {
        if coding.system != SNOMED {
            return Categories::default();
        }
        // A code with a leading zero or sign is no concept id, though it would parse as one.
        let canonical = !coding.code.starts_with(['0', '+']);
        match coding.code.parse::<u64>() {
            Ok(id) if canonical => self
                .categories_by_concept
                .get(&id)
                .copied()
                .unwrap_or_default(),
            _ => Categories::default(),
        }
    }

    /// Whether a coding is in the category's concept list.
    pub fn contains(&self, category: SensitiveCategory, coding: &Coding) -> bool {
        self.categories_of_coding(coding).contains(category)
    }

    /// The categories an item is in: by a `meta.security` label holding the refset id, or by any
    /// of its codes being in the category's concept list.
    pub fn categories_of(&self, item: &ItemFacts) -> Categories {
        let mut categories = Categories::default();
        for label in item.security.iter().filter(|l| l.system == SNOMED) {
            if let Some(category) = SensitiveCategory::from_refset_id(&label.code) {
                categories.insert(category);
            }
        }
        item.codes.iter().fold(categories, |all, coding| {
            all.union(self.categories_of_coding(coding))
        })
    }
}

/// Parses a concept list: one SNOMED CT concept id per line; `#` starts a comment; blank lines
/// are skipped; an id may be followed by its term between bars (`22298006 |Myocardial
/// infarction|`). `source` names the file in errors; lines count from 1.
pub fn parse_concept_list(source: &str, text: &str) -> Result<BTreeSet<String>, PolicyError> {
    let mut concepts = BTreeSet::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &'static str| PolicyError::ConceptListLine {
            file: source.to_owned(),
            line: index + 1,
            text: raw.chars().take(80).collect(),
            reason,
        };
        let (id, rest) = match line.find(|c: char| c.is_whitespace() || c == '|') {
            Some(at) => (&line[..at], line[at..].trim_start()),
            None => (line, ""),
        };
        let term_ok = rest.len() >= 2 && rest.starts_with('|') && rest.ends_with('|');
        if !rest.is_empty() && !term_ok {
            return Err(bad(
                "expected one concept id, optionally followed by |term|",
            ));
        }
        check_concept_id(id).map_err(bad)?;
        concepts.insert(id.to_owned());
    }
    Ok(concepts)
}

/// Checks the form of a SNOMED CT concept identifier (SCTID).
pub fn check_concept_id(id: &str) -> Result<(), &'static str> {
    if !(6..=18).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a SNOMED CT concept id is 6 to 18 digits");
    }
    if id.starts_with('0') {
        return Err("a SNOMED CT id has no leading zero");
    }
    // The partition identifier is the second and third digits from the right: 00 for a
    // concept in the international release, 10 for a concept with a namespace (UK extension).
    let partition = &id[id.len() - 3..id.len() - 1];
    if partition != "00" && partition != "10" {
        return Err("not a concept id (partition is not 00 or 10)");
    }
    if !verhoeff_valid(id) {
        return Err("check digit is wrong (Verhoeff)");
    }
    Ok(())
}

fn verhoeff_valid(digits: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let mut check = 0u8;
    for (position, byte) in digits.bytes().rev().enumerate() {
        let Some(digit) = byte.checked_sub(b'0').filter(|d| *d < 10) else {
            return false;
        };
        check = D[usize::from(check)][usize::from(P[position % 8][usize::from(digit)])];
    }
    check == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn verhoeff_accepts_known_concept_ids_and_rejects_typos() {
        for id in ["22298006", "404684003", "138875005", "999004351000000109"] {
            assert_eq!(check_concept_id(id), Ok(()), "{id}");
        }
        for id in ["22298007", "404684013", "12345"] {
            assert!(check_concept_id(id).is_err(), "{id}");
        }
    }

    #[test]
    fn refset_ids_are_valid_concept_ids() {
        for category in SensitiveCategory::ALL {
            assert_eq!(check_concept_id(category.refset_id()), Ok(()));
            assert_eq!(
                SensitiveCategory::from_refset_id(category.refset_id()),
                Some(category)
            );
            assert_eq!(
                SensitiveCategory::from_name(category.name()),
                Some(category)
            );
        }
    }

    #[test]
    fn shipped_lists_parse_and_are_not_empty() {
        let codes = SensitiveCodes::shipped().unwrap();
        for category in SensitiveCategory::ALL {
            assert!(codes.concepts(category).count() >= 3, "{category}");
        }
    }

    #[test]
    fn parser_skips_comments_and_accepts_terms() {
        let text = "# header\n\n22298006 |Myocardial infarction|\n  404684003   # trailing\n";
        let list = parse_concept_list("test.txt", text).unwrap();
        assert_eq!(
            list.into_iter().collect::<Vec<_>>(),
            ["22298006", "404684003"]
        );
    }

    #[test]
    fn parser_names_the_bad_line() {
        let text = "# header\n22298006\n22298007\n";
        let error = parse_concept_list("extra.txt", text).unwrap_err();
        match &error {
            PolicyError::ConceptListLine { line, file, .. } => {
                assert_eq!(*line, 3);
                assert_eq!(file, "extra.txt");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(error.to_string().contains("extra.txt line 3"), "{error}");
        let error = parse_concept_list("x", "22298006 chlamydia\n").unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[test]
    fn extra_codes_are_checked_and_added() {
        let codes = SensitiveCodes::empty()
            .with_extra(SensitiveCategory::Gender, ["22298006"])
            .unwrap();
        assert!(codes.contains(SensitiveCategory::Gender, &Coding::new(SNOMED, "22298006")));
        assert!(!codes.contains(
            SensitiveCategory::Gender,
            &Coding::new("http://read.info/ctv3", "22298006")
        ));
        assert!(SensitiveCodes::empty()
            .with_extra(SensitiveCategory::Gender, ["abc"])
            .is_err());
    }

    #[test]
    fn only_the_exact_concept_id_matches() {
        let codes = SensitiveCodes::empty()
            .with_extra(SensitiveCategory::Gender, ["22298006"])
            .unwrap();
        for other in [
            "022298006",
            "+22298006",
            " 22298006",
            "22298006 ",
            "2229800",
            "",
        ] {
            assert!(
                !codes.contains(SensitiveCategory::Gender, &Coding::new(SNOMED, other)),
                "{other:?} matched"
            );
        }
        assert!(!codes.contains(
            SensitiveCategory::AssistedFertilisation,
            &Coding::new(SNOMED, "22298006")
        ));
    }

    #[test]
    fn an_item_is_in_every_category_its_labels_or_codes_name() {
        let codes = SensitiveCodes::empty()
            .with_extra(SensitiveCategory::Gender, ["22298006"])
            .unwrap()
            .with_extra(SensitiveCategory::SexuallyTransmittedDisease, ["22298006"])
            .unwrap();
        let item = ItemFacts {
            codes: vec![Coding::new(SNOMED, "22298006")],
            security: vec![Coding::new(
                SNOMED,
                SensitiveCategory::TerminationOfPregnancy.refset_id(),
            )],
            ..ItemFacts::default()
        };
        assert_eq!(
            codes.categories_of(&item).iter().collect::<Vec<_>>(),
            [
                SensitiveCategory::Gender,
                SensitiveCategory::TerminationOfPregnancy,
                SensitiveCategory::SexuallyTransmittedDisease
            ]
        );
        assert_eq!(
            codes.categories_of(&ItemFacts::default()),
            Categories::default()
        );
    }
}
