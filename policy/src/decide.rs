//! The access decision (SPEC §5 steps 1 and 3 to 8) and item filtering, in SPEC order: the
//! first refusal wins. Step 2 (headers, JWT, NHS number, Parameters) belongs to the API.

use std::collections::{BTreeSet, HashMap};

use super::{
    preferences, AccessRequest, Agreement, Basis, Decision, ErrorCode, PatientData, Permission,
    Preferences, Refusal, Release, SensitiveCodes, SharingPreference, JUSTIFICATION_CHARS,
};
use crate::fhir::{
    file_items, ItemFacts, Section, Tier, CONFIDENTIALITY_SYSTEM, CONFIDENTIALITY_SYSTEM_OID,
    CONFIDENTIALITY_SYSTEM_V3,
};

/// Decides one request.
///
/// - `agreement`: the DSA registered for the client certificate, `None` if it matched none.
/// - `patient`: the patient as the replica holds them, `None` if unknown.
pub fn decide(
    agreement: Option<&Agreement>,
    request: &AccessRequest,
    patient: Option<&PatientData>,
    sensitive: &SensitiveCodes,
) -> Decision {
    let refuse = |code: ErrorCode, reason: String| Decision::Refused(Refusal { code, reason });
    let now = request.now;

    // 1. Partner: registered and in date; the requesting organisation is the partner or a site.
    let Some(agreement) = agreement else {
        return refuse(
            ErrorCode::AccessDenied,
            "client certificate matches no registered partner".into(),
        );
    };
    if !agreement.in_force(now) {
        let expiry = agreement.expires.map(|d| d.to_string()).unwrap_or_default();
        return refuse(
            ErrorCode::AccessDenied,
            format!("data sharing agreement expired (last day {expiry})"),
        );
    }
    if !agreement.accepts_organisation(&request.requesting_ods) {
        return refuse(
            ErrorCode::AccessDenied,
            "requesting organisation is neither the partner nor one of its sites".into(),
        );
    }

    // 3. Role.
    if !agreement.roles.contains(&request.job_role) {
        return refuse(
            ErrorCode::AccessDenied,
            "job role not allowed by the data sharing agreement".into(),
        );
    }

    // 4. Patient.
    let Some(patient) = patient else {
        return refuse(
            ErrorCode::PatientNotFound,
            "patient not in the replica".into(),
        );
    };
    // A patient GP Connect would not return is answered exactly as an unknown one (SPEC §3).
    if let Some(reason) = patient_unavailable(&patient.demographics) {
        return refuse(ErrorCode::PatientNotFound, reason.into());
    }

    // 5. Dissent, before any permission: an override never beats dissent.
    let prefs = preferences(&patient.consents, now);
    if prefs.sharing == SharingPreference::Dissent {
        return refuse(
            ErrorCode::NoPatientConsent,
            "patient has dissented from sharing".into(),
        );
    }

    // 6. Permission to view.
    let basis = match &request.permission {
        Some(Permission::Granted) => Basis::Granted,
        None => {
            // A standing consent naming the partner covers all its sites; one naming a site
            // covers requests from that site.
            let codes = [agreement.ods.as_str(), request.requesting_ods.as_str()];
            match prefs.standing_consent_for(&codes) {
                Some(consent) => Basis::StandingConsent {
                    ods: consent.ods.clone(),
                },
                None if agreement.attested_permission => Basis::Attested,
                None => {
                    return refuse(
                        ErrorCode::NoPatientConsent,
                        "no permission to view and no standing consent for this partner".into(),
                    )
                }
            }
        }
        Some(Permission::Override {
            reason,
            justification,
        }) => {
            if !agreement.override_roles.contains(&request.job_role) {
                return refuse(
                    ErrorCode::AccessDenied,
                    "override not allowed for this job role by the data sharing agreement".into(),
                );
            }
            let Some(reason) = reason else {
                return refuse(
                    ErrorCode::AccessDenied,
                    "override without a valid reason".into(),
                );
            };
            let justification = justification.as_deref().unwrap_or("").trim();
            if !JUSTIFICATION_CHARS.contains(&justification.chars().count()) {
                return refuse(
                    ErrorCode::AccessDenied,
                    format!(
                        "override justification must be {} to {} characters",
                        JUSTIFICATION_CHARS.start(),
                        JUSTIFICATION_CHARS.end()
                    ),
                );
            }
            Basis::Override {
                reason: *reason,
                justification: justification.to_owned(),
            }
        }
    };
    let alert = matches!(basis, Basis::Override { .. });

    // 7. Dataset.
    let mut released_sections: BTreeSet<Section> = request
        .sections
        .iter()
        .copied()
        .filter(|s| agreement.sections.contains(s))
        .filter(|s| tier_allows(prefs.sharing, *s))
        .collect();
    if alert {
        let allowed = agreement.sections_under_override();
        released_sections.retain(|s| allowed.contains(s));
    }
    let withheld_sections = request
        .sections
        .difference(&released_sections)
        .copied()
        .collect();

    // 8. Items.
    let withheld = withheld_items(patient, &prefs, sensitive);
    let mut released_items = Vec::new();
    let mut lists_with_withheld = BTreeSet::new();
    let item_lists = file_items(&patient.items);
    for (index, list) in item_lists.iter().enumerate() {
        let Some(list) = *list else {
            continue;
        };
        if !released_sections.contains(&list.section()) {
            continue;
        }
        if withheld.get(index).copied().unwrap_or(true) {
            lists_with_withheld.insert(list);
        } else {
            released_items.push(index);
        }
    }

    let released_shared = (0..patient.shared.len())
        .filter(|i| {
            !withheld
                .get(patient.items.len() + i)
                .copied()
                .unwrap_or(true)
        })
        .collect();
    Decision::Permitted(Release {
        basis,
        released_sections,
        released_items,
        released_shared,
        item_lists,
        lists_with_withheld,
        withheld_sections,
        alert,
    })
}

