//! Reading Consents (SPEC §6): what ingest refuses as ambiguous (`check_consent`), and how the
//! stored ones are read at decision time: newest not in the future, ties to the most
//! restrictive. Table tests, then properties over arbitrary sets of Consents.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;

fn scoped(mut consent: ConsentFacts, patient_privacy: bool) -> ConsentFacts {
    consent.patient_privacy = patient_privacy;
    consent
}

fn undated(mut consent: ConsentFacts) -> ConsentFacts {
    consent.date_time = None;
    consent
}

// ---------------------------------------------------------------- refused at ingest

#[test]
fn ingest_accepts_consents_that_read_one_way() {
    let accepted = [
        (tier("dissent", now()), Some("deny")),
        (tier("dissent", now()), None),
        (tier("core", now()), Some("permit")),
        (tier("core-and-additional", now()), None),
        (snomed_tier(SNOMED_DISSENT_SYNONYM, now()), Some("deny")),
        (snomed_tier(SNOMED_CORE_SYNONYM, now()), Some("permit")),
        // Other kinds need no scope and no date (SPEC names none).
        (
            undated(scoped(
                specific(SensitiveCategory::Gender, false, now()),
                false,
            )),
            Some("deny"),
        ),
        (undated(standing("RX8", Some(now()), None)), Some("permit")),
    ];
    for (consent, provision_type) in accepted {
        assert_eq!(
            check_consent(&consent, provision_type),
            Ok(()),
            "{consent:?} {provision_type:?}"
        );
    }
}

#[test]
fn ingest_refuses_consents_that_cannot_be_read_unambiguously() {
    let refused = [
        // A code not listed, or miscased.
        (tier("everything", now()), None, "\"everything\""),
        (tier("Dissent", now()), Some("deny"), "\"Dissent\""),
        (
            tier("core ", now()),
            None,
            "not dissent, core or core-and-additional",
        ),
        // Not in scope patient-privacy (either system).
        (
            scoped(tier("dissent", now()), false),
            None,
            "patient-privacy",
        ),
        (
            scoped(snomed_tier(SNOMED_DISSENT_SYNONYM, now()), false),
            None,
            "patient-privacy",
        ),
        // Undated.
        (undated(tier("dissent", now())), None, "dateTime"),
        (
            undated(tier("core-and-additional", now())),
            None,
            "dateTime",
        ),
        (
            undated(snomed_tier(SNOMED_CORE_SYNONYM, now())),
            None,
            "dateTime",
        ),
        // A tier that denies.
        (
            tier("core", now()),
            Some("deny"),
            "core Consent with provision.type deny",
        ),
        (
            tier("core-and-additional", now()),
            Some("deny"),
            "core-and-additional Consent with provision.type deny",
        ),
        (
            snomed_tier(SNOMED_CORE_SYNONYM, now()),
            Some("deny"),
            "provision.type deny",
        ),
    ];
    for (consent, provision_type, expected) in refused {
        let error = check_consent(&consent, provision_type).unwrap_err();
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
    }
    // An unknown code next to a good one is still refused.
    let mut mixed = tier("dissent", now());
    mixed
        .categories
        .push(Coding::new(SHARING_PREFERENCE_SYSTEM, "share-all"));
    assert!(check_consent(&mixed, None).is_err());
}

// ---------------------------------------------------------------- read at decision time

#[test]
fn a_future_dated_tier_consent_is_not_yet_in_force() {
    let consents = [
        tier("dissent", now() + DAY),
        tier("core-and-additional", now() - DAY),
    ];
    assert_eq!(
        preferences(&consents, now()).sharing,
        SharingPreference::CoreAndAdditional
    );
    assert_eq!(
        preferences(&consents, now() + DAY).sharing,
        SharingPreference::Dissent,
        "in force from its dateTime"
    );

    // A future core-and-additional does not end a dissent in force today.
    let consents = [
        tier("dissent", now() - DAY),
        tier("core-and-additional", now() + 365 * DAY),
    ];
    assert_eq!(
        preferences(&consents, now()).sharing,
        SharingPreference::Dissent
    );
    let only_future = [tier("core-and-additional", now() + DAY)];
    let prefs = preferences(&only_future, now());
    assert_eq!(prefs.sharing, SharingPreference::Core);
    assert!(!prefs.sharing_recorded);
}

#[test]
fn tied_tier_consents_resolve_dissent_then_core_then_core_and_additional() {
    let cases = [
        (
            vec!["core-and-additional", "core", "dissent"],
            SharingPreference::Dissent,
        ),
        (vec!["core-and-additional", "core"], SharingPreference::Core),
        (vec!["core", "dissent"], SharingPreference::Dissent),
    ];
    for (codes, expected) in cases {
        let mut consents: Vec<ConsentFacts> =
            codes.iter().map(|code| tier(code, now() - DAY)).collect();
        assert_eq!(preferences(&consents, now()).sharing, expected, "{codes:?}");
        consents.reverse();
        assert_eq!(preferences(&consents, now()).sharing, expected, "{codes:?}");
    }
}

#[test]
fn an_undated_consent_ties_with_the_newest() {
    // Refused at ingest since this change; a stored one still reads restrictively.
    let prefs = preferences(
        &[
            undated(tier("dissent", 0)),
            tier("core-and-additional", now() - DAY),
        ],
        now(),
    );
    assert_eq!(prefs.sharing, SharingPreference::Dissent);
    let prefs = preferences(
        &[
            undated(tier("core-and-additional", 0)),
            tier("core", now() - DAY),
        ],
        now(),
    );
    assert_eq!(prefs.sharing, SharingPreference::Core);
}

