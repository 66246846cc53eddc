//! A synthetic GP practice for development, demos, tests and benchmarks: FHIR R4 (UK Core style)
//! Bulk Data NDJSON, one file per resource type, the same bytes for the same seed, written as made.
//!
//! # What it holds
//!
//! One practice (`Organization`, ODS [`DEFAULT_PRACTICE_ODS`], in the Tees Valley sub-ICB), its
//! clinicians (`Practitioner`: GPs, nurses, a pharmacist, a healthcare assistant), its premises
//! (`Location`), the medicines it prescribes (`Medication`, shared by every patient's
//! `MedicationStatement` / `MedicationRequest` through `medicationReference`), and patients.
//! Each patient has an NHS number in the 999 test range (Modulus 11 valid, unique), a name and
//! address drawn from a Stockton-on-Tees practice list, and a record in every SPEC §4 section:
//! allergies (some resolved), long-term conditions with repeat prescribing (plan, statement and
//! issued orders, each citing its condition), immunisations by age, consultations with vital
//! signs, pathology reports whose `result` cites their Observations, acute problems and
//! prescriptions, referrals, procedures, anticipatory care plans for some of the very old and
//! ill, and communication-preference flags. Some working-age patients have fit notes (SPEC §12).
//! Record size follows a log-normal draw scaled by age: about 150 resources on average, most
//! records 30-150, a few over 500.
//!
//! Sharing preferences are `Consent` resources exactly as SPEC §6 reads them: tier
//! (`urn:mig:sharing-preference` or the GP SNOMED synonyms), some superseded by a newer one,
//! specific consent to sensitive categories (`provision.securityLabel`), standing consent for a
//! third party by ODS code with a period, and Type 1 opt-out (as a `Consent` or an
//! `Observation`). Items in every sensitive category are present both labelled (`meta.security`
//! refset id, with generic codes) and coded (a concept from [`vocab::SENSITIVE_CATEGORIES`], no
//! label), with prescriptions citing sensitive conditions; some items are practice-confidential
//! (`R`, and a few `V`).
//!
//! # Demo patients
//!
//! The first patients of every practice are fixed cases, whatever the seed ([`demo_patients`]
//! lists them with NHS numbers; the rest of their record still varies with the seed):
//!
//! | index | kind | effective preference | what to expect |
//! |---|---|---|---|
//! | 0 | `Dissent` | dissent | refused (`NO_PATIENT_CONSENT`), even with an override |
//! | 1 | `DissentGpCoded` | dissent | dissent coded as SNOMED 416409005 |
//! | 2 | `CoreOnly` | core | allergies and medications only |
//! | 3 | `CoreGpCoded` | core | core coded as SNOMED 417528008 |
//! | 4 | `CoreAndAdditional` | core-and-additional | everything, no sensitive or confidential items |
//! | 5 | `NoPreference` | core (default) | no Consent at all |
//! | 6 | `DissentWithdrawn` | core-and-additional | older dissent, newer core-and-additional |
//! | 7 | `NewerDissent` | dissent | older core-and-additional, newer dissent |
//! | 8 | `SensitiveWithoutConsent` | core-and-additional | items of all four categories, labelled and coded, no specific consent |
//! | 9 | `SpecificConsentSti` | core-and-additional | as 8, with specific consent to the STI category only |
//! | 10 | `StandingThirdPartyConsent` | core-and-additional | standing consent for ODS `8KL21`, in date |
//! | 11 | `LapsedThirdPartyConsent` | core-and-additional | standing consent for ODS `8HQ07`, expired |
//! | 12 | `PracticeConfidential` | core-and-additional | `R` and `V` items, and a prescription citing an `R` condition |
//! | 13 | `Type1OptOut` | core-and-additional | Type 1 opt-out Consent |
//! | 14 | `EndOfLife` | core-and-additional | aged 88, anticipatory care plan, a large record |
//! | 15 | `CommunicationNeeds` | core-and-additional | BSL interpreter and large-print flags |
//! | 16 | `FitNotes` | core-and-additional | aged 45, fit-note Observations |
//! | 17 | `SpecificConsentAll` | core-and-additional | as 8, with specific consent to all four categories |
//!
//! # Ids
//!
//! `Organization` is the ODS code (`A81001`), `Location` `main-surgery`, `Practitioner`
//! `prac-1`..`prac-13` (1-8 GPs), `Medication` `med-{SNOMED/dm+d code}`, `Patient` `p{index}`,
//! and each patient's items `p{index}-{kind}{n}` (`enc`, `cnd`, `obs`, `mrq`, `cns`, ...), so a
//! line can be traced to its patient by eye.
//!
//! # Determinism and dates
//!
//! Each patient has its own ChaCha8 stream (seed, index), so [`Practice::patient`] builds any
//! one patient alone, identical to its lines in the files. Dates are relative to
//! [`Practice::reference_date`] (default [`DEFAULT_REFERENCE_DATE`]), not the clock; in-date
//! standing consents run at least three years past it. JSON keys are written sorted.
//!
//! The SNOMED and dm+d codes look like a real record but are test data: see [`vocab`].
#![forbid(unsafe_code)]

