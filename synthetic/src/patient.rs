//! Builds one synthetic patient's record: demographics, sharing preferences, and a clinical
//! history whose size follows the patient's age and a long-tailed draw.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use time::{Date, Duration};

use super::people::{self, Background};
use super::vocab::{self, Code, SensitiveCategory};
use super::{DemoKind, Practice, SharingPreference};
use mig_policy::fhir::{
    CONFIDENTIALITY_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, SHARING_PREFERENCE_SYSTEM, SNOMED,
};

const UK_CORE_PROFILE: &str = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sex {
    Female,
    Male,
}

/// How a tier preference is coded.
#[derive(Debug, Clone, Copy)]
struct PreferenceRecord {
    preference: SharingPreference,
    /// Use the GP SNOMED synonym rather than `urn:mig:sharing-preference`.
    snomed: bool,
    days_ago: i64,
}

/// Which sensitive items to record for one category.
#[derive(Debug, Clone, Copy)]
struct SensitivePlan {
    category: SensitiveCategory,
    by_code: bool,
    by_label: bool,
}

/// One prescribing course to record.
struct Course<'r> {
    medicine: &'static vocab::Medicine,
    start: Date,
    /// How many orders were issued.
    issues: usize,
    interval_days: i64,
    /// The Condition it treats.
    reason: Option<&'r str>,
    repeat: bool,
    stopped: bool,
}

/// Everything decided about a patient before their record is written.
#[derive(Debug, Default)]
struct Plan {
    sex: Option<Sex>,
    age: Option<i64>,
    preferences: Vec<PreferenceRecord>,
    specific_consents: Vec<SensitiveCategory>,
    /// Index into THIRD_PARTY_ORGANISATIONS, and whether the consent has lapsed.
    third_party: Option<(usize, bool)>,
    /// Type 1 opt-out: `Some(true)` as a Consent, `Some(false)` as an Observation.
    type1_opt_out: Option<bool>,
    sensitive: Vec<SensitivePlan>,
    confidential: bool,
    end_of_life: bool,
    communication_flags: Vec<usize>,
    fit_notes: bool,
    /// Multiplies the drawn record size.
    activity: f64,
    /// Section assignment by code (SPEC §4): index into RISK_WARNINGS, into OTHER_CARE_PLANS,
    /// and an allergy that has resolved.
    risk_warning: Option<usize>,
    other_care_plan: Option<usize>,
    resolved_allergy: bool,
}

/// A patient's record being built.
struct Builder<'a> {
    practice: &'a Practice,
    rng: ChaCha8Rng,
    pid: String,
    patient_ref: Value,
    out: Vec<Value>,
    next: u32,
    today: Date,
    birth: Date,
    age: i64,
    sex: Sex,
    /// First day the practice holds history for.
    history_start: Date,
    /// Dated clinical conditions that later items can cite as their reason.
    conditions: Vec<(String, Date)>,
}

pub(super) fn build(practice: &Practice, index: u64, nhs_number: &str) -> Vec<Value> {
    let mut rng = practice.rng_for(index);
    let plan = match DemoKind::for_index(index) {
        Some(kind) => demo_plan(kind),
        None => random_plan(&mut rng),
    };
    let today = practice.reference_date;
    let sex = plan.sex.unwrap_or(if rng.gen_bool(0.5) {
        Sex::Female
    } else {
        Sex::Male
    });
    let age = plan.age.unwrap_or_else(|| draw_age(&mut rng));
    let birth = days_before(today, age * 365 + age / 4 + rng.gen_range(0..365) as i64);
    let history_years = if rng.gen_bool(0.6) {
        age
    } else {
        rng.gen_range(1..=age.clamp(1, 30))
    };
    let history_start = days_before(today, history_years * 365).max(birth);
    let pid = super::patient_id(index);
    let mut b = Builder {
        practice,
        rng,
        patient_ref: json!({ "reference": format!("Patient/{pid}") }),
        pid,
        out: Vec::with_capacity(200),
        next: 0,
        today,
        birth,
        age,
        sex,
        history_start,
        conditions: Vec::new(),
    };
    b.patient(nhs_number, &plan);
    b.preferences(&plan);
    b.record(&plan);
    b.out
}

fn days_before(date: Date, days: i64) -> Date {
    date.checked_sub(Duration::days(days)).unwrap_or(date)
}

fn days_after(date: Date, days: i64) -> Date {
    date.checked_add(Duration::days(days)).unwrap_or(date)
}

fn calendar_date(year: i32, month: u8, day: u8) -> Date {
    time::Month::try_from(month)
        .and_then(|month| Date::from_calendar_date(year, month, day))
        .unwrap_or(Date::MIN)
}

fn time_text(date: Date, minute_of_day: u32) -> String {
    format!(
        "{}T{:02}:{:02}:00+00:00",
        date_text(date),
        minute_of_day / 60,
        minute_of_day % 60
    )
}

