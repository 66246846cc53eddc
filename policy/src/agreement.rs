//! Data sharing agreements: what a registered partner may see, and by which roles.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fhir::Section;

/// The kind of service a partner is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum PartnerType {
    Ambulance,
    OutOfHours,
    CommunityHealth,
    SocialCare,
    Acute,
    MentalHealth,
}

impl PartnerType {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<PartnerType> {
        name.parse().ok()
    }
}

/// The job role of a request whose token names none.
pub const UNKNOWN_JOB_ROLE: &str = "UNK";

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

    /// Whether `role` is in the set. `UNK` (no job role in the token) is in `Any` only: a
    /// listed set names roles, and "unknown" is not one (SPEC §3).
    pub fn contains(&self, role: &str) -> bool {
        match self {
            RoleSet::Any => true,
            RoleSet::Only(roles) => role != UNKNOWN_JOB_ROLE && roles.contains(role),
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
    /// The agreement obliges the partner's users to ask the patient at the point of care
    /// (`--attested-permission`): a request may then leave `permission_to_view` out.
    #[serde(default)]
    pub attested_permission: bool,
}

impl Agreement {
    /// Sections released under an override when the agreement names none.
    pub const DEFAULT_OVERRIDE_SECTIONS: [Section; 5] = [
        Section::Allergies,
        Section::Medications,
        Section::EndOfLife,
        Section::CommunicationPreferences,
        Section::RisksAndWarnings,
    ];
}

impl Agreement {
    /// Whether the agreement is in force at `now` (unix seconds): `expires` is the last day,
    /// inclusive, so it lapses at the following midnight UTC.
    pub fn in_force(&self, now: i64) -> bool {
        match self.expires {
            None => true,
            Some(last_day) => {
                let lapses = last_day.midnight().assume_utc().unix_timestamp() + 86_400;
                now < lapses
            }
        }
    }

    /// Whether `ods` (a `requesting_organization`) is the partner itself or one of its sites.
    /// ODS codes compare ignoring ASCII case: they are case-insensitive identifiers.
    pub fn accepts_organisation(&self, ods: &str) -> bool {
        !ods.is_empty()
            && (self.ods.eq_ignore_ascii_case(ods)
                || self.sites.iter().any(|site| site.eq_ignore_ascii_case(ods)))
    }

    /// The sections an override may release: the agreement's, or the default.
    pub fn sections_under_override(&self) -> BTreeSet<Section> {
        match &self.override_sections {
            Some(sections) => sections.clone(),
            None => Agreement::DEFAULT_OVERRIDE_SECTIONS.into_iter().collect(),
        }
    }
}