mod patient;
mod people;
pub mod vocab;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use time::Date;

use mig_policy::fhir::{ODS_SYSTEM, PATIENT_SCOPED_TYPES, SHARED_TYPES, SNOMED};

/// The practice's ODS code unless told otherwise.
pub const DEFAULT_PRACTICE_ODS: &str = "A81001";
pub const DEFAULT_PRACTICE_NAME: &str = "Riverside Medical Practice (synthetic)";
/// The sub-ICB location (former CCG) the practice belongs to, for statistical extracts.
pub const DEFAULT_SUB_ICB: &str = "16C";
/// "Today" for the generated records.
pub const DEFAULT_REFERENCE_DATE: Date = time::macros::date!(2026 - 11 - 01);
/// NHS numbers come from 999 000 000 0 to 999 999 999 9, one block of 11 per patient.
pub const MAX_PATIENTS: u64 = 90_909;
/// The id of the practice's `Location`.
pub const LOCATION_ID: &str = "main-surgery";

/// Why a synthetic practice could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// More patients asked for than the 999 test range can number.
    #[error("cannot make {requested} patients: the NHS number test range holds at most {max}")]
    TooManyPatients { requested: u64, max: u64 },
    /// The output directory could not be created.
    #[error("creating output directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An NDJSON file could not be created or an old one removed.
    #[error("creating {path}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A resource could not be serialized (for a shared resource, `index` is 0).
    #[error("serializing a resource of patient {index}")]
    Serialize {
        index: u64,
        source: serde_json::Error,
    },
    /// A generator thread stopped without a result.
    #[error("a generator thread failed")]
    WorkerFailed,
    /// Writing or flushing an NDJSON file failed.
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A patient's sharing tier as SPEC §6 records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SharingPreference {
    Dissent,
    Core,
    CoreAndAdditional,
}

impl SharingPreference {
    /// The code in `urn:mig:sharing-preference`.
    pub fn code(self) -> &'static str {
        match self {
            SharingPreference::Dissent => "dissent",
            SharingPreference::Core => "core",
            SharingPreference::CoreAndAdditional => "core-and-additional",
        }
    }

    pub fn display(self) -> &'static str {
        match self {
            SharingPreference::Dissent => "Dissent from sharing the record",
            SharingPreference::Core => "Share the core record",
            SharingPreference::CoreAndAdditional => "Share the core and additional record",
        }
    }
}

/// The fixed cases at the start of every synthetic practice (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DemoKind {
    Dissent,
    DissentGpCoded,
    CoreOnly,
    CoreGpCoded,
    CoreAndAdditional,
    NoPreference,
    DissentWithdrawn,
    NewerDissent,
    SensitiveWithoutConsent,
    SpecificConsentSti,
    StandingThirdPartyConsent,
    LapsedThirdPartyConsent,
    PracticeConfidential,
    Type1OptOut,
    EndOfLife,
    CommunicationNeeds,
    FitNotes,
    SpecificConsentAll,
}