#[test]
fn a_future_dated_specific_or_standing_consent_is_not_yet_in_force() {
    let category = SensitiveCategory::SexuallyTransmittedDisease;
    let prefs = preferences(&[specific(category, true, now() + DAY)], now());
    assert!(prefs.specific_consents.is_empty());
    // A withdrawal dated tomorrow leaves today's consent standing until then.
    let consents = [
        specific(category, true, now() - DAY),
        specific(category, false, now() + DAY),
    ];
    assert!(preferences(&consents, now())
        .specific_consents
        .contains(&category));
    assert!(preferences(&consents, now() + DAY)
        .specific_consents
        .is_empty());

    let mut future = standing("RX8", Some(now() - DAY), None);
    future.date_time = Some(now() + DAY);
    assert!(preferences(&[future], now()).standing_consents.is_empty());
}

// ---------------------------------------------------------------- properties

const TIER_CODES: [&str; 3] = ["dissent", "core", "core-and-additional"];

/// Consents of every kind, dated around `now()`, some undated, some in the future.
fn any_consent() -> impl Strategy<Value = ConsentFacts> {
    let categories = vec![
        Coding::new(SHARING_PREFERENCE_SYSTEM, "dissent"),
        Coding::new(SHARING_PREFERENCE_SYSTEM, "core"),
        Coding::new(SHARING_PREFERENCE_SYSTEM, "core-and-additional"),
        Coding::new(SNOMED, SNOMED_DISSENT_SYNONYM),
        Coding::new(SNOMED, SNOMED_CORE_SYNONYM),
        Coding::new(SNOMED, STANDING_CONSENT_CATEGORY),
        Coding::new("http://loinc.org", "59284-0"),
    ];
    let refsets: Vec<Coding> = SensitiveCategory::ALL
        .into_iter()
        .map(|c| Coding::new(SNOMED, c.refset_id()))
        .collect();
    let date = || proptest::option::weighted(0.9, (-30i64..30).prop_map(|d| now() + d * DAY));
    (
        any::<bool>(),
        any::<bool>(),
        vec(select(categories), 1..3),
        date(),
        any::<bool>(),
        vec(select(refsets), 0..2),
        vec(select(vec!["RX8", "RYY"]).prop_map(String::from), 0..2),
        date(),
    )
        .prop_map(
            |(active, patient_privacy, categories, date_time, permit, labels, actors, start)| {
                ConsentFacts {
                    active,
                    patient_privacy,
                    categories,
                    date_time,
                    permit,
                    security_labels: labels,
                    actor_ods_codes: actors,
                    period_start: start,
                    period_end: None,
                }
            },
        )
}

fn tier_dates(consents: &[ConsentFacts]) -> impl Iterator<Item = i64> + '_ {
    consents
        .iter()
        .filter(|c| {
            c.categories.iter().any(|k| {
                k.system == SHARING_PREFERENCE_SYSTEM
                    || k.is(SNOMED, SNOMED_DISSENT_SYNONYM)
                    || k.is(SNOMED, SNOMED_CORE_SYNONYM)
            })
        })
        .filter_map(|c| c.date_time)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_dissent_as_new_as_any_tier_consent_and_in_force_always_wins(
        mut consents in vec(any_consent(), 0..8),
        later in 0i64..5,
        at in 0usize..8,
        snomed in any::<bool>(),
    ) {
        // Dated at or after every other tier consent in force, and not after now.
        let newest = tier_dates(&consents).filter(|d| *d <= now()).max().unwrap_or(now() - 60 * DAY);
        let date = (newest + later * DAY).min(now());
        let dissent = if snomed {
            snomed_tier(SNOMED_DISSENT_SYNONYM, date)
        } else {
            tier("dissent", date)
        };
        consents.insert(at.min(consents.len()), dissent);
        prop_assert_eq!(preferences(&consents, now()).sharing, SharingPreference::Dissent);
    }

    #[test]
    fn a_consent_dated_in_the_future_changes_nothing_until_its_date(
        consents in vec(any_consent(), 0..8),
        mut future in any_consent(),
        days in 1i64..400,
        at in 0usize..8,
    ) {
        future.date_time = Some(now() + days * DAY);
        let mut with_future = consents.clone();
        with_future.insert(at.min(consents.len()), future);
        prop_assert_eq!(preferences(&with_future, now()), preferences(&consents, now()));
    }

    #[test]
    fn the_order_of_consents_never_matters(
        consents in vec(any_consent(), 0..8),
        rotate in 0usize..8,
    ) {
        let mut reordered = consents.clone();
        reordered.reverse();
        let len = reordered.len().max(1);
        reordered.rotate_left(rotate % len);
        prop_assert_eq!(preferences(&reordered, now()), preferences(&consents, now()));
    }

    #[test]
    fn only_tier_codes_in_scope_with_a_date_and_no_tier_denial_pass_ingest(
        code in select(TIER_CODES.to_vec()),
        patient_privacy in any::<bool>(),
        dated in any::<bool>(),
        provision in select(vec![None, Some("permit"), Some("deny")]),
    ) {
        let mut consent = scoped(tier(code, now()), patient_privacy);
        if !dated {
            consent.date_time = None;
        }
        let expected = patient_privacy && dated && (code == "dissent" || provision != Some("deny"));
        prop_assert_eq!(check_consent(&consent, provision).is_ok(), expected);
    }
}
