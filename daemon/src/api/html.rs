//! The care-record view (SPEC §3, "HTML view"): the same release as the structured-record
//! Bundle, as one self-contained page for partners that display the record rather than import it.
//!
//! Validates nothing itself: it is rendered from the Bundle's own parts, after the decision and
//! the item filtering, and shows no more than the Bundle would carry. Each row shows fields of a
//! released item (its codes' text, dates, status, values, dose) and the name of a shared
//! resource only when that resource is in the Bundle; no reference display is ever shown, so a
//! withheld item cannot be named through one. maud escapes every value; the page has no script
//! and no external resource, and `CONTENT_SECURITY_POLICY` forbids both.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use rustc_hash::FxHashMap;
use serde_json::Value;

use super::bundle::{RecordParts, SectionList, WITHHELD_NOTE};
use mig_policy::fhir::{file_items, ItemFacts, RecordList, Section, NHS_NUMBER_SYSTEM};
use mig_policy::Basis;

pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";
/// No script, no external resource, no form target, no base; only the inline stylesheet.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// What the page says about the request, beside the record itself.
#[derive(Debug, Clone, Copy)]
pub struct PageContext<'a> {
    pub basis: &'a Basis,
    pub trace_id: Option<&'a str>,
}

/// Whether the request's `Accept` prefers the page to the FHIR Bundle: `text/html` is
/// acceptable and ranks at least as high as every JSON type it lists (`*/*` does not count, so a
/// client that says nothing, or only `*/*`, gets FHIR JSON as before).
pub fn prefers_html(headers: &http::HeaderMap) -> bool {
    let mut html = 0.0_f32;
    let mut json = 0.0_f32;
    for range in headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut params = range.split(';');
        let media = params
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let quality = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(quality),
            "application/fhir+json" | "application/json" | "application/*" => {
                json = json.max(quality)
            }
            _ => {}
        }
    }
    html > 0.0 && html >= json
}

/// Shown where a field is not recorded.
const NOT_RECORDED: &str = "—";

/// What the page shows of a patient's stored record, extracted once per cached record (see
/// `records::PatientRecord::page`): parsing every item's JSON for each request would cost ten
/// times the Bundle, which copies the stored bodies as they are.
#[derive(Debug)]
pub struct PageCache {
    banner: Banner,
    /// Each item's row by `Type/id`, with the section its columns were made for.
    rows: FxHashMap<String, Row>,
    /// Each Medication's name by id.
    medication_names: FxHashMap<String, String>,
}

/// One item's table row, made for its section's columns.
#[derive(Debug)]
struct Row {
    section: Section,
    /// What the item is: the row's header cell.
    name: Cell,
    /// The other cells, already rendered (escaped) as `td` elements.
    rest: String,
    /// Where the row goes: what is active or current first, then the most recent first.
    order: (bool, std::cmp::Reverse<String>),
}

/// The header cell of a row.
#[derive(Debug)]
enum Cell {
    Text(String),
    /// The name of the Medication with this id, shown only if the Bundle includes it.
    Medication(String),
}

impl PageCache {
    /// Items are filed in Lists as the Bundle files them (`fhir::file_items`).
    pub fn new<'a>(
        patient_body: &str,
        items: &[ItemFacts],
        item_bodies: &crate::replica::Bodies,
        shared: impl IntoIterator<Item = (&'a ItemFacts, &'a str)>,
    ) -> PageCache {
        let patient: Value = serde_json::from_str(patient_body).unwrap_or(Value::Null);
        let rows = items
            .iter()
            .zip(item_bodies.iter())
            .zip(file_items(items))
            .filter_map(|((facts, body), list)| {
                let section = list?.section();
                let item = serde_json::from_str::<Value>(body).ok()?;
                Some((member(facts), row(section, &item)))
            })
            .collect();
        let medication_names = shared
            .into_iter()
            .filter(|(facts, _)| facts.resource_type == "Medication")
            .filter_map(|(facts, body)| {
                let medication = serde_json::from_str::<Value>(body).ok()?;
                Some((facts.id.clone(), concept_text(&medication["code"])?))
            })
            .collect();
        PageCache {
            banner: Banner::of(&patient),
            rows,
            medication_names,
        }
    }
}