impl DemoKind {
    /// In patient-index order.
    pub const ALL: [DemoKind; 18] = [
        DemoKind::Dissent,
        DemoKind::DissentGpCoded,
        DemoKind::CoreOnly,
        DemoKind::CoreGpCoded,
        DemoKind::CoreAndAdditional,
        DemoKind::NoPreference,
        DemoKind::DissentWithdrawn,
        DemoKind::NewerDissent,
        DemoKind::SensitiveWithoutConsent,
        DemoKind::SpecificConsentSti,
        DemoKind::StandingThirdPartyConsent,
        DemoKind::LapsedThirdPartyConsent,
        DemoKind::PracticeConfidential,
        DemoKind::Type1OptOut,
        DemoKind::EndOfLife,
        DemoKind::CommunicationNeeds,
        DemoKind::FitNotes,
        DemoKind::SpecificConsentAll,
    ];

    pub fn for_index(index: u64) -> Option<DemoKind> {
        usize::try_from(index)
            .ok()
            .and_then(|i| DemoKind::ALL.get(i).copied())
    }

    /// The tier policy should find once newest-wins is applied (`core` when none is recorded).
    pub fn preference(self) -> SharingPreference {
        match self {
            DemoKind::Dissent | DemoKind::DissentGpCoded | DemoKind::NewerDissent => {
                SharingPreference::Dissent
            }
            DemoKind::CoreOnly | DemoKind::CoreGpCoded | DemoKind::NoPreference => {
                SharingPreference::Core
            }
            _ => SharingPreference::CoreAndAdditional,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            DemoKind::Dissent => "dissent (urn:mig:sharing-preference)",
            DemoKind::DissentGpCoded => "dissent coded as SNOMED 416409005",
            DemoKind::CoreOnly => "core only",
            DemoKind::CoreGpCoded => "core coded as SNOMED 417528008",
            DemoKind::CoreAndAdditional => "core and additional, nothing sensitive",
            DemoKind::NoPreference => "no preference recorded (core by default)",
            DemoKind::DissentWithdrawn => "older dissent replaced by core-and-additional",
            DemoKind::NewerDissent => "older core-and-additional replaced by dissent",
            DemoKind::SensitiveWithoutConsent => {
                "items in all four sensitive categories, no specific consent"
            }
            DemoKind::SpecificConsentSti => {
                "items in all four sensitive categories, specific consent to STI only"
            }
            DemoKind::StandingThirdPartyConsent => "standing consent for ODS 8KL21, in date",
            DemoKind::LapsedThirdPartyConsent => "standing consent for ODS 8HQ07, expired",
            DemoKind::PracticeConfidential => "practice-confidential items (R and V)",
            DemoKind::Type1OptOut => "Type 1 opt-out",
            DemoKind::EndOfLife => "aged 88, anticipatory care plan, large record",
            DemoKind::CommunicationNeeds => "BSL interpreter and large-print flags",
            DemoKind::FitNotes => "fit notes",
            DemoKind::SpecificConsentAll => {
                "items in all four sensitive categories, specific consent to all four"
            }
        }
    }

    /// The ODS code of a standing-consent third party, if the case has one.
    pub fn third_party_ods(self) -> Option<&'static str> {
        let index = match self {
            DemoKind::StandingThirdPartyConsent => 0,
            DemoKind::LapsedThirdPartyConsent => 1,
            _ => return None,
        };
        vocab::THIRD_PARTY_ORGANISATIONS
            .get(index)
            .map(|(ods, _)| *ods)
    }
}

/// A fixed demo case: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPatient {
    pub index: u64,
    pub patient_id: String,
    pub nhs_number: String,
    pub kind: DemoKind,
    pub preference: SharingPreference,
    /// For standing-consent cases, the third party's ODS code.
    pub third_party_ods: Option<&'static str>,
    pub description: &'static str,
}