fn tier_allows(sharing: SharingPreference, section: Section) -> bool {
    match sharing {
        SharingPreference::Dissent => false,
        SharingPreference::Core => section.tier() == Tier::Core,
        SharingPreference::CoreAndAdditional => true,
    }
}

/// Why a known patient is answered as unknown, if they are: deceased, registration ended, or
/// the Patient resource itself practice-confidential (`meta.security` `R` or `V`, read as
/// [`is_practice_confidential`] reads an item's labels).
pub fn patient_unavailable(patient: &ItemFacts) -> Option<&'static str> {
    if patient.deceased {
        Some("patient is recorded as deceased")
    } else if patient.ended {
        Some("patient's registration has ended (active false)")
    } else if is_practice_confidential(patient) {
        Some("patient's record is marked restricted")
    } else {
        None
    }
}

/// Whether an item is practice-confidential: a `meta.security` confidentiality label (its own or
/// a contained resource's) that does not plainly allow release.
///
/// Fail closed: in the v3 Confidentiality system (either address, or its OID) only `U`, `L`,
/// `M` and `N` release; `R`, `V` and any other code withhold. A label in any other system whose
/// address names confidentiality (ASCII case-insensitive) withholds whatever its code, since
/// its meaning cannot be checked.
pub fn is_practice_confidential(item: &ItemFacts) -> bool {
    item.security.iter().any(|label| {
        let system = label.system.as_str();
        if [
            CONFIDENTIALITY_SYSTEM,
            CONFIDENTIALITY_SYSTEM_V3,
            CONFIDENTIALITY_SYSTEM_OID,
        ]
        .contains(&system)
        {
            !matches!(label.code.as_str(), "U" | "L" | "M" | "N")
        } else {
            system.to_ascii_lowercase().contains("confidentiality")
        }
    })
}

/// Which of the patient's items, then which of their shared resources, are withheld, whatever
/// their section (one flag per item, in order, followed by one per `PatientData::shared`): practice-confidential items, items in a sensitive category the patient has not
/// consented to, and, transitively, every item that references a withheld item or a withheld
/// shared resource. Computed over all items so that a reference into a section that was not
/// requested still withholds the referrer.
pub fn withheld_items(
    patient: &PatientData,
    preferences: &Preferences,
    sensitive: &SensitiveCodes,
) -> Vec<bool> {
    // Nodes: the patient's items, then the shared resources.
    let nodes: Vec<&ItemFacts> = patient.items.iter().chain(&patient.shared).collect();
    let mut withheld: Vec<bool> = nodes
        .iter()
        .map(|item| {
            is_practice_confidential(item)
                || sensitive
                    .categories_of(item)
                    .iter()
                    .any(|category| !preferences.specific_consents.contains(&category))
        })
        .collect();

    if !withheld.iter().any(|&w| w) {
        // The common case: nothing to spread, so skip building the reference graph.
        return withheld;
    }

    // Reverse edges: for each node, the nodes that reference it.
    let mut by_reference: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        by_reference
            .entry(node.reference())
            .or_default()
            .push(index);
    }
    let mut referrers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        for reference in &node.references {
            for &target in by_reference.get(reference).into_iter().flatten() {
                if let Some(list) = referrers.get_mut(target) {
                    list.push(index);
                }
            }
        }
    }

    // Spread withholding along the reverse edges until nothing changes.
    let mut pending: Vec<usize> = (0..nodes.len()).filter(|&i| withheld[i]).collect();
    while let Some(target) = pending.pop() {
        for &referrer in referrers.get(target).into_iter().flatten() {
            if let Some(flag) = withheld.get_mut(referrer) {
                if !*flag {
                    *flag = true;
                    pending.push(referrer);
                }
            }
        }
    }
    withheld
}
