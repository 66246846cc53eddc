//! The sections of a structured record (SPEC §4): which resources each holds, its List code,
//! and whether it belongs to the core or the additional tier.

use serde::{Deserialize, Serialize};

/// A patient's sharing tier, and the tier each section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Core,
    Additional,
}

/// One section of the structured record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Allergies,
    Medications,
    Problems,
    Immunisations,
    Consultations,
    Investigations,
    UncategorisedData,
    Referrals,
    Procedures,
    EndOfLife,
    CommunicationPreferences,
    RisksAndWarnings,
}

/// The code system of the List codes MIG defines for sections GP Connect has none for.
pub const MIG_LIST_CODE_SYSTEM: &str = "urn:mig:list-code";

impl Section {
    /// In SPEC §4 order, which is also the order of the Lists in a Bundle.
    pub const ALL: [Section; 12] = [
        Section::Allergies,
        Section::Medications,
        Section::Problems,
        Section::Immunisations,
        Section::Consultations,
        Section::Investigations,
        Section::UncategorisedData,
        Section::Referrals,
        Section::Procedures,
        Section::EndOfLife,
        Section::CommunicationPreferences,
        Section::RisksAndWarnings,
    ];

    /// The name used in config, the CLI and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Section::Allergies => "allergies",
            Section::Medications => "medications",
            Section::Problems => "problems",
            Section::Immunisations => "immunisations",
            Section::Consultations => "consultations",
            Section::Investigations => "investigations",
            Section::UncategorisedData => "uncategorised-data",
            Section::Referrals => "referrals",
            Section::Procedures => "procedures",
            Section::EndOfLife => "end-of-life",
            Section::CommunicationPreferences => "communication-preferences",
            Section::RisksAndWarnings => "risks-and-warnings",
        }
    }

    pub fn from_name(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn tier(self) -> Tier {
        match self {
            Section::Allergies | Section::Medications => Tier::Core,
            _ => Tier::Additional,
        }
    }

    /// The `$gpc.getstructuredrecord` parameter that asks for this section.
    pub fn parameter_name(self) -> &'static str {
        match self {
            Section::Allergies => "includeAllergies",
            Section::Medications => "includeMedication",
            Section::Problems => "includeProblems",
            Section::Immunisations => "includeImmunisations",
            Section::Consultations => "includeConsultations",
            Section::Investigations => "includeInvestigations",
            Section::UncategorisedData => "includeUncategorisedData",
            Section::Referrals => "includeReferrals",
            Section::Procedures => "includeProcedures",
            Section::EndOfLife => "includeEndOfLife",
            Section::CommunicationPreferences => "includeCommunicationPreferences",
            Section::RisksAndWarnings => "includeRisksAndWarnings",
        }
    }

    pub fn from_parameter_name(name: &str) -> Option<Section> {
        Section::ALL
            .into_iter()
            .find(|s| s.parameter_name() == name)
    }

    /// The List code: (system, code, display); the display is also the List's title, as the
    /// GP Connect provider assurance suite expects.
    pub fn list_code(self) -> (&'static str, &'static str, &'static str) {
        const SCT: &str = super::SNOMED;
        match self {
            Section::Allergies => (SCT, "886921000000105", "Allergies and adverse reactions"),
            Section::Medications => (SCT, "933361000000108", "Medications and medical devices"),
            Section::Problems => (SCT, "717711000000103", "Problems"),
            Section::Immunisations => (SCT, "1102181000000102", "Immunisations"),
            Section::Consultations => (SCT, "1149501000000101", "List of consultations"),
            Section::Investigations => (SCT, "887191000000108", "Investigations and results"),
            Section::UncategorisedData => (SCT, "826501000000100", "Uncategorised data"),
            Section::Referrals => (SCT, "792931000000107", "Outbound referral"),
            Section::Procedures => (MIG_LIST_CODE_SYSTEM, "procedures", "Procedures"),
            Section::EndOfLife => (
                MIG_LIST_CODE_SYSTEM,
                "end-of-life",
                "Anticipatory and end-of-life care",
            ),
            Section::CommunicationPreferences => (
                MIG_LIST_CODE_SYSTEM,
                "communication-preferences",
                "Communication preferences",
            ),
            Section::RisksAndWarnings => (
                MIG_LIST_CODE_SYSTEM,
                "risks-and-warnings",
                "Risks and warnings",
            ),
        }
    }

    /// The section a resource type belongs to, if any (Patient, Consent and shared resources
    /// such as Practitioner belong to none).
    pub fn for_resource_type(resource_type: &str) -> Option<Section> {
        Some(match resource_type {
            "AllergyIntolerance" => Section::Allergies,
            "MedicationStatement" | "MedicationRequest" => Section::Medications,
            "Condition" => Section::Problems,
            "Immunization" => Section::Immunisations,
            "Encounter" => Section::Consultations,
            "Observation" | "DiagnosticReport" => Section::Investigations,
            "ServiceRequest" => Section::Referrals,
            "Procedure" => Section::Procedures,
            "CarePlan" => Section::EndOfLife,
            "Flag" => Section::CommunicationPreferences,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parameters_round_trip() {
        for section in Section::ALL {
            assert_eq!(Section::from_name(section.name()), Some(section));
            assert_eq!(
                Section::from_parameter_name(section.parameter_name()),
                Some(section)
            );
        }
    }

    #[test]
    fn only_allergies_and_medications_are_core() {
        let core: Vec<_> = Section::ALL
            .into_iter()
            .filter(|s| s.tier() == Tier::Core)
            .collect();
        assert_eq!(core, [Section::Allergies, Section::Medications]);
    }
}