/// The demo cases, in index order; a practice of N patients holds the first N of them.
pub fn demo_patients() -> Vec<DemoPatient> {
    DemoKind::ALL
        .iter()
        .zip(0u64..)
        .map(|(&kind, index)| DemoPatient {
            index,
            patient_id: patient_id(index),
            nhs_number: nhs_number(index).unwrap_or_default(),
            kind,
            preference: kind.preference(),
            third_party_ods: kind.third_party_ods(),
            description: kind.description(),
        })
        .collect()
}

/// The `Patient.id` of the patient at `index`.
pub fn patient_id(index: u64) -> String {
    format!("p{index}")
}

pub fn practitioner_id(staff_index: usize) -> String {
    format!("prac-{}", staff_index + 1)
}

pub fn medication_id(code: &str) -> String {
    format!("med-{code}")
}

/// The NHS number of the patient at `index`: `999` then six digits and a check digit, unique
/// per index and scattered over the range so that neighbours do not look sequential.
pub fn nhs_number(index: u64) -> Option<String> {
    if index >= MAX_PATIENTS {
        return None;
    }
    // 65537 is prime and does not divide 90909, so this permutes the blocks.
    let block = (index * 65_537 + 12_345) % MAX_PATIENTS;
    (0..11).find_map(|offset| {
        let body = 999_000_000 + block * 11 + offset;
        let digits = body.to_string();
        let weighted: u32 = digits
            .chars()
            .filter_map(|c| c.to_digit(10))
            .zip((2..=10).rev())
            .map(|(digit, weight)| digit * weight)
            .sum();
        // Within 11 consecutive bodies at most two give the forbidden check value 10.
        match 11 - weighted % 11 {
            10 => None,
            11 => Some(format!("{digits}0")),
            check => Some(format!("{digits}{check}")),
        }
    })
}

/// A synthetic practice: a seed and the few things a caller may want to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Practice {
    pub seed: u64,
    pub ods_code: String,
    pub name: String,
    /// "Today" for the generated records.
    pub reference_date: Date,
}

/// What [`Practice::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub dir: PathBuf,
    pub patients: u64,
    pub resources: u64,
    /// Lines per file name (`Patient.ndjson` → count).
    pub files: BTreeMap<String, u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "wrote {} patients, {} resources to {}",
            self.patients,
            self.resources,
            self.dir.display()
        )?;
        for (file, lines) in &self.files {
            writeln!(f, "  {file:<28} {lines:>9}")?;
        }
        Ok(())
    }
}

/// Writes a practice of `patients` patients from `seed` into `dir` (see [`Practice::write`]).
pub fn write_practice(dir: &Path, patients: u64, seed: u64) -> Result<Summary, SyntheticError> {
    Practice::new(seed).write(dir, patients)
}

impl Practice {
    pub fn new(seed: u64) -> Practice {
        Practice {
            seed,
            ods_code: DEFAULT_PRACTICE_ODS.to_owned(),
            name: DEFAULT_PRACTICE_NAME.to_owned(),
            reference_date: DEFAULT_REFERENCE_DATE,
        }
    }

    /// The practice `Organization.id`: its ODS code, which is a valid FHIR id.
    pub fn organization_id(&self) -> &str {
        &self.ods_code
    }