fn member(facts: &ItemFacts) -> String {
    format!("{}/{}", facts.resource_type, facts.id)
}

/// Renders the page. `page` must have been made from the same record as `parts`.
pub fn structured_record_page(
    parts: &RecordParts<'_>,
    context: &PageContext<'_>,
    page: &PageCache,
) -> Vec<u8> {
    let banner = &page.banner;
    let page = html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { "GP record: " (banner.name) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header class="banner" {
                    h1 { (banner.name) }
                    dl {
                        div { dt { "Born" } dd { (banner.birth_date) } }
                        div { dt { "NHS number" } dd { (banner.nhs_number) } }
                        div { dt { "Gender" } dd { (banner.gender) } }
                        div { dt { "Address" } dd { (banner.address) } }
                        div { dt { "GP practice" } dd { (parts.practice_name) " (" (parts.practice_ods) ")" } }
                    }
                }
                main {
                    (basis_notice(context.basis))
                    @if parts.lists.is_empty() {
                        p { "No sections were requested." }
                    }
                    @for list in &parts.lists {
                        (section(list, parts, page))
                    }
                }
                footer {
                    p {
                        "Produced by the MIG appliance of " (parts.practice_name) " (" (parts.practice_ods)
                        ") on " (date_time(parts.assembled_at)) "."
                    }
                    @if let Some(trace) = context.trace_id {
                        p { "Trace ID " span class="trace" { (trace) } }
                    }
                    p { "Only what the patient agreed to share and your organisation's data sharing agreement allows is shown." }
                }
            }
        }
    };
    page.into_string().into_bytes()
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 Arial,Helvetica,sans-serif;color:#212b32;background:#f0f4f5}\
h1{margin:0 0 .5rem;font-size:1.5rem;line-height:1.25}\
h2{margin:0 0 .5rem;font-size:1.25rem}\
.banner{background:#005eb8;color:#fff;padding:1rem}\
.banner dl{display:flex;flex-wrap:wrap;gap:.25rem 1.5rem;margin:0}\
.banner dt{font-size:.875rem;font-weight:bold}\
.banner dd{margin:0}\
main{padding:1rem;max-width:72rem}\
.basis{border-left:.5rem solid #005eb8;background:#fff;padding:.75rem 1rem;margin:0 0 1rem}\
.override{border-left-color:#d5281b;background:#fff3f2}\
section{background:#fff;padding:1rem;margin:0 0 1rem;overflow-wrap:anywhere}\
.warning{border-left:.25rem solid #ffb81c;background:#fff9e6;padding:.5rem .75rem;margin:0 0 .75rem}\
.empty{color:#4c6272;margin:0}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;vertical-align:top;padding:.375rem .5rem;border-bottom:1px solid #d8dde0}\
thead th{border-bottom:2px solid #4c6272;font-size:.875rem}\
footer{padding:0 1rem 1rem;font-size:.875rem;color:#4c6272}\
footer p{margin:.25rem 0}\
.trace{font-family:monospace}\
@media (max-width:40rem){\
thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}\
table,tbody,tr,th,td{display:block;width:100%}\
tr{border-bottom:2px solid #d8dde0;padding:.25rem 0}\
tbody th,td{border:0;padding:.125rem 0}\
td::before{content:attr(data-label) \": \";font-weight:bold}\
}\
@media print{\
body{background:#fff;font-size:10pt}\
.banner{background:#fff;color:#000;border:2px solid #000}\
section,.basis{padding:0;margin:0 0 .75rem}\
tr{break-inside:avoid}\
h2{break-after:avoid}\
}";

fn basis_notice(basis: &Basis) -> Markup {
    match basis {
        Basis::Granted => html! {
            p class="basis" { "Permission to view: the patient gave permission at the point of care." }
        },
        Basis::StandingConsent { ods } => html! {
            p class="basis" {
                "Permission to view: the patient's standing consent for organisation " (ods) ", recorded by the practice."
            }
        },
        Basis::Attested => html! {
            p class="basis" {
                "Permission to view: the requesting organisation's agreement obliges it to ask the patient at the point of care; it attests that it did."
            }
        },
        Basis::Override {
            reason,
            justification,
        } => html! {
            div class="basis override" role="alert" {
                p {
                    strong { "Override: " (override_reason_words(reason.name())) "." }
                    " This access was recorded and reported to the practice's privacy officer."
                }
                p { "Justification given: " (justification) }
            }
        },
    }
}

fn override_reason_words(reason: &str) -> &'static str {
    match reason {
        "emergency" => "emergency",
        "safeguarding" => "safeguarding",
        "unable-to-consent" => "patient unable to consent",
        _ => "override",
    }
}

fn section(list: &SectionList<'_>, parts: &RecordParts<'_>, page: &PageCache) -> Markup {
    let (_, _, title) = list.list.code();
    let section = list.list.section();
    let id = match list.list {
        RecordList::Section(section) => section.name(),
        RecordList::EndedAllergies => "ended-allergies",
    };
    let headers = headers(section);
    let mut key = String::new();
    let mut rows: Vec<&Row> = list
        .items
        .iter()
        .filter_map(|entry| {
            key.clear();
            key.push_str(&entry.facts.resource_type);
            key.push('/');
            key.push_str(&entry.facts.id);
            let row = page.rows.get(key.as_str())?;
            // Made for another section's columns: not shown rather than misaligned.
            (row.section == section).then_some(row)
        })
        .collect();
    rows.sort_by(|a, b| a.order.cmp(&b.order));
    html! {
        section aria-labelledby=(id) {
            h2 id=(id) { (title) }
            @if list.withheld {
                p class="warning" { (WITHHELD_NOTE) }
            }
            @if rows.is_empty() {
                p class="empty" {
                    @if list.withheld { "Information withheld." } @else { "No content recorded." }
                }
            } @else {
                table {
                    thead { tr { @for h in headers { th scope="col" { (h) } } } }
                    tbody {
                        @for row in &rows {
                            tr {
                                th scope="row" { (cell_text(&row.name, parts, page)) }
                                (PreEscaped(&row.rest))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The columns a clinician expects per section; the first names the item.
fn headers(section: Section) -> &'static [&'static str] {
    match section {
        Section::Allergies => &[
            "Allergy or adverse reaction",
            "Reaction",
            "Severity",
            "Recorded",
            "Status",
        ],
        Section::Medications => &["Medication", "Dose", "Started", "Ended", "Status"],
        Section::Problems => &["Problem", "Onset", "Status", "Significance"],
        Section::Immunisations => &["Vaccine", "Date", "Status"],
        Section::Consultations => &["Consultation", "Date", "Status"],
        Section::Investigations => &["Test", "Value", "Unit", "Reference range", "Date"],
        Section::Referrals => &["Referral", "Date", "Status", "Priority"],
        Section::Procedures => &["Procedure", "Date", "Status"],
        Section::EndOfLife => &["Plan", "From", "Until", "Status"],
        Section::UncategorisedData => &["Observation", "Value", "Unit", "Date"],
        Section::CommunicationPreferences => &["Preference", "Since", "Status"],
        Section::RisksAndWarnings => &["Warning", "Since", "Status"],
    }
}

fn cell_text<'a>(cell: &'a Cell, parts: &RecordParts<'_>, page: &'a PageCache) -> &'a str {
    match cell {
        Cell::Text(text) => text,
        Cell::Medication(id) => parts
            .shared
            .iter()
            .any(|e| e.facts.resource_type == "Medication" && e.facts.id == *id)
            .then(|| page.medication_names.get(id))
            .flatten()
            .map_or(NOT_RECORDED, String::as_str),
    }
}

fn row(section: Section, item: &Value) -> Row {
    let mut texts = text_row(section, item).into_iter();
    let name = if section == Section::Medications {
        medication_name(item)
    } else {
        Cell::Text(texts.next().unwrap_or_else(|| NOT_RECORDED.to_owned()))
    };
    let labels = headers(section).iter().skip(1);
    let rest = html! {
        @for (label, text) in labels.zip(texts) {
            td data-label=(label) { (text) }
        }
    };
    let active = status(item).as_deref() == Some("active");
    let date = first_date(item, SORT_DATES).unwrap_or_default().to_owned();
    Row {
        section,
        name,
        rest: rest.into_string(),
        order: (!active, std::cmp::Reverse(date)),
    }
}

/// The date a row is ordered by: the first of these the item has.
const SORT_DATES: &[&str] = &[
    "effectivePeriod.start",
    "effectiveDateTime",
    "authoredOn",
    "onsetDateTime",
    "onsetPeriod.start",
    "recordedDate",
    "occurrenceDateTime",
    "period.start",
    "performedDateTime",
    "performedPeriod.start",
    "issued",
    "created",
];

fn text_row(section: Section, item: &Value) -> Vec<String> {
    let status = text_or_dash(status(item));
    match section {
        Section::Allergies => {
            let reaction = item["reaction"].get(0);
            vec![
                item_name(item),
                text_or_dash(reaction.map(|r| {
                    r["manifestation"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(concept_text)
                        .collect::<Vec<_>>()
                        .join(", ")
                })),
                text_or_dash(
                    reaction
                        .and_then(|r| r["severity"].as_str())
                        .or_else(|| item["criticality"].as_str())
                        .map(str::to_owned),
                ),
                date_or_dash(first_date(
                    item,
                    &["recordedDate", "onsetDateTime", "onsetPeriod.start"],
                )),
                status,
            ]
        }
        // The name comes first, from `medication_name`.
        Section::Medications => vec![
            text_or_dash(
                item["dosage"][0]["text"]
                    .as_str()
                    .or_else(|| item["dosageInstruction"][0]["text"].as_str())
                    .map(str::to_owned),
            ),
            date_or_dash(first_date(
                item,
                &[
                    "effectivePeriod.start",
                    "effectiveDateTime",
                    "authoredOn",
                    "dispenseRequest.validityPeriod.start",
                ],
            )),
            date_or_dash(first_date(
                item,
                &["effectivePeriod.end", "dispenseRequest.validityPeriod.end"],
            )),
            status,
        ],
        Section::Problems => vec![
            item_name(item),
            date_or_dash(first_date(
                item,
                &["onsetDateTime", "onsetPeriod.start", "recordedDate"],
            )),
            status,
            text_or_dash(significance(item)),
        ],
        Section::Immunisations => vec![
            item_name(item),
            date_or_dash(first_date(item, &["occurrenceDateTime", "recorded"])),
            status,
        ],
        Section::Consultations => vec![
            item_name(item),
            date_or_dash(first_date(item, &["period.start"])),
            status,
        ],
        Section::Investigations => {
            let (value, unit) = value_and_unit(item);
            vec![
                item_name(item),
                text_or_dash(value),
                text_or_dash(unit),
                text_or_dash(reference_range(item)),
                date_or_dash(first_date(
                    item,
                    &["effectiveDateTime", "effectivePeriod.start", "issued"],
                )),
            ]
        }
        Section::Referrals => vec![
            item_name(item),
            date_or_dash(first_date(
                item,
                &["authoredOn", "occurrenceDateTime", "occurrencePeriod.start"],
            )),
            status,
            text_or_dash(item["priority"].as_str().map(str::to_owned)),
        ],
        Section::Procedures => vec![
            item_name(item),
            date_or_dash(first_date(
                item,
                &["performedDateTime", "performedPeriod.start"],
            )),
            status,
        ],
        Section::EndOfLife => vec![
            item["title"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| item_name(item)),
            date_or_dash(first_date(item, &["period.start", "created"])),
            date_or_dash(first_date(item, &["period.end"])),
            status,
        ],
        Section::UncategorisedData => {
            let (value, unit) = value_and_unit(item);
            vec![
                item_name(item),
                text_or_dash(value),
                text_or_dash(unit),
                date_or_dash(first_date(
                    item,
                    &["effectiveDateTime", "effectivePeriod.start", "issued"],
                )),
            ]
        }
        Section::CommunicationPreferences | Section::RisksAndWarnings => vec![
            item_name(item),
            date_or_dash(first_date(item, &["period.start"])),
            status,
        ],
    }
}

/// The item's own name: the text of its first code-like field.
fn item_name(item: &Value) -> String {
    ["code", "vaccineCode", "type", "category", "class"]
        .iter()
        .find_map(|field| {
            let value = &item[*field];
            match value {
                Value::Array(values) => values.iter().find_map(concept_text),
                // Encounter.class is a bare Coding.
                Value::Object(_) => concept_text(value).or_else(|| coding_text(value)),
                _ => None,
            }
        })
        .unwrap_or_else(|| NOT_RECORDED.to_owned())
}

fn medication_name(item: &Value) -> Cell {
    if let Some(name) = concept_text(&item["medicationCodeableConcept"]) {
        return Cell::Text(name);
    }
    // Only a Medication that is in the Bundle is named; the reference's own display is not shown.
    match item["medicationReference"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Medication/"))
    {
        Some(id) => Cell::Medication(id.to_owned()),
        None => Cell::Text(NOT_RECORDED.to_owned()),
    }
}

/// A CodeableConcept's text, else its first coding's display, else its first code.
fn concept_text(concept: &Value) -> Option<String> {
    if let Some(text) = concept["text"].as_str().filter(|t| !t.trim().is_empty()) {
        return Some(text.to_owned());
    }
    let codings = concept["coding"].as_array()?;
    codings
        .iter()
        .find_map(|c| c["display"].as_str().filter(|d| !d.trim().is_empty()))
        .or_else(|| codings.iter().find_map(|c| c["code"].as_str()))
        .map(str::to_owned)
}

fn coding_text(coding: &Value) -> Option<String> {
    coding["display"]
        .as_str()
        .or_else(|| coding["code"].as_str())
        .map(str::to_owned)
}

fn status(item: &Value) -> Option<String> {
    concept_text(&item["clinicalStatus"]).or_else(|| item["status"].as_str().map(str::to_owned))
}

fn significance(item: &Value) -> Option<String> {
    item["extension"]
        .as_array()?
        .iter()
        .find(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.contains("ProblemSignificance"))
        })
        .and_then(|e| {
            e["valueCode"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| concept_text(&e["valueCodeableConcept"]))
        })
}

fn value_and_unit(item: &Value) -> (Option<String>, Option<String>) {
    if let Some(quantity) = item.get("valueQuantity") {
        let value = quantity.get("value").map(number_text);
        let unit = quantity["unit"]
            .as_str()
            .or_else(|| quantity["code"].as_str())
            .map(str::to_owned);
        return (value, unit);
    }
    let value = item["valueString"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| concept_text(&item["valueCodeableConcept"]))
        .or_else(|| item["conclusion"].as_str().map(str::to_owned));
    (value, None)
}

fn reference_range(item: &Value) -> Option<String> {
    let range = item["referenceRange"].get(0)?;
    if let Some(text) = range["text"].as_str() {
        return Some(text.to_owned());
    }
    let bound = |name: &str| range[name].get("value").map(number_text);
    match (bound("low"), bound("high")) {
        (Some(low), Some(high)) => Some(format!("{low} to {high}")),
        (Some(low), None) => Some(format!("{low} or more")),
        (None, Some(high)) => Some(format!("up to {high}")),
        (None, None) => None,
    }
}

fn number_text(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// The first of `paths` (dotted field names) that holds a string.
fn first_date<'a>(item: &'a Value, paths: &[&str]) -> Option<&'a str> {
    paths.iter().find_map(|path| {
        path.split('.')
            .try_fold(item, |value, field| value.get(field))
            .and_then(Value::as_str)
    })
}

fn text_or_dash(text: Option<String>) -> String {
    text.filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| NOT_RECORDED.to_owned())
}

fn date_or_dash(date: Option<&str>) -> String {
    date.map(display_date)
        .unwrap_or_else(|| NOT_RECORDED.to_owned())
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A FHIR date or dateTime as NHS displays it (`01-May-2023`, `May-2023`, `2023`); anything
/// else as given.
fn display_date(date: &str) -> String {
    let year = date
        .get(0..4)
        .filter(|y| y.bytes().all(|b| b.is_ascii_digit()));
    let month = date
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    let day = date
        .get(8..10)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
    match (year, month, day) {
        (Some(y), Some(m), Some(d)) => format!("{d}-{m}-{y}"),
        (Some(y), Some(m), None) => format!("{m}-{y}"),
        (Some(y), None, None) if date.len() == 4 => y.to_owned(),
        _ => date.to_owned(),
    }
}

/// An RFC 3339 time as a date and a UTC clock time.
fn date_time(time: &str) -> String {
    match time.get(11..16) {
        Some(clock) => format!("{} at {clock} UTC", display_date(time)),
        None => display_date(time),
    }
}

/// The patient banner's values, each already in display form.
#[derive(Debug)]
struct Banner {
    name: String,
    birth_date: String,
    nhs_number: String,
    gender: String,
    address: String,
}

impl Banner {
    fn of(patient: &Value) -> Banner {
        Banner {
            name: patient_name(patient),
            birth_date: date_or_dash(patient["birthDate"].as_str()),
            nhs_number: patient["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"].as_str() == Some(NHS_NUMBER_SYSTEM))
                .and_then(|i| i["value"].as_str())
                .map(spaced_nhs_number)
                .unwrap_or_else(|| NOT_RECORDED.to_owned()),
            gender: text_or_dash(patient["gender"].as_str().map(capitalised)),
            address: text_or_dash(patient_address(patient)),
        }
    }
}

/// `FAMILY, Given Names (Prefix)`, as NHS banners show a name.
fn patient_name(patient: &Value) -> String {
    let names = patient["name"].as_array();
    let name = names
        .into_iter()
        .flatten()
        .find(|n| n["use"].as_str() == Some("official"))
        .or_else(|| names.and_then(|n| n.first()));
    let Some(name) = name else {
        return "Name not recorded".to_owned();
    };
    let words = |field: &str| {
        name[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let family = name["family"].as_str().unwrap_or_default().to_uppercase();
    let given = words("given");
    let prefix = words("prefix");
    let mut out = match (family.is_empty(), given.is_empty()) {
        (false, false) => format!("{family}, {given}"),
        (false, true) => family,
        (true, false) => given,
        (true, true) => name["text"]
            .as_str()
            .unwrap_or("Name not recorded")
            .to_owned(),
    };
    if !prefix.is_empty() {
        out.push_str(&format!(" ({prefix})"));
    }
    out
}

fn patient_address(patient: &Value) -> Option<String> {
    let addresses = patient["address"].as_array()?;
    let address = addresses
        .iter()
        .find(|a| a["use"].as_str() == Some("home"))
        .or_else(|| addresses.first())?;
    let mut parts: Vec<&str> = address["line"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    parts.extend(
        ["city", "district", "postalCode"]
            .iter()
            .filter_map(|field| address[*field].as_str()),
    );
    parts.retain(|p| !p.trim().is_empty());
    (!parts.is_empty())
        .then(|| parts.join(", "))
        .or_else(|| address["text"].as_str().map(str::to_owned))
}

/// `9434765919` as `943 476 5919`.
fn spaced_nhs_number(number: &str) -> String {
    match (number.get(0..3), number.get(3..6), number.get(6..)) {
        (Some(a), Some(b), Some(c)) if number.len() == 10 => format!("{a} {b} {c}"),
        _ => number.to_owned(),
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn html_only_when_preferred_over_json() {
        assert!(prefers_html(&accept("text/html")));
        assert!(prefers_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(prefers_html(&accept(
            "application/fhir+json;q=0.5, text/html"
        )));
        assert!(!prefers_html(&accept("application/fhir+json")));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&accept(
            "text/html;q=0, application/fhir+json"
        )));
        assert!(!prefers_html(&accept(
            "application/fhir+json, text/html;q=0.9"
        )));
        assert!(!prefers_html(&http::HeaderMap::new()));
    }

    #[test]
    fn dates_display_as_nhs_banners_show_them() {
        assert_eq!(display_date("2023-05-01"), "01-May-2023");
        assert_eq!(display_date("2023-12-31T23:59:00Z"), "31-Dec-2023");
        assert_eq!(display_date("2023-05"), "May-2023");
        assert_eq!(display_date("2023"), "2023");
        assert_eq!(display_date("2023-13-01"), "2023-13-01");
        assert_eq!(display_date("soon"), "soon");
    }

    #[test]
    fn nhs_numbers_are_spaced_three_three_four() {
        assert_eq!(spaced_nhs_number("9434765919"), "943 476 5919");
        assert_eq!(spaced_nhs_number("943476"), "943476");
    }

    #[test]
    fn names_read_family_first_in_capitals() {
        let patient = serde_json::json!({"name": [
            {"use": "usual", "given": ["Jo"]},
            {"use": "official", "family": "Smith", "given": ["Joanna", "May"], "prefix": ["Mrs"]}
        ]});
        assert_eq!(patient_name(&patient), "SMITH, Joanna May (Mrs)");
    }
}
