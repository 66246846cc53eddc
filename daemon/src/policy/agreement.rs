//! Data sharing agreements: what a registered partner may see, and by which roles.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fhir::Section;

/// The kind of service a partner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartnerType {
    Ambulance,
    OutOfHours,
    CommunityHealth,
    SocialCare,
    Acute,
    MentalHealth,
}

impl PartnerType {
    pub const ALL: [PartnerType; 6] = [
        PartnerType::Ambulance,
        PartnerType::OutOfHours,
        PartnerType::CommunityHealth,
        PartnerType::SocialCare,
        PartnerType::Acute,
        PartnerType::MentalHealth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PartnerType::Ambulance => "ambulance",
            PartnerType::OutOfHours => "out-of-hours",
            PartnerType::CommunityHealth => "community-health",
            PartnerType::SocialCare => "social-care",
            PartnerType::Acute => "acute",
            PartnerType::MentalHealth => "mental-health",
        }
    }

    pub fn from_name(name: &str) -> Option<PartnerType> {
        PartnerType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A set of SDS job role codes, or every role (`'*'`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleSet {
    Any,
    Only(BTreeSet<String>),
}

impl RoleSet {
    pub fn none() -> RoleSet {
        RoleSet::Only(BTreeSet::new())
    }

    pub fn contains(&self, role: &str) -> bool {
        match self {
            RoleSet::Any => true,
            RoleSet::Only(roles) => roles.contains(role),
        }
    }
}

/// One partner's data sharing agreement (SPEC §5 step 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agreement {
    /// The partner's ODS code.
    pub ods: String,
    pub name: String,
    pub partner_type: PartnerType,
    /// Other ODS codes (sites) the partner may send as `requesting_organization`.
    #[serde(default)]
    pub sites: BTreeSet<String>,
    pub sections: BTreeSet<Section>,
    pub roles: RoleSet,
    /// Roles that may override; empty means overrides are not allowed.
    pub override_roles: RoleSet,
    /// Sections released under an override; `None` means the default (core, end-of-life and
    /// communication preferences).
    #[serde(default)]
    pub override_sections: Option<BTreeSet<Section>>,
    /// Last day (inclusive, UK civil date treated as UTC) the agreement is in force.
    #[serde(default)]
    pub expires: Option<time::Date>,
}

impl Agreement {
    /// Sections released under an override when the agreement names none.
    pub const DEFAULT_OVERRIDE_SECTIONS: [Section; 4] = [
        Section::Allergies,
        Section::Medications,
        Section::EndOfLife,
        Section::CommunicationPreferences,
    ];
}