    pub fn location_id(&self) -> &'static str {
        LOCATION_ID
    }

    fn rng_for(&self, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        // Stream 0 is left for practice-wide choices; each patient has its own.
        rng.set_stream(index.wrapping_add(1));
        rng
    }

    /// The resources every patient's items point at: the practice, its premises, its
    /// clinicians and the medicines it prescribes.
    pub fn shared_resources(&self) -> Vec<Value> {
        let address = json!({
            "use": "work", "type": "physical", "line": ["Riverside House", "Bridge Road"],
            "city": "Stockton-on-Tees", "postalCode": "TS18 3AB", "country": "GB",
        });
        let mut resources = vec![
            json!({
                "resourceType": "Organization",
                "id": self.organization_id(),
                "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Organization"]},
                "identifier": [{"system": ODS_SYSTEM, "value": self.ods_code}],
                "active": true,
                "type": [{"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/organisation-role",
                    "code": "76", "display": "GP PRACTICE"}]}],
                "name": self.name,
                "telecom": [{"system": "phone", "value": "01632 960000", "use": "work"}],
                "address": [address],
                "partOf": {"identifier": {"system": ODS_SYSTEM, "value": DEFAULT_SUB_ICB},
                    "display": "NHS North East and North Cumbria ICB - 16C"},
            }),
            json!({
                "resourceType": "Location",
                "id": LOCATION_ID,
                "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Location"]},
                "status": "active",
                "name": "Riverside House surgery",
                "address": address,
                "managingOrganization": {"reference": format!("Organization/{}", self.organization_id())},
            }),
        ];
        for (index, (family, given, prefix, role)) in people::PRACTICE_STAFF.iter().enumerate() {
            let number = 1_000_000 + (index as u64 * 7_919 + 3_571) % 8_999_999;
            let mut identifiers = vec![json!({
                "system": "https://fhir.nhs.uk/Id/sds-user-id",
                "value": format!("55{:010}", index as u64 * 104_729 + 20_011),
            })];
            let register = match *role {
                "gp" => Some(("https://fhir.hl7.org.uk/Id/gmc-number", number.to_string())),
                "nurse" => Some((
                    "https://fhir.hl7.org.uk/Id/nmc-number",
                    format!("{:02}Y{:04}E", number % 100, number % 10_000),
                )),
                "pharmacist" => Some((
                    "https://fhir.hl7.org.uk/Id/gphc-number",
                    (2_000_000 + number % 100_000).to_string(),
                )),
                _ => None,
            };
            if let Some((system, value)) = register {
                identifiers.push(json!({ "system": system, "value": value }));
            }
            resources.push(json!({
                "resourceType": "Practitioner",
                "id": practitioner_id(index),
                "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Practitioner"]},
                "identifier": identifiers,
                "active": true,
                "name": [{"use": "official", "family": family, "given": [given], "prefix": [prefix]}],
                "telecom": [{"system": "phone", "value": "01632 960000", "use": "work"}],
            }));
        }
        for medicine in vocab::MEDICINES {
            resources.push(json!({
                "resourceType": "Medication",
                "id": medication_id(medicine.code),
                "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Medication"]},
                "code": {"coding": [{"system": SNOMED, "code": medicine.code, "display": medicine.display}]},
            }));
        }
        resources
    }

    /// The "typical patient" of the benchmarks (SPEC §11): core-and-additional sharing (and no
    /// dissent, older or newer) and 140–170 resources. Returns (NHS number, resources) for up
    /// to `limit` of them among the first `patients`, skipping the demo cases.
    pub fn typical_patients(
        &self,
        patients: u64,
        limit: usize,
    ) -> Result<Vec<(String, usize)>, SyntheticError> {
        let mut found = Vec::new();
        for index in demo_patients().len() as u64..patients {
            if found.len() == limit {
                break;
            }
            let resources = self.patient(index)?;
            let text: Vec<String> = resources.iter().map(Value::to_string).collect();
            let full = text.iter().any(|r| r.contains("core-and-additional"))
                && !text
                    .iter()
                    .any(|r| r.contains("\"dissent\"") || r.contains("416409005"));
            if full && (140..=170).contains(&resources.len()) {
                found.push((nhs_number(index).unwrap_or_default(), resources.len()));
            }
        }
        Ok(found)
    }

    /// Every resource of the patient at `index`, the `Patient` first; the same as that
    /// patient's lines in [`Practice::write`]'s files.
    pub fn patient(&self, index: u64) -> Result<Vec<Value>, SyntheticError> {
        let nhs_number = nhs_number(index).ok_or(SyntheticError::TooManyPatients {
            requested: index.saturating_add(1),
            max: MAX_PATIENTS,
        })?;
        Ok(patient::build(self, index, &nhs_number))
    }

    /// Writes the shared resources and `patients` patients to `dir` as `{Type}.ndjson`, one
    /// patient at a time, replacing any NDJSON files of those names already there.
    pub fn write(&self, dir: &Path, patients: u64) -> Result<Summary, SyntheticError> {
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, 8) as u64;
        self.write_with_workers(dir, patients, workers)
    }

    fn write_with_workers(
        &self,
        dir: &Path,
        patients: u64,
        workers: u64,
    ) -> Result<Summary, SyntheticError> {
        let workers = workers.max(1);
        if patients > MAX_PATIENTS {
            return Err(SyntheticError::TooManyPatients {
                requested: patients,
                max: MAX_PATIENTS,
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| SyntheticError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        // Leftovers from an earlier run would otherwise be imported with this one.
        let types = PATIENT_SCOPED_TYPES
            .iter()
            .chain(SHARED_TYPES)
            .chain(&["Patient"]);
        for resource_type in types {
            let path = dir.join(format!("{resource_type}.ndjson"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(SyntheticError::CreateFile { path, source }),
            }
        }
        let mut output = Output {
            dir: dir.to_owned(),
            files: BTreeMap::new(),
            resources: 0,
        };
        for resource in self.shared_resources() {
            output.write(&resource)?;
        }
        // Patients are independent (each has its own random stream), so worker threads render
        // contiguous runs of them and the lines are written in patient order: the bytes do not
        // depend on the number of threads. A batch bounds how much is held at once.
        let mut start = 0;
        while start < patients {
            let end = patients.min(start + PATIENTS_PER_WORKER_BATCH * workers);
            let per_worker = (end - start).div_ceil(workers);
            let runs: Vec<Result<Vec<Rendered>, SyntheticError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|worker| {
                        let from = (start + worker * per_worker).min(end);
                        let to = (from + per_worker).min(end);
                        scope.spawn(move || {
                            (from..to)
                                .map(|index| self.render_patient(index))
                                .collect::<Result<Vec<_>, _>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().unwrap_or(Err(SyntheticError::WorkerFailed)))
                    .collect()
            });
            for run in runs {
                for rendered in run? {
                    for (resource_type, (bytes, lines)) in rendered {
                        output.write_lines(&resource_type, &bytes, lines)?;
                    }
                }
            }
            start = end;
        }
        output.finish(patients)
    }

    /// One patient's NDJSON lines, grouped by resource type.
    fn render_patient(&self, index: u64) -> Result<Rendered, SyntheticError> {
        let mut rendered = Rendered::new();
        for resource in self.patient(index)? {
            let resource_type = resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("Unknown");
            if !rendered.contains_key(resource_type) {
                rendered.insert(resource_type.to_owned(), (Vec::new(), 0));
            }
            if let Some((bytes, lines)) = rendered.get_mut(resource_type) {
                serde_json::to_writer(&mut *bytes, &resource)
                    .map_err(|source| SyntheticError::Serialize { index, source })?;
                bytes.push(b'\n');
                *lines += 1;
            }
        }
        Ok(rendered)
    }
}

/// How many patients each worker renders before the batch is written out.
const PATIENTS_PER_WORKER_BATCH: u64 = 32;

/// Per resource type: NDJSON bytes and the number of lines in them.
type Rendered = BTreeMap<String, (Vec<u8>, u64)>;

/// The open NDJSON files, by resource type.
struct Output {
    dir: PathBuf,
    files: BTreeMap<String, (BufWriter<File>, u64)>,
    resources: u64,
}

impl Output {
    fn write(&mut self, resource: &Value) -> Result<(), SyntheticError> {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("Unknown");
        let mut line = serde_json::to_vec(resource)
            .map_err(|source| SyntheticError::Serialize { index: 0, source })?;
        line.push(b'\n');
        self.write_lines(resource_type, &line, 1)
    }

    fn write_lines(
        &mut self,
        resource_type: &str,
        bytes: &[u8],
        count: u64,
    ) -> Result<(), SyntheticError> {
        if !self.files.contains_key(resource_type) {
            let path = self.path(resource_type);
            let file = File::create(&path)
                .map_err(|source| SyntheticError::CreateFile { path, source })?;
            self.files.insert(
                resource_type.to_owned(),
                (BufWriter::with_capacity(256 * 1024, file), 0),
            );
        }
        let path = self.path(resource_type);
        let Some((writer, lines)) = self.files.get_mut(resource_type) else {
            return Ok(());
        };
        writer
            .write_all(bytes)
            .map_err(|source| SyntheticError::Write { path, source })?;
        *lines += count;
        self.resources += count;
        Ok(())
    }

    fn path(&self, resource_type: &str) -> PathBuf {
        self.dir.join(format!("{resource_type}.ndjson"))
    }

    fn finish(self, patients: u64) -> Result<Summary, SyntheticError> {
        let mut files = BTreeMap::new();
        for (resource_type, (writer, lines)) in self.files {
            let path = self.dir.join(format!("{resource_type}.ndjson"));
            // Flushed, not synced: this is regenerable test data, read back straight away.
            writer.into_inner().map_err(|error| SyntheticError::Write {
                path,
                source: error.into_error(),
            })?;
            files.insert(format!("{resource_type}.ndjson"), lines);
        }
        Ok(Summary {
            dir: self.dir,
            patients,
            resources: self.resources,
            files,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use mig_policy::fhir::{extract_facts, is_valid_nhs_number};

    #[test]
    fn nhs_numbers_are_valid_unique_and_in_the_test_range() {
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..MAX_PATIENTS {
            let number = nhs_number(index).unwrap();
            assert!(number.starts_with("999"), "{number}");
            assert!(is_valid_nhs_number(&number), "{number}");
            assert!(seen.insert(number), "index {index} repeats an NHS number");
        }
        assert_eq!(nhs_number(MAX_PATIENTS), None);
    }

    #[test]
    fn demo_patients_are_built_as_documented() {
        let practice = Practice::new(7);
        for demo in demo_patients() {
            let resources = practice.patient(demo.index).unwrap();
            let patient = extract_facts(&resources[0]).unwrap();
            assert_eq!(patient.id, demo.patient_id);
            assert_eq!(
                patient.nhs_number.as_deref(),
                Some(demo.nhs_number.as_str())
            );
        }
    }

    #[test]
    fn shared_resources_pass_extraction() {
        for resource in Practice::new(1).shared_resources() {
            extract_facts(&resource).unwrap();
        }
    }

    #[test]
    fn one_patient_is_the_same_built_alone_or_again() {
        let practice = Practice::new(42);
        assert_eq!(
            practice.patient(123).unwrap(),
            practice.patient(123).unwrap()
        );
        assert_ne!(
            practice.patient(123).unwrap(),
            practice.patient(124).unwrap()
        );
        assert_ne!(
            practice.patient(123).unwrap(),
            Practice::new(43).patient(123).unwrap()
        );
    }

    #[test]
    fn output_does_not_depend_on_the_number_of_threads() {
        let (one, three) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let practice = Practice::new(5);
        practice.write_with_workers(one.path(), 70, 1).unwrap();
        practice.write_with_workers(three.path(), 70, 3).unwrap();
        for name in ["Patient.ndjson", "Observation.ndjson", "Consent.ndjson"] {
            let a = std::fs::read(one.path().join(name)).unwrap();
            let b = std::fs::read(three.path().join(name)).unwrap();
            assert!(a == b, "{name} differs");
        }
    }

    #[test]
    fn refuses_more_patients_than_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let error = write_practice(dir.path(), MAX_PATIENTS + 1, 1).unwrap_err();
        assert!(matches!(error, SyntheticError::TooManyPatients { .. }));
    }
}