fn date_text(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// A UK practice list's age profile.
fn draw_age(rng: &mut ChaCha8Rng) -> i64 {
    const BANDS: [(i64, i64, u32); 6] = [
        (0, 15, 17),
        (15, 30, 18),
        (30, 45, 20),
        (45, 65, 26),
        (65, 80, 13),
        (80, 101, 6),
    ];
    let mut pick = rng.gen_range(0..100);
    for (low, high, share) in BANDS {
        if pick < share {
            return rng.gen_range(low..high);
        }
        pick -= share;
    }
    40
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller: rand 0.8 without rand_distr has no normal distribution.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn random_plan(rng: &mut ChaCha8Rng) -> Plan {
    let mut plan = Plan {
        activity: 1.0,
        ..Plan::default()
    };
    // Tier: ~3% dissent, ~12% core, ~10% nothing recorded, the rest core-and-additional.
    let roll = rng.gen_range(0..1000);
    let (current, snomed_ok) = match roll {
        0..=29 => (Some(SharingPreference::Dissent), true),
        30..=149 => (Some(SharingPreference::Core), true),
        150..=249 => (None, false),
        _ => (Some(SharingPreference::CoreAndAdditional), false),
    };
    if let Some(preference) = current {
        let days_ago = rng.gen_range(30..3000);
        if rng.gen_bool(0.1) {
            // An older, different preference that the newer one replaces.
            let older = match preference {
                SharingPreference::Dissent => SharingPreference::CoreAndAdditional,
                SharingPreference::Core => SharingPreference::Dissent,
                SharingPreference::CoreAndAdditional => SharingPreference::Dissent,
            };
            plan.preferences.push(PreferenceRecord {
                preference: older,
                snomed: older != SharingPreference::CoreAndAdditional && rng.gen_bool(0.5),
                days_ago: days_ago + rng.gen_range(60..2000),
            });
        }
        plan.preferences.push(PreferenceRecord {
            preference,
            snomed: snomed_ok && rng.gen_bool(0.5),
            days_ago,
        });
    }
    for category in vocab::SENSITIVE_CATEGORIES {
        let per_mille = match category.refset_id {
            vocab::STI_REFSET => 45,
            vocab::GENDER_REFSET => 6,
            _ => 15,
        };
        if rng.gen_range(0..1000) < per_mille {
            let by_code = rng.gen_bool(0.6);
            plan.sensitive.push(SensitivePlan {
                category,
                by_code,
                by_label: !by_code || rng.gen_bool(0.3),
            });
            if rng.gen_bool(0.3) {
                plan.specific_consents.push(category);
            }
        }
    }
    if rng.gen_range(0..1000) < 30 {
        let org = rng.gen_range(0..vocab::THIRD_PARTY_ORGANISATIONS.len());
        plan.third_party = Some((org, rng.gen_bool(0.15)));
    }
    if rng.gen_range(0..1000) < 40 {
        plan.type1_opt_out = Some(rng.gen_bool(0.67));
    }
    plan.confidential = rng.gen_range(0..1000) < 25;
    plan.end_of_life = rng.gen_range(0..1000) < 15;
    if rng.gen_range(0..1000) < 25 {
        plan.communication_flags
            .push(rng.gen_range(0..vocab::COMMUNICATION_FLAGS.len()));
        if rng.gen_bool(0.2) {
            plan.communication_flags
                .push(rng.gen_range(0..vocab::COMMUNICATION_FLAGS.len()));
        }
    }
    // About two in five working-age patients had a fit note in the last five years (NHS England
    // counts about 11 million notes a year for about 40 million people of working age).
    plan.fit_notes = rng.gen_range(0..1000) < 400;
    if rng.gen_range(0..1000) < 20 {
        plan.risk_warning = Some(rng.gen_range(0..vocab::RISK_WARNINGS.len()));
    }
    if rng.gen_range(0..1000) < 40 {
        plan.other_care_plan = Some(rng.gen_range(0..vocab::OTHER_CARE_PLANS.len()));
    }
    plan
}

fn demo_plan(kind: DemoKind) -> Plan {
    let record = |preference, snomed, days_ago| PreferenceRecord {
        preference,
        snomed,
        days_ago,
    };
    let all_sensitive = || {
        vocab::SENSITIVE_CATEGORIES
            .into_iter()
            .map(|category| SensitivePlan {
                category,
                by_code: true,
                by_label: true,
            })
            .collect::<Vec<_>>()
    };
    let mut plan = Plan {
        activity: 1.0,
        age: Some(52),
        sex: Some(Sex::Female),
        preferences: vec![record(SharingPreference::CoreAndAdditional, false, 400)],
        ..Plan::default()
    };
    match kind {
        DemoKind::Dissent => {
            plan.preferences = vec![record(SharingPreference::Dissent, false, 700)];
            plan.sex = Some(Sex::Male);
            plan.age = Some(44);
        }
        DemoKind::DissentGpCoded => {
            plan.preferences = vec![record(SharingPreference::Dissent, true, 900)];
            plan.age = Some(67);
        }
        DemoKind::CoreOnly => {
            plan.preferences = vec![record(SharingPreference::Core, false, 500)];
            plan.sex = Some(Sex::Male);
            plan.age = Some(71);
        }
        DemoKind::CoreGpCoded => {
            plan.preferences = vec![record(SharingPreference::Core, true, 1200)];
            plan.age = Some(38);
        }
        DemoKind::CoreAndAdditional => {
            plan.sex = Some(Sex::Male);
            plan.age = Some(58);
            plan.resolved_allergy = true;
        }
        DemoKind::NoPreference => {
            plan.preferences.clear();
            plan.age = Some(29);
        }
        DemoKind::DissentWithdrawn => {
            plan.preferences = vec![
                record(SharingPreference::Dissent, true, 2000),
                record(SharingPreference::CoreAndAdditional, false, 200),
            ];
            plan.sex = Some(Sex::Male);
            plan.age = Some(63);
        }
        DemoKind::NewerDissent => {
            plan.preferences = vec![
                record(SharingPreference::CoreAndAdditional, false, 1500),
                record(SharingPreference::Dissent, false, 100),
            ];
            plan.age = Some(47);
        }
        DemoKind::SensitiveWithoutConsent => {
            plan.sensitive = all_sensitive();
            plan.age = Some(34);
        }
        DemoKind::SpecificConsentSti => {
            plan.sensitive = all_sensitive();
            plan.specific_consents = vec![vocab::STI];
            plan.age = Some(27);
        }
        DemoKind::StandingThirdPartyConsent => {
            plan.third_party = Some((0, false));
            plan.sex = Some(Sex::Male);
            plan.age = Some(84);
        }
        DemoKind::LapsedThirdPartyConsent => {
            plan.third_party = Some((1, true));
            plan.age = Some(79);
        }
        DemoKind::PracticeConfidential => {
            plan.confidential = true;
            plan.age = Some(41);
        }
        DemoKind::Type1OptOut => {
            plan.type1_opt_out = Some(true);
            plan.sex = Some(Sex::Male);
            plan.age = Some(36);
        }
        DemoKind::EndOfLife => {
            plan.end_of_life = true;
            plan.other_care_plan = Some(2);
            plan.sex = Some(Sex::Male);
            plan.age = Some(88);
            plan.activity = 2.0;
        }
        DemoKind::CommunicationNeeds => {
            plan.communication_flags = vec![0, 1];
            plan.risk_warning = Some(0);
            plan.age = Some(61);
        }
        DemoKind::SpecificConsentAll => {
            plan.sensitive = all_sensitive();
            plan.specific_consents = vocab::SENSITIVE_CATEGORIES.to_vec();
            plan.age = Some(31);
        }
        DemoKind::FitNotes => {
            plan.fit_notes = true;
            plan.sex = Some(Sex::Male);
            plan.age = Some(45);
        }
    }
    plan
}

impl Builder<'_> {
    fn id(&mut self, abbreviation: &str) -> String {
        self.next += 1;
        format!("{}-{abbreviation}{}", self.pid, self.next)
    }

    fn push(&mut self, resource: Value) -> usize {
        self.out.push(resource);
        self.out.len() - 1
    }

    fn meta(resource_type: &str) -> Value {
        json!({ "profile": [format!("{UK_CORE_PROFILE}{resource_type}")] })
    }

    /// Adds a `meta.security` label to an item already built.
    fn label(&mut self, index: usize, coding: Value) {
        let Some(object) = self.out.get_mut(index).and_then(Value::as_object_mut) else {
            return;
        };
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let security = meta.entry("security").or_insert_with(|| json!([]));
            if let Some(list) = security.as_array_mut() {
                list.push(coding);
            }
        }
    }

    fn sensitive_label(&mut self, index: usize, category: &SensitiveCategory) {
        let display = match category.refset_id {
            vocab::GENDER_REFSET => "Gender related issues exclusion simple reference set",
            vocab::ASSISTED_FERTILISATION_REFSET => {
                "Assisted fertilisation exclusion simple reference set"
            }
            vocab::TERMINATION_OF_PREGNANCY_REFSET => {
                "Termination of pregnancy exclusion simple reference set"
            }
            _ => "Sexually transmitted disease exclusion simple reference set",
        };
        self.label(
            index,
            json!({ "system": SNOMED, "code": category.refset_id, "display": display }),
        );
    }

    fn confidentiality_label(&mut self, index: usize, code: &str) {
        let display = if code == "V" {
            "very restricted"
        } else {
            "restricted"
        };
        self.label(
            index,
            json!({ "system": CONFIDENTIALITY_SYSTEM, "code": code, "display": display }),
        );
    }

    fn practice_ref(&self) -> Value {
        json!({ "reference": format!("Organization/{}", self.practice.organization_id()) })
    }

    fn clinician(&mut self, role: &str) -> Value {
        let staff = || {
            people::PRACTICE_STAFF
                .iter()
                .enumerate()
                .filter(|(_, member)| member.3 == role)
        };
        let count = staff().count().max(1);
        let pick = staff()
            .nth(self.rng.gen_range(0..count))
            .map_or(0, |(index, _)| index);
        json!({ "reference": format!("Practitioner/{}", super::practitioner_id(pick)) })
    }

    fn gp(&mut self) -> Value {
        self.clinician("gp")
    }

    /// A surgery-hours time on `date`.
    fn date_time(&mut self, date: Date) -> String {
        let minutes = self.surgery_minute();
        time_text(date, minutes)
    }

    /// A minute of the day in surgery hours, on a five-minute appointment grid.
    fn surgery_minute(&mut self) -> u32 {
        self.rng.gen_range(8 * 12..18 * 12) * 5
    }

    fn random_date(&mut self, from: Date, to: Date) -> Date {
        let (from, to) = (from.to_julian_day(), to.to_julian_day());
        if to <= from {
            return Date::from_julian_day(from).unwrap_or(self.today);
        }
        Date::from_julian_day(self.rng.gen_range(from..=to)).unwrap_or(self.today)
    }

    fn age_band(&self) -> usize {
        match self.age {
            0..=17 => 0,
            18..=44 => 1,
            45..=64 => 2,
            65..=79 => 3,
            _ => 4,
        }
    }

    fn patient(&mut self, nhs_number: &str, plan: &Plan) {
        let total_weight: u32 = people::BACKGROUNDS.iter().map(|b| b.weight).sum();
        let mut pick = self.rng.gen_range(0..total_weight.max(1));
        let mut background: &Background = &people::BACKGROUNDS[0];
        for candidate in people::BACKGROUNDS {
            if pick < candidate.weight {
                background = candidate;
                break;
            }
            pick -= candidate.weight;
        }
        let names = match self.sex {
            Sex::Female => background.female,
            Sex::Male => background.male,
        };
        let given = self.pick(names);
        let mut given_names = vec![given];
        if self.rng.gen_bool(0.5) {
            let middle = self.pick(names);
            if middle != given {
                given_names.push(middle);
            }
        }
        let family = self.pick(background.family);
        let prefix = match (self.sex, self.age) {
            (_, 0..=15) => None,
            (Sex::Male, _) => Some("Mr"),
            (Sex::Female, 16..=25) => Some(if self.rng.gen_bool(0.5) { "Miss" } else { "Ms" }),
            (Sex::Female, _) => Some(match self.rng.gen_range(0..10) {
                0..=4 => "Mrs",
                5..=7 => "Ms",
                8 => "Miss",
                _ => "Dr",
            }),
        };
        let mut name = json!({ "use": "official", "family": family, "given": given_names });
        if let Some(prefix) = prefix {
            name["prefix"] = json!([prefix]);
        }

        let (town, districts) = self.pick(people::TOWNS);
        let district = self.pick(districts);
        let letters = people::POSTCODE_UNIT_LETTERS;
        let postcode = format!(
            "{district} {}{}{}",
            self.rng.gen_range(1..10),
            char::from(letters[self.rng.gen_range(0..letters.len())]),
            char::from(letters[self.rng.gen_range(0..letters.len())]),
        );
        let street = format!(
            "{} {}",
            self.pick(people::STREET_NAMES),
            self.pick(people::STREET_KINDS)
        );
        let mut lines = Vec::new();
        if self.rng.gen_bool(0.12) {
            lines.push(format!("Flat {}", self.rng.gen_range(1..40)));
        }
        lines.push(format!("{} {street}", self.rng.gen_range(1..220)));

        let mut telecom = vec![json!({
            "system": "phone", "use": "mobile",
            "value": format!("07700 900{:03}", self.rng.gen_range(0..1000)),
        })];
        if self.rng.gen_bool(0.3) {
            telecom.push(json!({
                "system": "phone", "use": "home",
                "value": format!("01632 960{:03}", self.rng.gen_range(0..1000)),
            }));
        }
        if self.age >= 16 && self.rng.gen_bool(0.5) {
            telecom.push(json!({
                "system": "email", "use": "home",
                "value": format!("{}.{}{}@example.com", given.to_lowercase(),
                    family.to_lowercase().replace(['\'', ' '], ""), self.rng.gen_range(1..100)),
            }));
        }

        let usual_gp = self.gp();
        let mut patient = json!({
            "resourceType": "Patient",
            "id": self.pid,
            "meta": Self::meta("Patient"),
            "identifier": [{
                "extension": [{
                    "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                    "valueCodeableConcept": {"coding": [{
                        "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                        "code": "01", "display": "Number present and verified"}]}
                }],
                "system": NHS_NUMBER_SYSTEM,
                "value": nhs_number,
            }],
            "name": [name],
            "telecom": telecom,
            "gender": match self.sex { Sex::Female => "female", Sex::Male => "male" },
            "birthDate": date_text(self.birth),
            "address": [{
                "use": "home", "type": "physical", "line": lines, "city": town,
                "postalCode": postcode, "country": "GB",
            }],
            "generalPractitioner": [usual_gp, self.practice_ref()],
            "managingOrganization": self.practice_ref(),
        });
        let mut language = None;
        for &(code, display, per_mille, interpreter) in background.languages {
            if self.rng.gen_range(0..1000) < per_mille {
                language = Some((code, display, self.rng.gen_range(0..1000) < interpreter));
                break;
            }
        }
        if let Some((code, display, interpreter)) = language {
            patient["communication"] = json!([{
                "language": {"coding": [{"system": vocab::HUMAN_LANGUAGE, "code": code, "display": display}]},
                "preferred": true,
            }]);
            if interpreter {
                patient["extension"] = json!([{
                    "url": vocab::INTERPRETER_REQUIRED_EXTENSION, "valueBoolean": true,
                }]);
            }
        }
        if plan.communication_flags.contains(&0) {
            // British Sign Language user: needs an interpreter for every consultation.
            patient["extension"] = json!([{
                "url": vocab::INTERPRETER_REQUIRED_EXTENSION, "valueBoolean": true,
            }]);
        }
        self.push(patient);
    }

    fn pick<T: Copy + Default>(&mut self, items: &[T]) -> T {
        items
            .get(self.rng.gen_range(0..items.len().max(1)))
            .copied()
            .unwrap_or_default()
    }

    fn consent(&mut self, category: Value, date: Date, provision: Value, opt_in: bool) -> usize {
        let id = self.id("cns");
        let date_time = self.date_time(date);
        let resource = json!({
            "resourceType": "Consent",
            "id": id,
            "status": "active",
            "scope": {"coding": [{"system": vocab::CONSENT_SCOPE_SYSTEM, "code": "patient-privacy",
                "display": "Privacy Consent"}]},
            "category": [category],
            "patient": self.patient_ref,
            "dateTime": date_time,
            "organization": [self.practice_ref()],
            "policyRule": {"coding": [{"system": vocab::ACT_CODE,
                "code": if opt_in { "OPTIN" } else { "OPTOUT" }}]},
            "provision": provision,
        });
        self.push(resource)
    }

    fn preferences(&mut self, plan: &Plan) {
        for record in &plan.preferences {
            let date = days_before(self.today, record.days_ago);
            let coding = match (record.preference, record.snomed) {
                (SharingPreference::Dissent, true) => snomed(vocab::SNOMED_DISSENT),
                (SharingPreference::Core, true) => snomed(vocab::SNOMED_CONSENT_CORE),
                (preference, _) => json!({
                    "system": SHARING_PREFERENCE_SYSTEM,
                    "code": preference.code(),
                    "display": preference.display(),
                }),
            };
            let permit = record.preference != SharingPreference::Dissent;
            self.consent(
                json!({ "coding": [coding] }),
                date,
                json!({ "type": if permit { "permit" } else { "deny" } }),
                permit,
            );
        }
        for category in &plan.specific_consents {
            let date = days_before(self.today, self.rng.gen_range(20..1500));
            self.consent(
                json!({ "coding": [{"system": vocab::LOINC, "code": vocab::PATIENT_CONSENT_LOINC.0,
                    "display": vocab::PATIENT_CONSENT_LOINC.1}] }),
                date,
                json!({
                    "type": "permit",
                    "securityLabel": [{"system": SNOMED, "code": category.refset_id}],
                }),
                true,
            );
        }
        if let Some((org, lapsed)) = plan.third_party {
            let (ods, name) = vocab::THIRD_PARTY_ORGANISATIONS
                .get(org)
                .copied()
                .unwrap_or(("8KL21", ""));
            let (start, end) = if lapsed {
                let end = days_before(self.today, self.rng.gen_range(30..400));
                (days_before(end, 365 * 2), end)
            } else {
                let start = days_before(self.today, self.rng.gen_range(30..700));
                // At least three years of validity left, so the demo outlives its reference date.
                (
                    start,
                    days_after(self.today, 365 * 3 + self.rng.gen_range(0..365)),
                )
            };
            let date = start;
            self.consent(
                json!({ "coding": [snomed(vocab::STANDING_THIRD_PARTY_CONSENT)] }),
                date,
                json!({
                    "type": "permit",
                    "period": {"start": date_text(start), "end": date_text(end)},
                    "actor": [{
                        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP", "display": "information recipient"}]},
                        "reference": {"identifier": {"system": ODS_SYSTEM, "value": ods}, "display": name},
                    }],
                }),
                true,
            );
        }
        match plan.type1_opt_out {
            Some(true) => {
                let date = days_before(self.today, self.rng.gen_range(30..2500));
                self.consent(
                    json!({ "coding": [snomed(vocab::TYPE1_OPT_OUT)] }),
                    date,
                    json!({ "type": "deny" }),
                    false,
                );
            }
            Some(false) => {
                let date = days_before(self.today, self.rng.gen_range(30..2500));
                let id = self.id("obs");
                let when = self.date_time(date);
                let performer = self.clinician("hca");
                let resource = json!({
                    "resourceType": "Observation", "id": id, "meta": Self::meta("Observation"),
                    "status": "final",
                    "code": {"coding": [snomed(vocab::TYPE1_OPT_OUT)]},
                    "subject": self.patient_ref,
                    "effectiveDateTime": when,
                    "performer": [performer],
                });
                self.push(resource);
            }
            None => {}
        }
    }

    /// The clinical record, sized to a long-tailed budget.
    fn record(&mut self, plan: &Plan) {
        // Log-normal (sigma 0.7) around a median of ~125 resources scaled by age: children
        // and young adults mostly 30-80, the very old mostly several hundred, and about 3% of
        // all records 500 or more. The mean over a practice is about 150.
        let age_factor = match self.age_band() {
            0 => 0.4,
            1 => 0.65,
            2 => 1.05,
            3 => 1.6,
            _ => 2.3,
        };
        let z = standard_normal(&mut self.rng);
        let budget =
            (125.0 * age_factor * plan.activity * (0.7 * z).exp()).clamp(12.0, 2500.0) as usize;

        self.allergies();
        let long_term = self.long_term_conditions();
        self.immunisations();
        self.repeat_medicines(&long_term, budget);
        self.sensitive_items(plan);
        if plan.confidential {
            self.confidential_items();
        }
        if plan.end_of_life || (self.age >= 80 && self.rng.gen_range(0..1000) < 60) {
            self.end_of_life();
        }
        for &flag in &plan.communication_flags {
            self.communication_flag(flag);
        }
        self.filed_by_code(plan);
        if plan.fit_notes && (17..=68).contains(&self.age) {
            let episodes = self.pick(&[1, 1, 1, 2, 2, 3]);
            for _ in 0..episodes {
                self.fit_note_episode();
            }
        }
        while self.out.len() < budget {
            self.consultation(&long_term);
        }
    }

    fn allergies(&mut self) {
        let count = match self.rng.gen_range(0..100) {
            0..=74 => 0,
            75..=92 => 1,
            93..=97 => 2,
            _ => 3,
        };
        for _ in 0..count {
            let resolved = self.rng.gen_bool(0.15);
            self.allergy(resolved);
        }
    }

    fn allergy(&mut self, resolved: bool) {
        let (code, display, category, criticality) = self.pick(vocab::ALLERGIES);
        let reaction = self.pick(vocab::ALLERGY_REACTIONS);
        let onset = self.random_date(self.birth, self.today);
        let recorded = self.random_date(onset.max(self.history_start), self.today);
        let id = self.id("alg");
        let recorder = self.gp();
        let when = self.date_time(recorded);
        let mut resource = json!({
            "resourceType": "AllergyIntolerance", "id": id, "meta": Self::meta("AllergyIntolerance"),
            "clinicalStatus": {"coding": [{"system": vocab::ALLERGY_CLINICAL,
                "code": if resolved { "resolved" } else { "active" }}]},
            "verificationStatus": {"coding": [{"system": vocab::ALLERGY_VERIFICATION, "code": "confirmed"}]},
            "type": if category == "medication" && self.rng.gen_bool(0.3) { "intolerance" } else { "allergy" },
            "category": [category],
            "criticality": criticality,
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
            "patient": self.patient_ref,
            "onsetDateTime": date_text(onset),
            "recordedDate": when,
            "recorder": recorder,
            "reaction": [{
                "manifestation": [{"coding": [snomed(reaction)]}],
                "severity": if reaction.0 == "39579001" { "severe" } else { "mild" },
            }],
        });
        if resolved {
            resource["lastOccurrence"] = json!(date_text(onset));
            resource["note"] = json!([{"text": "Tolerated on rechallenge; resolved."}]);
        }
        self.push(resource);
    }

    /// Returns the ids, onsets and indexes into LONG_TERM_CONDITIONS of what was recorded.
    fn long_term_conditions(&mut self) -> Vec<(String, Date, usize)> {
        let band = self.age_band();
        let mut recorded = Vec::new();
        for (index, condition) in vocab::LONG_TERM_CONDITIONS.iter().enumerate() {
            let per_mille = condition.per_mille.get(band).copied().unwrap_or(0);
            let sex_ok = match condition.code.0 {
                "254837009" => self.sex == Sex::Female,
                "399068003" => self.sex == Sex::Male,
                _ => true,
            };
            if !sex_ok || self.rng.gen_range(0..1000) >= u32::from(per_mille) {
                continue;
            }
            let earliest = days_after(self.birth, 365.min(self.age * 365));
            let onset =
                self.random_date(earliest.max(days_before(self.today, 365 * 30)), self.today);
            let id = self.condition(condition.code, onset, "active", None);
            recorded.push((id, onset, index));
        }
        recorded
    }

    fn condition(
        &mut self,
        code: Code,
        onset: Date,
        status: &str,
        encounter: Option<&str>,
    ) -> String {
        let id = self.id("cnd");
        let asserter = self.gp();
        let recorded = self.date_time(onset);
        let mut resource = json!({
            "resourceType": "Condition", "id": id, "meta": Self::meta("Condition"),
            "clinicalStatus": {"coding": [{"system": vocab::CONDITION_CLINICAL, "code": status}]},
            "verificationStatus": {"coding": [{"system": vocab::CONDITION_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": vocab::CONDITION_CATEGORY, "code": "problem-list-item",
                "display": "Problem List Item"}]}],
            "code": {"coding": [snomed(code)]},
            "subject": self.patient_ref,
            "onsetDateTime": date_text(onset),
            "recordedDate": recorded,
            "asserter": asserter,
        });
        if let Some(encounter) = encounter {
            resource["encounter"] = json!({ "reference": format!("Encounter/{encounter}") });
        }
        if status != "active" {
            resource["abatementDateTime"] = json!(date_text(days_after(onset, 14).min(self.today)));
        }
        self.push(resource);
        self.conditions.push((id.clone(), onset));
        id
    }

    fn immunisation(&mut self, code: Code, date: Date) {
        if date < self.birth || date > self.today {
            return;
        }
        let id = self.id("imm");
        let performer = self.clinician("nurse");
        let when = self.date_time(date);
        let lot = format!(
            "{}{:05}",
            char::from(b'A' + self.rng.gen_range(0..26u8)),
            self.rng.gen_range(0..100_000)
        );
        let resource = json!({
            "resourceType": "Immunization", "id": id, "meta": Self::meta("Immunization"),
            "status": "completed",
            "vaccineCode": {"coding": [snomed(code)]},
            "patient": self.patient_ref,
            "occurrenceDateTime": when,
            "recorded": when,
            "primarySource": true,
            "lotNumber": lot,
            "performer": [{"actor": performer}],
        });
        self.push(resource);
    }

    fn immunisations(&mut self) {
        let age_days = (self.today - self.birth).whole_days();
        for &(code, display, weeks, first_year) in vocab::CHILDHOOD_IMMUNISATIONS {
            let due = i64::from(weeks) * 7;
            // Only vaccines that were in the schedule when the child was that age.
            let due_date = days_after(self.birth, due);
            if due < age_days && due_date.year() >= first_year && self.rng.gen_bool(0.93) {
                let date = days_after(due_date, self.rng.gen_range(0..21));
                self.immunisation((code, display), date);
            }
        }
        if self.age >= 18 && self.rng.gen_bool(0.8) {
            // The 2021 programme, then autumn boosters for the over-75s.
            let first = days_after(calendar_date(2021, 1, 10), self.rng.gen_range(0..150));
            if self.birth <= days_before(first, 18 * 365) {
                self.immunisation(vocab::COVID_VACCINATIONS[0], first);
                self.immunisation(vocab::COVID_VACCINATIONS[1], days_after(first, 77));
                if self.age >= 75 {
                    for year in 2022..=self.today.year() {
                        let autumn = calendar_date(year, 9, 20);
                        let date = days_after(autumn, self.rng.gen_range(0..70));
                        self.immunisation(vocab::COVID_VACCINATIONS[2], date);
                    }
                }
            }
        }
        if self.age >= 65 {
            let years = (self.age - 64).min(12);
            for year in 0..years {
                if self.rng.gen_bool(0.75) {
                    let date = days_before(self.today, 365 * year + self.rng.gen_range(5..70));
                    self.immunisation(vocab::FLU_VACCINATION, date);
                }
            }
            let at_65 = days_after(self.birth, 365 * 65 + 100);
            self.immunisation(vocab::ADULT_IMMUNISATIONS[0], at_65);
            if self.age >= 70 && self.rng.gen_bool(0.6) {
                let at_70 = days_after(self.birth, 365 * 70 + 150);
                self.immunisation(vocab::ADULT_IMMUNISATIONS[1], at_70);
            }
        }
        if self.age >= 18 && self.rng.gen_bool(0.06) {
            let code = vocab::ADULT_IMMUNISATIONS[2 + self.rng.gen_range(0..2)];
            let date = self.random_date(self.history_start, self.today);
            self.immunisation(code, date);
        }
    }

    /// A prescribing course: statement, plan and `issues` orders. Returns the plan's id.
    fn medication_course(&mut self, course: Course<'_>) -> (usize, usize) {
        let Course {
            medicine,
            start,
            issues,
            interval_days,
            reason,
            repeat,
            stopped,
        } = course;
        let plan_id = self.id("mrq");
        let statement_id = self.id("msm");
        let prescriber = self.gp();
        let medication =
            json!({ "reference": format!("Medication/{}", super::medication_id(medicine.code)) });
        let last_issue =
            days_after(start, interval_days * (issues.max(1) as i64 - 1)).min(self.today);
        let end = stopped.then(|| days_after(last_issue, interval_days).min(self.today));
        let dispense = json!({
            "validityPeriod": {"start": date_text(start)},
            "quantity": {"value": medicine.quantity, "unit": medicine.unit},
            "numberOfRepeatsAllowed": if repeat { 6 } else { 0 },
        });
        let authored = self.date_time(start);
        let mut plan = json!({
            "resourceType": "MedicationRequest", "id": plan_id, "meta": Self::meta("MedicationRequest"),
            "status": if stopped { "stopped" } else if repeat { "active" } else { "completed" },
            "intent": "plan",
            "courseOfTherapyType": {"coding": [{"system": vocab::COURSE_OF_THERAPY,
                "code": if repeat { "continuous" } else { "acute" }}]},
            "medicationReference": medication,
            "subject": self.patient_ref,
            "authoredOn": authored,
            "requester": prescriber,
            "dosageInstruction": [{"text": medicine.dose}],
            "dispenseRequest": dispense,
        });
        if let Some(reason) = reason {
            plan["reasonReference"] = json!([{ "reference": format!("Condition/{reason}") }]);
        }
        let mut statement = json!({
            "resourceType": "MedicationStatement", "id": statement_id, "meta": Self::meta("MedicationStatement"),
            "status": if stopped || !repeat { "completed" } else { "active" },
            "basedOn": [{"reference": format!("MedicationRequest/{plan_id}")}],
            "medicationReference": medication,
            "subject": self.patient_ref,
            "effectivePeriod": {"start": date_text(start)},
            "dateAsserted": authored,
            "dosage": [{"text": medicine.dose}],
        });
        if let Some(end) = end.or((!repeat).then_some(last_issue)) {
            statement["effectivePeriod"]["end"] = json!(date_text(end));
        }
        if let Some(reason) = reason {
            statement["reasonReference"] = json!([{ "reference": format!("Condition/{reason}") }]);
        }
        let plan_index = self.push(plan);
        let statement_index = self.push(statement);
        for issue in 0..issues {
            let date = days_after(start, interval_days * issue as i64);
            if date > self.today {
                break;
            }
            let id = self.id("mrq");
            let when = self.date_time(date);
            let mut order = json!({
                "resourceType": "MedicationRequest", "id": id, "meta": Self::meta("MedicationRequest"),
                "status": "completed",
                "intent": "order",
                "basedOn": [{"reference": format!("MedicationRequest/{plan_id}")}],
                "medicationReference": medication,
                "subject": self.patient_ref,
                "authoredOn": when,
                "requester": prescriber,
                "dosageInstruction": [{"text": medicine.dose}],
                "dispenseRequest": {"quantity": {"value": medicine.quantity, "unit": medicine.unit}},
            });
            if let Some(reason) = reason {
                order["reasonReference"] = json!([{ "reference": format!("Condition/{reason}") }]);
            }
            self.push(order);
        }
        (plan_index, statement_index)
    }

    fn repeat_medicines(&mut self, long_term: &[(String, Date, usize)], budget: usize) {
        let mut courses: Vec<(&'static vocab::Medicine, String, Date)> = Vec::new();
        for (id, onset, index) in long_term {
            let Some(condition) = vocab::LONG_TERM_CONDITIONS.get(*index) else {
                continue;
            };
            for (n, code) in condition.medicines.iter().enumerate() {
                if n > 0 && !self.rng.gen_bool(0.4) {
                    continue;
                }
                if let Some(medicine) = vocab::medicine(code) {
                    courses.push((medicine, id.clone(), *onset));
                }
            }
        }
        if courses.is_empty() {
            return;
        }
        // Repeats take at most about 45% of the record, shared between the courses.
        let per_course = (budget * 45 / 100 / courses.len()).max(3);
        for (medicine, reason, onset) in courses {
            let interval = if medicine.quantity >= 56 || self.rng.gen_bool(0.3) {
                56
            } else {
                28
            };
            let stopped = self.rng.gen_bool(0.12);
            let wanted = ((self.today - onset).whole_days() / interval).max(1) as usize;
            let issues = wanted.min(per_course.saturating_sub(2).max(1));
            let start = days_before(
                self.today,
                interval * issues as i64 + self.rng.gen_range(0..20),
            );
            let start = start.max(onset);
            let (plan, statement) = self.medication_course(Course {
                medicine,
                start,
                issues,
                interval_days: interval,
                reason: Some(&reason),
                repeat: true,
                stopped,
            });
            if !stopped && onset < start {
                self.started_at_onset(plan, statement, onset);
            }
        }
    }

    /// A repeat still running was started when its condition was diagnosed, often years ago;
    /// only its recent issues are in the record.
    fn started_at_onset(&mut self, plan: usize, statement: usize, onset: Date) {
        let authored = self.date_time(onset);
        if let Some(plan) = self.out.get_mut(plan) {
            plan["authoredOn"] = json!(authored);
            plan["dispenseRequest"]["validityPeriod"]["start"] = json!(date_text(onset));
        }
        if let Some(statement) = self.out.get_mut(statement) {
            statement["effectivePeriod"]["start"] = json!(date_text(onset));
            statement["dateAsserted"] = json!(authored);
        }
    }

    fn encounter(&mut self, date: Date) -> (String, usize) {
        let id = self.id("enc");
        let (code, display, class) = self.pick(vocab::ENCOUNTER_TYPES);
        let (class, code, display) = if class == "HH" && self.age < 70 {
            ("AMB", "11429006", "Consultation")
        } else {
            (class, code, display)
        };
        let role = if self.rng.gen_bool(0.75) {
            "gp"
        } else {
            "nurse"
        };
        let clinician = self.clinician(role);
        let minute = self.surgery_minute();
        let start = time_text(date, minute);
        let end = time_text(date, minute + self.rng.gen_range(1..4) * 5);
        let resource = json!({
            "resourceType": "Encounter", "id": id, "meta": Self::meta("Encounter"),
            "status": "finished",
            "class": {"system": vocab::ACT_CODE, "code": class},
            "type": [{"coding": [{"system": SNOMED, "code": code, "display": display}]}],
            "subject": self.patient_ref,
            "participant": [{"individual": clinician}],
            "period": {"start": start, "end": end},
            "serviceProvider": self.practice_ref(),
            "location": [{"location": {"reference": format!("Location/{}", self.practice.location_id())}}],
        });
        let index = self.push(resource);
        (id, index)
    }

    fn observation(
        &mut self,
        category: &str,
        code: Code,
        date: Date,
        encounter: Option<&str>,
        value: Value,
    ) -> (String, usize) {
        let id = self.id("obs");
        let performer = self.clinician(if category == "laboratory" {
            "gp"
        } else {
            "nurse"
        });
        let when = self.date_time(date);
        let mut resource = json!({
            "resourceType": "Observation", "id": id, "meta": Self::meta("Observation"),
            "status": "final",
            "category": [{"coding": [{"system": vocab::OBSERVATION_CATEGORY, "code": category}]}],
            "code": {"coding": [snomed(code)]},
            "subject": self.patient_ref,
            "effectiveDateTime": when,
            "performer": [performer],
        });
        if let Some(encounter) = encounter {
            resource["encounter"] = json!({ "reference": format!("Encounter/{encounter}") });
        }
        if let (Some(object), Value::Object(value)) = (resource.as_object_mut(), value) {
            object.extend(value);
        }
        let index = self.push(resource);
        (id, index)
    }

    fn quantity(value: f64, unit: &str) -> Value {
        json!({ "value": value, "unit": unit, "system": vocab::UCUM, "code": unit })
    }

    fn vitals(&mut self, date: Date, encounter: &str, hypertensive: bool) {
        match self.rng.gen_range(0..4) {
            0 | 1 if self.age >= 16 => {
                let base = if hypertensive { 145.0 } else { 122.0 };
                let systolic = (base + 12.0 * standard_normal(&mut self.rng)).round();
                let diastolic = (systolic * 0.62 + 4.0 * standard_normal(&mut self.rng)).round();
                self.observation(
                    "vital-signs",
                    vocab::BLOOD_PRESSURE,
                    date,
                    Some(encounter),
                    json!({"component": [
                        {"code": {"coding": [snomed(vocab::SYSTOLIC)]}, "valueQuantity": Self::quantity(systolic, "mm[Hg]")},
                        {"code": {"coding": [snomed(vocab::DIASTOLIC)]}, "valueQuantity": Self::quantity(diastolic, "mm[Hg]")},
                    ]}),
                );
            }
            2 if self.age >= 16 => {
                let weight = (78.0 + 14.0 * standard_normal(&mut self.rng)).clamp(42.0, 190.0);
                let weight = (weight * 10.0).round() / 10.0;
                self.observation(
                    "vital-signs",
                    vocab::BODY_WEIGHT,
                    date,
                    Some(encounter),
                    json!({"valueQuantity": Self::quantity(weight, "kg")}),
                );
                let bmi = ((weight / 2.89) * 10.0).round() / 10.0;
                self.observation(
                    "vital-signs",
                    vocab::BODY_MASS_INDEX,
                    date,
                    Some(encounter),
                    json!({"valueQuantity": Self::quantity(bmi, "kg/m2")}),
                );
            }
            _ => {
                let rate = (74.0 + 10.0 * standard_normal(&mut self.rng)).round();
                self.observation(
                    "vital-signs",
                    vocab::HEART_RATE,
                    date,
                    Some(encounter),
                    json!({"valueQuantity": Self::quantity(rate, "/min")}),
                );
            }
        }
    }

    fn lab_report(&mut self, date: Date, encounter: &str) {
        let (code, display, service, analytes) = self.pick(vocab::LAB_PANELS);
        let mut results = Vec::new();
        for &(a_code, a_display, unit, low, high, decimals) in analytes {
            let spread = high - low;
            let value = low + spread * (0.5 + 0.3 * standard_normal(&mut self.rng));
            let value = value.max(low * 0.4);
            let scale = 10f64.powi(i32::from(decimals));
            let value = (value * scale).round() / scale;
            let interpretation = if value < low {
                Some(("L", "Low"))
            } else if value > high {
                Some(("H", "High"))
            } else {
                None
            };
            let mut extra = json!({
                "valueQuantity": Self::quantity(value, unit),
                "referenceRange": [{"low": Self::quantity(low, unit), "high": Self::quantity(high, unit)}],
            });
            if let Some((flag, text)) = interpretation {
                extra["interpretation"] = json!([{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": flag, "display": text}]}]);
            }
            let (id, _) = self.observation(
                "laboratory",
                (a_code, a_display),
                date,
                Some(encounter),
                extra,
            );
            results.push(json!({ "reference": format!("Observation/{id}") }));
        }
        let id = self.id("drp");
        let when = self.date_time(days_after(date, 1).min(self.today));
        let resource = json!({
            "resourceType": "DiagnosticReport", "id": id, "meta": Self::meta("DiagnosticReport"),
            "status": "final",
            "category": [{"coding": [{"system": vocab::DIAGNOSTIC_SERVICE, "code": service}]}],
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
            "subject": self.patient_ref,
            "encounter": {"reference": format!("Encounter/{encounter}")},
            "effectiveDateTime": when,
            "issued": when,
            "performer": [{"identifier": {"system": ODS_SYSTEM, "value": "RVW"},
                "display": "North Tees and Hartlepool NHS Foundation Trust Pathology"}],
            "result": results,
        });
        self.push(resource);
    }

    fn referral(
        &mut self,
        date: Date,
        encounter: Option<&str>,
        reason: Option<&str>,
        referral: (&str, &str, &str, &str),
        text: Option<&str>,
    ) -> usize {
        let (code, display, ods, organisation) = referral;
        let id = self.id("srq");
        let requester = self.gp();
        let when = self.date_time(date);
        let done = (self.today - date).whole_days() > 120;
        let mut resource = json!({
            "resourceType": "ServiceRequest", "id": id, "meta": Self::meta("ServiceRequest"),
            "status": if done { "completed" } else { "active" },
            "intent": "order",
            "priority": if self.rng.gen_bool(0.15) { "urgent" } else { "routine" },
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
            "subject": self.patient_ref,
            "authoredOn": when,
            "requester": requester,
            "performer": [{"identifier": {"system": ODS_SYSTEM, "value": ods}, "display": organisation}],
        });
        if let Some(text) = text {
            resource["code"]["text"] = json!(text);
        }
        if let Some(encounter) = encounter {
            resource["encounter"] = json!({ "reference": format!("Encounter/{encounter}") });
        }
        if let Some(reason) = reason {
            resource["reasonReference"] = json!([{ "reference": format!("Condition/{reason}") }]);
        }
        self.push(resource)
    }

    fn procedure(
        &mut self,
        code: Code,
        date: Date,
        encounter: Option<&str>,
        reason: Option<&str>,
    ) -> usize {
        let id = self.id("prc");
        let performer = self.gp();
        let when = self.date_time(date);
        let mut resource = json!({
            "resourceType": "Procedure", "id": id, "meta": Self::meta("Procedure"),
            "status": "completed",
            "code": {"coding": [snomed(code)]},
            "subject": self.patient_ref,
            "performedDateTime": when,
            "performer": [{"actor": performer}],
        });
        if let Some(encounter) = encounter {
            resource["encounter"] = json!({ "reference": format!("Encounter/{encounter}") });
        }
        if let Some(reason) = reason {
            resource["reasonReference"] = json!([{ "reference": format!("Condition/{reason}") }]);
        }
        self.push(resource)
    }

    /// One consultation and what came of it.
    fn consultation(&mut self, long_term: &[(String, Date, usize)]) {
        // Weighted to recent years: most records are busier lately.
        let span = (self.today - self.history_start).whole_days().max(1);
        let back = (span as f64 * self.rng.gen::<f64>().powf(1.6)) as i64;
        let date = days_before(self.today, back);
        let (encounter, _) = self.encounter(date);
        let hypertensive = long_term.iter().any(|(_, _, i)| *i == 0);
        if self.rng.gen_bool(0.5) {
            self.vitals(date, &encounter, hypertensive);
        }
        if self.rng.gen_bool(if self.age >= 45 { 0.25 } else { 0.12 }) {
            self.lab_report(date, &encounter);
        }
        if self.rng.gen_bool(0.35) {
            let (code, medicine) = self.pick(vocab::ACUTE_PROBLEMS);
            let status = if (self.today - date).whole_days() > 30 {
                "resolved"
            } else {
                "active"
            };
            let condition = self.condition(code, date, status, Some(&encounter));
            if let Some(medicine) = medicine.and_then(vocab::medicine) {
                if self.rng.gen_bool(0.7) {
                    self.medication_course(Course {
                        medicine,
                        start: date,
                        issues: 1,
                        interval_days: 7,
                        reason: Some(&condition),
                        repeat: false,
                        stopped: false,
                    });
                }
            }
        }
        if self.rng.gen_bool(0.04) {
            let reason = long_term
                .get(self.rng.gen_range(0..long_term.len().max(1)))
                .map(|(id, _, _)| id.clone());
            let referral = self.pick(vocab::REFERRALS);
            self.referral(date, Some(&encounter), reason.as_deref(), referral, None);
        }
        if self.rng.gen_bool(0.02) {
            let (code, display, min_age) = self.pick(vocab::PROCEDURES);
            let sex_ok = match code {
                "171149006" | "65200003" | "11466000" => self.sex == Sex::Female,
                "22523008" => self.sex == Sex::Male,
                _ => true,
            };
            if sex_ok && self.age >= i64::from(min_age) {
                self.procedure((code, display), date, Some(&encounter), None);
            }
        }
        if self.age >= 16 && self.rng.gen_bool(0.03) {
            let status = self.pick(vocab::SMOKING_STATUS);
            self.observation("social-history", status, date, Some(&encounter), json!({}));
        }
        if long_term.iter().any(|(_, _, i)| *i == 3) && self.rng.gen_bool(0.1) {
            let flow = (420.0 + 60.0 * standard_normal(&mut self.rng)).round();
            self.observation(
                "vital-signs",
                vocab::PEAK_FLOW,
                date,
                Some(&encounter),
                json!({"valueQuantity": Self::quantity(flow, "L/min")}),
            );
        }
    }

    /// One period of sickness: a condition and one to four fit notes, each issued the day the
    /// one before ends (SPEC §12: `effectiveDateTime` is the day issued). Over the last five
    /// years, while the patient was 16 or older. Reasons, durations and "may be fit" advice in
    /// roughly the proportions NHS England publishes: mental and behavioural about a third of
    /// notes with a diagnosis, musculoskeletal about a sixth, "may be fit" about 7%, and about
    /// one note in ten with no diagnosis recorded.
    fn fit_note_episode(&mut self) {
        const REASONS: &[Code] = &[
            ("73595000", "Stress"),
            ("73595000", "Stress"),
            ("197480006", "Anxiety disorder"),
            ("35489007", "Depressive disorder"),
            ("231504006", "Mixed anxiety and depressive disorder"),
            ("279039007", "Low back pain"),
            ("161891005", "Backache"),
            ("57676002", "Joint pain"),
            ("125605004", "Fracture of bone"),
            ("44465007", "Sprain of ankle"),
            ("50417007", "Lower respiratory tract infection"),
            ("840539006", "COVID-19"),
            ("25374005", "Gastroenteritis"),
            ("37796009", "Migraine"),
            ("254837009", "Malignant neoplasm of breast"),
            ("22298006", "Myocardial infarction"),
            ("51885006", "Morning sickness"),
            ("84229001", "Fatigue"),
        ];
        let earliest = self
            .history_start
            .max(days_before(self.today, 5 * 365))
            .max(days_after(self.birth, 16 * 365 + 4));
        let latest = days_before(self.today, 5);
        if earliest >= latest {
            return;
        }
        let mut date = self.random_date(earliest, latest);
        let (encounter, _) = self.encounter(date);
        let reason = if self.rng.gen_range(0..10) == 0 {
            None
        } else {
            let reason = self.pick(REASONS);
            Some((
                reason,
                self.condition(reason, date, "active", Some(&encounter)),
            ))
        };
        let notes = self.pick(&[1, 1, 1, 2, 2, 3, 4]);
        for n in 0..notes {
            let seen = if n == 0 {
                encounter.clone()
            } else {
                self.encounter(date).0
            };
            let duration: i64 =
                self.pick(&[7, 7, 14, 14, 14, 14, 28, 28, 28, 28, 28, 56, 56, 90, 180]);
            let cited = reason.as_ref().map(|(code, id)| (*code, id.as_str()));
            self.fit_note(date, &seen, cited, duration);
            date = days_after(date, duration);
            if date > latest {
                break;
            }
        }
    }

    fn fit_note(
        &mut self,
        date: Date,
        encounter: &str,
        reason: Option<(Code, &str)>,
        duration: i64,
    ) {
        let may_be_fit = self.rng.gen_range(0..100) < 7;
        let advice = |rng: &mut ChaCha8Rng| may_be_fit && rng.gen_bool(0.5);
        let boxes = [
            ("phased-return", advice(&mut self.rng)),
            ("altered-hours", advice(&mut self.rng)),
            ("amended-duties", advice(&mut self.rng)),
            ("workplace-adaptations", advice(&mut self.rng)),
        ];
        let mut components = vec![
            json!({"code": {"coding": [{"system": vocab::FIT_NOTE_SYSTEM, "code": "fitness"}]},
                "valueCodeableConcept": {"coding": [{"system": vocab::FIT_NOTE_SYSTEM,
                    "code": if may_be_fit { "may-be-fit" } else { "unfit" }}]}}),
            json!({"code": {"coding": [{"system": vocab::FIT_NOTE_SYSTEM, "code": "duration"}]},
                "valueQuantity": {"value": duration, "unit": "days", "system": vocab::UCUM, "code": "d"}}),
        ];
        if let Some((code, _)) = reason {
            components.push(
                json!({"code": {"coding": [{"system": vocab::FIT_NOTE_SYSTEM, "code": "condition"}]},
                    "valueCodeableConcept": {"coding": [snomed(code)]}}),
            );
        }
        for (code, value) in boxes {
            components.push(json!({
                "code": {"coding": [{"system": vocab::FIT_NOTE_SYSTEM, "code": code}]},
                "valueBoolean": value,
            }));
        }
        let id = self.id("obs");
        let performer = self.gp();
        let mut resource = json!({
            "resourceType": "Observation", "id": id, "meta": Self::meta("Observation"),
            "status": "final",
            "code": {"coding": [snomed(vocab::FIT_NOTE)]},
            "subject": self.patient_ref,
            "encounter": {"reference": format!("Encounter/{encounter}")},
            "effectiveDateTime": self.date_time(date),
            "performer": [performer],
            "component": components,
        });
        if let Some((_, condition)) = reason {
            resource["focus"] = json!([{"reference": format!("Condition/{condition}")}]);
        }
        self.push(resource);
    }

    fn sensitive_items(&mut self, plan: &Plan) {
        for item in &plan.sensitive {
            let category = item.category;
            let female_only = matches!(
                category.refset_id,
                vocab::TERMINATION_OF_PREGNANCY_REFSET | vocab::ASSISTED_FERTILISATION_REFSET
            );
            if female_only && self.sex != Sex::Female {
                continue;
            }
            let date = days_before(self.today, self.rng.gen_range(60..2500));
            let date = date.max(days_after(self.birth, 16 * 365));
            let (encounter, _) = self.encounter(date);
            if item.by_code {
                let concept = match (category.refset_id, self.sex) {
                    // Recorded gender follows the patient's identity: a trans woman is female.
                    (vocab::GENDER_REFSET, Sex::Female) => {
                        self.pick(&[vocab::GENDER_CONCEPTS[0], vocab::GENDER_CONCEPTS[2]])
                    }
                    (vocab::GENDER_REFSET, Sex::Male) => {
                        self.pick(&[vocab::GENDER_CONCEPTS[0], vocab::GENDER_CONCEPTS[1]])
                    }
                    _ => self.pick(category.concepts),
                };
                match category.refset_id {
                    vocab::STI_REFSET | vocab::GENDER_REFSET => {
                        let condition = self.condition(concept, date, "active", Some(&encounter));
                        // A prescription for a sensitive condition must be withheld with it.
                        let medicine = if category.refset_id == vocab::STI_REFSET {
                            "324357001"
                        } else {
                            "325551000"
                        };
                        if let Some(medicine) = vocab::medicine(medicine) {
                            let repeat = category.refset_id == vocab::GENDER_REFSET;
                            let issues = if repeat { 6 } else { 1 };
                            self.medication_course(Course {
                                medicine,
                                start: date,
                                issues,
                                interval_days: 28,
                                reason: Some(&condition),
                                repeat,
                                stopped: false,
                            });
                        }
                    }
                    _ => {
                        self.procedure(concept, date, Some(&encounter), None);
                    }
                }
            }
            if item.by_label {
                // Recorded with generic codes: only the label says what these are.
                let label_date = days_after(date, 14).min(self.today);
                let (labelled_encounter, encounter_index) = self.encounter(label_date);
                self.sensitive_label(encounter_index, &category);
                let (text, medicine) = match category.refset_id {
                    vocab::STI_REFSET => ("Referral to sexual health clinic", Some("326425006")),
                    vocab::GENDER_REFSET => ("Referral to gender identity clinic", None),
                    vocab::TERMINATION_OF_PREGNANCY_REFSET => {
                        ("Referral to pregnancy advisory service", None)
                    }
                    _ => ("Referral to fertility clinic", Some("325446002")),
                };
                let referral = (
                    "306206005",
                    "Referral to service",
                    "RVW",
                    "North Tees and Hartlepool NHS Foundation Trust",
                );
                let index = self.referral(
                    label_date,
                    Some(&labelled_encounter),
                    None,
                    referral,
                    Some(text),
                );
                self.sensitive_label(index, &category);
                if let Some(medicine) = medicine.and_then(vocab::medicine) {
                    let (plan, statement) = self.medication_course(Course {
                        medicine,
                        start: label_date,
                        issues: 1,
                        interval_days: 28,
                        reason: None,
                        repeat: false,
                        stopped: false,
                    });
                    self.sensitive_label(plan, &category);
                    self.sensitive_label(statement, &category);
                    // The issued order is labelled too, as the clinical system would do.
                    self.sensitive_label(statement + 1, &category);
                }
            }
        }
    }

    fn confidential_items(&mut self) {
        // A safeguarding-related consultation, restricted by the practice, and a prescription
        // that cites it (so it must be withheld with it).
        let date = days_before(self.today, self.rng.gen_range(30..900));
        let (encounter, encounter_index) = self.encounter(date);
        self.confidentiality_label(encounter_index, "R");
        let condition = self.condition(
            ("35489007", "Depressive disorder"),
            date,
            "active",
            Some(&encounter),
        );
        let condition_index = self.out.len() - 1;
        self.confidentiality_label(condition_index, "R");
        if let Some(medicine) = vocab::medicine("321949006") {
            self.medication_course(Course {
                medicine,
                start: date,
                issues: 2,
                interval_days: 28,
                reason: Some(&condition),
                repeat: false,
                stopped: false,
            });
        }
        let later = days_after(date, 21).min(self.today);
        let (_, very_restricted) = self.encounter(later);
        self.confidentiality_label(very_restricted, "V");
    }

    fn end_of_life(&mut self) {
        let date = days_before(self.today, self.rng.gen_range(10..300));
        let (encounter, _) = self.encounter(date);
        let reason = self
            .conditions
            .last()
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| self.condition(("52448006", "Dementia"), date, "active", None));
        let id = self.id("cpl");
        let author = self.gp();
        let when = self.date_time(date);
        let resource = json!({
            "resourceType": "CarePlan", "id": id, "meta": Self::meta("CarePlan"),
            "status": "active",
            "intent": "plan",
            "category": [
                {"coding": [snomed(vocab::END_OF_LIFE_CARE_PLAN)]},
                {"coding": [snomed(vocab::ADVANCE_CARE_PLAN)]},
            ],
            "title": "Anticipatory care plan",
            "description": "Preferred place of care and death: home. Family aware of prognosis. \
                Anticipatory medicines in the home. DNACPR form held at home.",
            "subject": self.patient_ref,
            "encounter": {"reference": format!("Encounter/{encounter}")},
            "period": {"start": date_text(date)},
            "created": when,
            "author": author,
            "addresses": [{"reference": format!("Condition/{reason}")}],
            "activity": [{"detail": {"code": {"coding": [snomed(vocab::NOT_FOR_RESUSCITATION)]},
                "status": "in-progress"}}],
        });
        self.push(resource);
        for code in ["322303006", "323052003"] {
            if let Some(medicine) = vocab::medicine(code) {
                self.medication_course(Course {
                    medicine,
                    start: date,
                    issues: 1,
                    interval_days: 28,
                    reason: Some(&reason),
                    repeat: false,
                    stopped: false,
                });
            }
        }
        let referral = (
            "306206005",
            "Referral to service",
            "RX3",
            "Community palliative care team",
        );
        self.referral(
            date,
            Some(&encounter),
            Some(&reason),
            referral,
            Some("Referral to community palliative care"),
        );
    }

    fn communication_flag(&mut self, flag: usize) {
        let Some(&(system, code, display)) = vocab::COMMUNICATION_FLAGS.get(flag) else {
            return;
        };
        let id = self.id("flg");
        let author = self.clinician("hca");
        let start = self.random_date(self.history_start, self.today);
        let resource = json!({
            "resourceType": "Flag", "id": id, "meta": Self::meta("Flag"),
            "status": "active",
            "category": [{"coding": [{"system": vocab::FLAG_CATEGORY, "code": "admin",
                "display": "Administrative"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": self.patient_ref,
            "period": {"start": date_text(start)},
            "author": author,
        });
        self.push(resource);
    }
}

impl Builder<'_> {
    /// Items whose section their codes decide (SPEC §4): a resolved allergy, a safety
    /// warning, a care plan that is not end-of-life care.
    fn filed_by_code(&mut self, plan: &Plan) {
        if plan.resolved_allergy {
            self.allergy(true);
        }
        if let Some(warning) = plan.risk_warning {
            self.risk_warning(warning);
        }
        if let Some(care_plan) = plan.other_care_plan {
            self.other_care_plan(care_plan);
        }
    }

    fn risk_warning(&mut self, warning: usize) {
        let Some(&(category, text)) = vocab::RISK_WARNINGS.get(warning) else {
            return;
        };
        let id = self.id("flg");
        let author = self.gp();
        let start = self.random_date(self.history_start, self.today);
        let resource = json!({
            "resourceType": "Flag", "id": id, "meta": Self::meta("Flag"),
            "status": "active",
            "category": [{"coding": [{"system": vocab::FLAG_CATEGORY, "code": category}]}],
            "code": {"text": text},
            "subject": self.patient_ref,
            "period": {"start": date_text(start)},
            "author": author,
        });
        self.push(resource);
    }

    fn other_care_plan(&mut self, care_plan: usize) {
        let Some(&(category, title)) = vocab::OTHER_CARE_PLANS.get(care_plan) else {
            return;
        };
        let id = self.id("cpl");
        let author = self.gp();
        let date = self.random_date(self.history_start, self.today);
        let when = self.date_time(date);
        let resource = json!({
            "resourceType": "CarePlan", "id": id, "meta": Self::meta("CarePlan"),
            "status": "active",
            "intent": "plan",
            "category": [{"coding": [snomed(category)]}],
            "title": title,
            "subject": self.patient_ref,
            "period": {"start": date_text(date)},
            "created": when,
            "author": author,
        });
        self.push(resource);
    }
}

fn snomed(code: Code) -> Value {
    json!({ "system": SNOMED, "code": code.0, "display": code.1 })
}
