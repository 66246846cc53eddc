//! The request's own filters (GP Connect 1.6 parts), applied to what policy released: they only
//! ever narrow a release, never widen it. Item bodies are read only for a filter that needs a
//! field the stored facts do not hold (medication periods and intent, problem significance),
//! so a request without those filters costs nothing here.

use std::collections::BTreeSet;

use serde_json::Value;

use super::bundle::Entry;
use super::parameters::RecordRequest;
use mig_policy::fhir::{parse_fhir_date_time, Section};

/// Keeps the released items (each with its List key `K`, whose section `section_of` gives)
/// that the request's filters admit.
pub fn apply<'a, K: Copy>(
    released: Vec<(K, Entry<'a>)>,
    section_of: impl Fn(K) -> Option<Section>,
    wanted: &RecordRequest,
) -> Vec<(K, Entry<'a>)> {
    let medication = MedicationFilter::new(&released, wanted);
    let mut kept: Vec<(K, Entry<'a>)> = released
        .into_iter()
        .filter(|&(key, entry)| {
            let Some(section) = section_of(key) else {
                return true;
            };
            let facts = entry.facts;
            if let Some(period) = wanted.search_periods.get(section.parameter_name()) {
                if !period.admits(facts.date) {
                    return false;
                }
            }
            match (section, facts.resource_type.as_str()) {
                (Section::Medications, _) => medication.admits(&entry),
                (Section::Problems, "Condition") => problem_admitted(&entry, wanted),
                (Section::Immunisations, "Immunization") => {
                    wanted.include_not_given || facts.status.as_deref() != Some("not-done")
                }
                _ => true,
            }
        })
        .collect();
    if let Some(n) = wanted.most_recent_consultations {
        // The n most recent Encounters (undated ones count as oldest; ties in Bundle order).
        let mut consultations: Vec<(usize, i64)> = kept
            .iter()
            .enumerate()
            .filter(|(_, (k, e))| is_consultation(section_of(*k), e))
            .map(|(i, (_, e))| (i, e.facts.date.unwrap_or(i64::MIN)))
            .collect();
        consultations.sort_by_key(|c| std::cmp::Reverse(c.1));
        let dropped: BTreeSet<usize> = consultations.iter().skip(n).map(|(i, _)| *i).collect();
        let mut index = 0;
        kept.retain(|_| {
            index += 1;
            !dropped.contains(&(index - 1))
        });
    }
    kept
}

fn is_consultation(section: Option<Section>, entry: &Entry<'_>) -> bool {
    section == Some(Section::Consultations) && entry.facts.resource_type == "Encounter"
}

/// GP Connect 1.6 medication search (medication guidance, "Medication search criteria"): the
/// authorisations (MedicationStatement, MedicationRequest with intent `plan`) active on or
/// after `medicationSearchFromDate` (their period ends on or after it, or has no end), each
/// with the issues under it unless `includePrescriptionIssues` is false.
struct MedicationFilter {
    active: bool,
    from: Option<i64>,
    include_issues: bool,
    /// `MedicationRequest/{id}` of the plans kept.
    kept_plans: BTreeSet<String>,
    /// Plans some released MedicationStatement is based on (they follow their statement).
    stated_plans: BTreeSet<String>,
}

impl MedicationFilter {
    fn new<K>(released: &[(K, Entry<'_>)], wanted: &RecordRequest) -> MedicationFilter {
        let active = wanted.medication_from.is_some() || !wanted.include_prescription_issues;
        let mut filter = MedicationFilter {
            active,
            from: wanted.medication_from,
            include_issues: wanted.include_prescription_issues,
            kept_plans: BTreeSet::new(),
            stated_plans: BTreeSet::new(),
        };
        if !active {
            return filter;
        }
        let plans = |e: &Entry<'_>| -> Vec<String> {
            e.facts
                .references
                .iter()
                .filter(|r| r.starts_with("MedicationRequest/"))
                .cloned()
                .collect()
        };
        for (_, entry) in released {
            if entry.facts.resource_type == "MedicationStatement" {
                let kept = filter.ends_in_time(period_end(entry.body, &["effectivePeriod"]));
                for plan in plans(entry) {
                    if kept {
                        filter.kept_plans.insert(plan.clone());
                    }
                    filter.stated_plans.insert(plan);
                }
            }
        }
        for (_, entry) in released {
            let reference = entry.facts.reference();
            if entry.facts.resource_type == "MedicationRequest"
                && !filter.stated_plans.contains(&reference)
                && intent(entry.body).as_deref() == Some("plan")
                && filter.ends_in_time(period_end(
                    entry.body,
                    &["dispenseRequest", "validityPeriod"],
                ))
            {
                filter.kept_plans.insert(reference);
            }
        }
        filter
    }

    /// Whether a period ending at `end` (none: still running) reaches the search date.
    fn ends_in_time(&self, end: Option<i64>) -> bool {
        match (self.from, end) {
            (Some(from), Some(end)) => end >= from,
            _ => true,
        }
    }

    fn admits(&self, entry: &Entry<'_>) -> bool {
        if !self.active {
            return true;
        }
        match entry.facts.resource_type.as_str() {
            "MedicationStatement" => {
                self.ends_in_time(period_end(entry.body, &["effectivePeriod"]))
            }
            "MedicationRequest" => {
                let reference = entry.facts.reference();
                if intent(entry.body).as_deref() == Some("plan") {
                    return self.kept_plans.contains(&reference);
                }
                if !self.include_issues {
                    return false;
                }
                // An issue goes with its authorisation; one whose plan is not in the release
                // is judged by its own date.
                let plan = entry
                    .facts
                    .references
                    .iter()
                    .find(|r| r.starts_with("MedicationRequest/"));
                match plan {
                    Some(plan) if self.kept_plans.contains(plan) => true,
                    _ => match (self.from, entry.facts.date) {
                        (Some(from), Some(date)) => date >= from,
                        _ => true,
                    },
                }
            }
            _ => true,
        }
    }
}

fn intent(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    value.get("intent")?.as_str().map(str::to_owned)
}

/// The last second of the period at `path` (its `end`), partial dates taken to the end of
/// their year, month or day.
fn period_end(body: &str, path: &[&str]) -> Option<i64> {
    let value: Value = serde_json::from_str(body).ok()?;
    let period = path.iter().try_fold(&value, |v, key| v.get(*key))?;
    last_second_of(period.get("end")?.as_str()?)
}

/// The last second a FHIR date or dateTime covers.
pub fn last_second_of(text: &str) -> Option<i64> {
    let start = parse_fhir_date_time(text)?;
    let next = match text.len() {
        4 => parse_fhir_date_time(&format!("{:04}", text.parse::<i32>().ok()? + 1))?,
        7 => {
            let (year, month) = text.split_once('-')?;
            let (year, month): (i32, u32) = (year.parse().ok()?, month.parse().ok()?);
            let (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            parse_fhir_date_time(&format!("{year:04}-{month:02}"))?
        }
        10 => start + 86_400,
        _ => return Some(start),
    };
    Some(next - 1)
}

/// GP Connect's filterStatus values over R4's clinical statuses.
fn status_group(status: &str) -> Option<&'static str> {
    match status {
        "active" | "recurrence" | "relapse" => Some("active"),
        "inactive" | "remission" | "resolved" => Some("inactive"),
        _ => None,
    }
}

/// A problem matches if any `includeProblems` repetition admits it. A problem whose
/// significance is not recorded is returned under either significance: never hidden for want
/// of a field.
fn problem_admitted(entry: &Entry<'_>, wanted: &RecordRequest) -> bool {
    let filters = &wanted.problem_filters;
    if filters
        .iter()
        .all(|f| f.status.is_none() && f.significance.is_none())
    {
        return true;
    }
    let status = entry.facts.status.as_deref().and_then(status_group);
    let significance = if filters.iter().any(|f| f.significance.is_some()) {
        significance(entry.body)
    } else {
        None
    };
    filters.iter().any(|f| {
        f.status.as_deref().is_none_or(|s| status == Some(s))
            && match (f.significance.as_deref(), significance.as_deref()) {
                (Some(wanted), Some(recorded)) => wanted == recorded,
                _ => true,
            }
    })
}

/// The problem significance extension's code (`major`/`minor`): the CareConnect extension
/// GP Connect 1.6 uses, or a later one of the same name.
fn significance(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    value
        .get("extension")?
        .as_array()?
        .iter()
        .filter(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.contains("ProblemSignificance"))
        })
        .find_map(|e| match e.get("valueCode") {
            Some(Value::String(code)) => Some(code.clone()),
            _ => e
                .get("valueCodeableConcept")?
                .get("coding")?
                .as_array()?
                .iter()
                .find_map(|c| c.get("code")?.as_str().map(str::to_owned)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parameters::{Period, ProblemFilter};
    use mig_policy::fhir::{extract_facts, ItemFacts};
    use serde_json::json;

    fn stored(value: Value) -> (ItemFacts, String) {
        (extract_facts(&value).unwrap(), value.to_string())
    }

    fn date(text: &str) -> i64 {
        parse_fhir_date_time(text).unwrap()
    }

    fn kept(items: &[(ItemFacts, String)], wanted: &RecordRequest) -> Vec<String> {
        let released = items
            .iter()
            .map(|(facts, body)| {
                let section = mig_policy::fhir::file_item(facts, false).map(|l| l.section());
                (section, Entry { facts, body })
            })
            .collect();
        apply(released, |s| s, wanted)
            .into_iter()
            .map(|(_, e)| e.facts.id.clone())
            .collect()
    }

    fn request() -> RecordRequest {
        RecordRequest::patient_only("9434765919".into())
    }

    fn medication() -> Vec<(ItemFacts, String)> {
        let subject = json!({"reference": "Patient/p"});
        let statement = |id: &str, plan: &str, start: &str, end: Option<&str>| {
            let mut period = json!({"start": start});
            if let Some(end) = end {
                period["end"] = json!(end);
            }
            stored(
                json!({"resourceType": "MedicationStatement", "id": id, "subject": subject,
                "basedOn": [{"reference": format!("MedicationRequest/{plan}")}],
                "effectivePeriod": period}),
            )
        };
        let request = |id: &str, intent: &str, plan: Option<&str>, authored: &str| {
            let mut r = json!({"resourceType": "MedicationRequest", "id": id, "subject": subject,
                "intent": intent, "authoredOn": authored});
            if let Some(plan) = plan {
                r["basedOn"] = json!([{"reference": format!("MedicationRequest/{plan}")}]);
            }
            stored(r)
        };
        vec![
            // A repeat started years ago and still running.
            statement("repeat-s", "repeat-p", "2015-03-01", None),
            request("repeat-p", "plan", None, "2015-03-01"),
            request("repeat-i1", "order", Some("repeat-p"), "2015-03-01"),
            request("repeat-i2", "order", Some("repeat-p"), "2024-06-01"),
            // An acute course that ended before the search date.
            statement("acute-s", "acute-p", "2019-01-01", Some("2019-01-14")),
            request("acute-p", "plan", None, "2019-01-01"),
            request("acute-i", "order", Some("acute-p"), "2019-01-01"),
            // A course ending in the month of the search date (partial end date).
            statement("month-s", "month-p", "2023-11-01", Some("2024-01")),
            request("month-p", "plan", None, "2023-11-01"),
        ]
    }

    #[test]
    fn medication_active_on_or_after_the_date_stays_with_its_issues() {
        let mut wanted = request();
        wanted.medication_from = Some(date("2024-01-31"));
        assert_eq!(
            kept(&medication(), &wanted),
            [
                "repeat-s",
                "repeat-p",
                "repeat-i1",
                "repeat-i2",
                "month-s",
                "month-p"
            ]
        );
        wanted.medication_from = Some(date("2024-02-01"));
        assert_eq!(
            kept(&medication(), &wanted),
            ["repeat-s", "repeat-p", "repeat-i1", "repeat-i2"]
        );
    }

    #[test]
    fn without_prescription_issues_only_authorisations_come_back() {
        let mut wanted = request();
        wanted.include_prescription_issues = false;
        assert_eq!(
            kept(&medication(), &wanted),
            ["repeat-s", "repeat-p", "acute-s", "acute-p", "month-s", "month-p"]
        );
        assert_eq!(kept(&medication(), &request()).len(), 9, "no filter");
    }

    #[test]
    fn problems_by_status_and_significance_pairs() {
        let problem = |id: &str, status: &str, significance: Option<&str>| {
            let mut c = json!({"resourceType": "Condition", "id": id,
                "subject": {"reference": "Patient/p"},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]}});
            if let Some(s) = significance {
                c["extension"] = json!([{"url": "https://fhir.hl7.org.uk/STU3/StructureDefinition/Extension-CareConnect-ProblemSignificance-1", "valueCode": s}]);
            }
            stored(c)
        };
        let items = vec![
            problem("active-major", "active", Some("major")),
            problem("relapse-minor", "relapse", Some("minor")),
            problem("resolved-major", "resolved", Some("major")),
            problem("inactive-unknown", "inactive", None),
        ];
        let filter = |status: Option<&str>, significance: Option<&str>| ProblemFilter {
            status: status.map(str::to_owned),
            significance: significance.map(str::to_owned),
        };
        let mut wanted = request();
        wanted.problem_filters = vec![filter(Some("active"), Some("major"))];
        assert_eq!(kept(&items, &wanted), ["active-major"]);
        wanted.problem_filters = vec![filter(Some("inactive"), None)];
        assert_eq!(
            kept(&items, &wanted),
            ["resolved-major", "inactive-unknown"]
        );
        wanted.problem_filters = vec![filter(None, Some("minor"))];
        assert_eq!(kept(&items, &wanted), ["relapse-minor", "inactive-unknown"]);
        // Repetitions add up; a repetition without filters asks for every problem.
        wanted.problem_filters = vec![
            filter(Some("active"), Some("major")),
            filter(Some("active"), Some("minor")),
        ];
        assert_eq!(kept(&items, &wanted), ["active-major", "relapse-minor"]);
        wanted.problem_filters.push(ProblemFilter::default());
        assert_eq!(kept(&items, &wanted).len(), 4);
    }

    #[test]
    fn consultations_by_period_or_most_recent() {
        let encounter = |id: &str, start: Option<&str>| {
            let mut e = json!({"resourceType": "Encounter", "id": id,
                "subject": {"reference": "Patient/p"}, "status": "finished"});
            if let Some(start) = start {
                e["period"] = json!({"start": start});
            }
            stored(e)
        };
        let items = vec![
            encounter("e2019", Some("2019-05-01")),
            encounter("e2021", Some("2021-05-01")),
            encounter("undated", None),
            encounter("e2023", Some("2023-05-01")),
            encounter("e2022", Some("2022-05-01")),
        ];
        let mut wanted = request();
        wanted.search_periods.insert(
            "includeConsultations",
            Period {
                start: Some(date("2021-01-01")),
                end: Some(date("2022-12-31") + 86_399),
            },
        );
        assert_eq!(
            kept(&items, &wanted),
            ["e2021", "undated", "e2022"],
            "undated information comes back alongside"
        );
        let mut wanted = request();
        wanted.most_recent_consultations = Some(2);
        assert_eq!(kept(&items, &wanted), ["e2023", "e2022"]);
        wanted.most_recent_consultations = Some(10);
        assert_eq!(kept(&items, &wanted).len(), 5);
    }

    #[test]
    fn immunisations_not_given_only_when_asked() {
        let immunisation = |id: &str, status: &str| {
            stored(json!({"resourceType": "Immunization", "id": id,
                "patient": {"reference": "Patient/p"}, "status": status}))
        };
        let items = vec![
            immunisation("given", "completed"),
            immunisation("declined", "not-done"),
        ];
        let mut wanted = request();
        assert_eq!(kept(&items, &wanted), ["given"]);
        wanted.include_not_given = true;
        assert_eq!(kept(&items, &wanted), ["given", "declined"]);
    }

    #[test]
    fn partial_dates_cover_their_whole_interval() {
        assert_eq!(last_second_of("2024"), Some(date("2025-01-01") - 1));
        assert_eq!(last_second_of("2024-12"), Some(date("2025-01-01") - 1));
        assert_eq!(last_second_of("2024-02"), Some(date("2024-03-01") - 1));
        assert_eq!(last_second_of("2024-02-10"), Some(date("2024-02-11") - 1));
        assert_eq!(
            last_second_of("2024-02-10T08:00:00Z"),
            Some(date("2024-02-10T08:00:00Z"))
        );
        assert_eq!(last_second_of("soon"), None);
    }
}
