//! The clinical vocabulary the synthetic practice draws on: SNOMED CT concepts, dm+d products,
//! NHS code systems, and the concepts of each sensitive category (SPEC §6), public for checking.
//!
//! The codes SPEC names (refset ids, consent categories, the fit-note code) are exact. The other
//! SNOMED and dm+d ids were chosen to look like a real GP record; they are test data, not a
//! terminology server, and must not be used for anything clinical.

/// A code and its display text.
pub type Code = (&'static str, &'static str);

pub const GENDER_REFSET: &str = "999004351000000109";
pub const ASSISTED_FERTILISATION_REFSET: &str = "999004371000000100";
pub const TERMINATION_OF_PREGNANCY_REFSET: &str = "999004361000000107";
pub const STI_REFSET: &str = "999004381000000103";

/// One of the four NHS sensitive-information exclusion refsets, with the concepts the
/// generator records for it "by code only" (no `meta.security` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensitiveCategory {
    /// Short name used in the demo-patient list and test output.
    pub name: &'static str,
    pub refset_id: &'static str,
    /// Concepts that belong to the category; the policy's shipped concept list must hold these.
    pub concepts: &'static [Code],
}

pub const GENDER_CONCEPTS: &[Code] = &[
    ("93461009", "Gender dysphoria"),
    ("407377005", "Female-to-male transsexual"),
    ("407376001", "Male-to-female transsexual"),
];
pub const ASSISTED_FERTILISATION_CONCEPTS: &[Code] = &[("52637005", "In vitro fertilisation")];
pub const TERMINATION_OF_PREGNANCY_CONCEPTS: &[Code] = &[
    ("386639001", "Termination of pregnancy"),
    ("57797005", "Induced termination of pregnancy"),
];
pub const STI_CONCEPTS: &[Code] = &[
    ("105629000", "Chlamydial infection"),
    ("15628003", "Gonorrhoea"),
    ("33839006", "Genital herpes simplex"),
    ("76272004", "Syphilis"),
];

pub const GENDER: SensitiveCategory = SensitiveCategory {
    name: "gender",
    refset_id: GENDER_REFSET,
    concepts: GENDER_CONCEPTS,
};
pub const ASSISTED_FERTILISATION: SensitiveCategory = SensitiveCategory {
    name: "assisted-fertilisation",
    refset_id: ASSISTED_FERTILISATION_REFSET,
    concepts: ASSISTED_FERTILISATION_CONCEPTS,
};
pub const TERMINATION_OF_PREGNANCY: SensitiveCategory = SensitiveCategory {
    name: "termination-of-pregnancy",
    refset_id: TERMINATION_OF_PREGNANCY_REFSET,
    concepts: TERMINATION_OF_PREGNANCY_CONCEPTS,
};
pub const STI: SensitiveCategory = SensitiveCategory {
    name: "sti",
    refset_id: STI_REFSET,
    concepts: STI_CONCEPTS,
};

/// The four categories, in SPEC §6 order.
pub const SENSITIVE_CATEGORIES: [SensitiveCategory; 4] = [
    GENDER,
    ASSISTED_FERTILISATION,
    TERMINATION_OF_PREGNANCY,
    STI,
];

// Consent and preference codes (SPEC §6).
pub const CONSENT_SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub const LOINC: &str = "http://loinc.org";
pub const PATIENT_CONSENT_LOINC: Code = ("59284-0", "Patient Consent");
pub const SNOMED_DISSENT: Code = (
    "416409005",
    "Refused consent for upload to local shared electronic record",
);
pub const SNOMED_CONSENT_CORE: Code = (
    "417528008",
    "Consent given for upload to local shared electronic record",
);
pub const STANDING_THIRD_PARTY_CONSENT: Code = (
    "319951000000105",
    "Consent given to share patient data with specified third party",
);
pub const TYPE1_OPT_OUT: Code = (
    "827241000000103",
    "Dissent from secondary use of general practitioner patient identifiable data",
);
/// SPEC §12: the fit-note Observation code.
pub const FIT_NOTE: Code = ("1331000000103", "Med3 certificate issued to patient");
/// Components of a fit-note Observation (codes in this system): `fitness` (valueCodeableConcept
/// `unfit` / `may-be-fit` in the same system), `duration` (valueQuantity, days), `condition`
/// (valueCodeableConcept, SNOMED) and the advice boxes `phased-return`, `altered-hours`,
/// `amended-duties`, `workplace-adaptations` (valueBoolean).
pub const FIT_NOTE_SYSTEM: &str = "urn:mig:fit-note";

// Other code systems.
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
pub const CONDITION_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/condition-ver-status";
pub const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
pub const ALLERGY_CLINICAL: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
pub const ALLERGY_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const COURSE_OF_THERAPY: &str =
    "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy";
pub const FLAG_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/flag-category";
pub const DIAGNOSTIC_SERVICE: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
pub const HUMAN_LANGUAGE: &str = "https://fhir.hl7.org.uk/CodeSystem/UKCore-HumanLanguage";
pub const INTERPRETER_REQUIRED_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/patient-interpreterRequired";

/// A medicinal product (dm+d VMP) as the practice prescribes it.
#[derive(Debug, Clone, Copy)]
pub struct Medicine {
    pub code: &'static str,
    pub display: &'static str,
    pub dose: &'static str,
    pub quantity: u32,
    pub unit: &'static str,
}

const fn med(
    code: &'static str,
    display: &'static str,
    dose: &'static str,
    quantity: u32,
    unit: &'static str,
) -> Medicine {
    Medicine {
        code,
        display,
        dose,
        quantity,
        unit,
    }
}

/// Every product the practice prescribes; each becomes one shared `Medication` resource.
pub const MEDICINES: &[Medicine] = &[
    // Long-term (repeat) medicines.
    med(
        "319283006",
        "Amlodipine 5mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "318906001",
        "Ramipril 10mg capsules",
        "One capsule once a day",
        28,
        "capsule",
    ),
    med(
        "318858005",
        "Lisinopril 10mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "318590006",
        "Bisoprolol 2.5mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "320000009",
        "Simvastatin 40mg tablets",
        "One tablet at night",
        28,
        "tablet",
    ),
    med(
        "320029005",
        "Atorvastatin 20mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "325278007",
        "Metformin 500mg tablets",
        "One tablet twice a day with food",
        56,
        "tablet",
    ),
    med(
        "325245005",
        "Gliclazide 80mg tablets",
        "One tablet twice a day",
        56,
        "tablet",
    ),
    med(
        "320176004",
        "Salbutamol 100micrograms/dose inhaler CFC free",
        "Two puffs when required",
        1,
        "inhaler",
    ),
    med(
        "320111004",
        "Beclometasone 100micrograms/dose inhaler CFC free",
        "Two puffs twice a day",
        1,
        "inhaler",
    ),
    med(
        "321987003",
        "Citalopram 20mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "321949006",
        "Sertraline 50mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "317335000",
        "Omeprazole 20mg gastro-resistant capsules",
        "One capsule once a day",
        28,
        "capsule",
    ),
    med(
        "317341005",
        "Lansoprazole 30mg gastro-resistant capsules",
        "One capsule once a day",
        28,
        "capsule",
    ),
    med(
        "315254009",
        "Levothyroxine sodium 100microgram tablets",
        "One tablet in the morning",
        28,
        "tablet",
    ),
    med(
        "319773006",
        "Aspirin 75mg dispersible tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "703907008",
        "Apixaban 5mg tablets",
        "One tablet twice a day",
        56,
        "tablet",
    ),
    med(
        "317972000",
        "Furosemide 40mg tablets",
        "One tablet in the morning",
        28,
        "tablet",
    ),
    med(
        "322280009",
        "Co-codamol 30mg/500mg tablets",
        "One or two tablets up to four times a day",
        100,
        "tablet",
    ),
    med(
        "321697005",
        "Donepezil 10mg tablets",
        "One tablet at night",
        28,
        "tablet",
    ),
    med(
        "324430000",
        "Alendronic acid 70mg tablets",
        "One tablet once a week",
        4,
        "tablet",
    ),
    med(
        "330765009",
        "Tiotropium 18microgram inhalation powder capsules",
        "Inhale one capsule once a day",
        30,
        "capsule",
    ),
    med(
        "319930009",
        "Sodium valproate 200mg gastro-resistant tablets",
        "Two tablets twice a day",
        112,
        "tablet",
    ),
    med(
        "321153001",
        "Sumatriptan 50mg tablets",
        "One tablet at onset of migraine",
        6,
        "tablet",
    ),
    med(
        "330231000",
        "Levodopa 100mg / Carbidopa 25mg tablets",
        "One tablet three times a day",
        84,
        "tablet",
    ),
    med(
        "326958005",
        "Methotrexate 2.5mg tablets",
        "Four tablets once a week on the same day",
        16,
        "tablet",
    ),
    // Acute medicines.
    med(
        "322236009",
        "Paracetamol 500mg tablets",
        "Two tablets up to four times a day",
        32,
        "tablet",
    ),
    med(
        "329652003",
        "Ibuprofen 400mg tablets",
        "One tablet three times a day with food",
        24,
        "tablet",
    ),
    med(
        "323509004",
        "Amoxicillin 250mg capsules",
        "One capsule three times a day",
        21,
        "capsule",
    ),
    med(
        "323583000",
        "Flucloxacillin 500mg capsules",
        "One capsule four times a day",
        28,
        "capsule",
    ),
    med(
        "317908000",
        "Nitrofurantoin 100mg modified-release capsules",
        "One capsule twice a day",
        6,
        "capsule",
    ),
    med(
        "324357001",
        "Doxycycline 100mg capsules",
        "One capsule twice a day",
        14,
        "capsule",
    ),
    med(
        "326087004",
        "Prednisolone 5mg tablets",
        "Six tablets once a day in the morning",
        30,
        "tablet",
    ),
    med(
        "324095003",
        "Clarithromycin 500mg tablets",
        "One tablet twice a day",
        14,
        "tablet",
    ),
    med(
        "331646005",
        "Hydrocortisone 1% cream",
        "Apply thinly twice a day",
        15,
        "gram",
    ),
    // Anticipatory (end-of-life) medicines.
    med(
        "322303006",
        "Morphine sulfate 10mg/5ml oral solution",
        "2.5ml to 5ml every four hours when required",
        100,
        "ml",
    ),
    med(
        "323052003",
        "Midazolam 10mg/2ml solution for injection ampoules",
        "2.5mg to 5mg subcutaneously when required",
        10,
        "ampoule",
    ),
    // Medicines recorded for sensitive care.
    med(
        "325551000",
        "Estradiol 2mg tablets",
        "One tablet once a day",
        28,
        "tablet",
    ),
    med(
        "326425006",
        "Azithromycin 500mg tablets",
        "Two tablets as a single dose",
        2,
        "tablet",
    ),
    med(
        "325446002",
        "Clomifene 50mg tablets",
        "One tablet once a day on days 2 to 6 of the cycle",
        5,
        "tablet",
    ),
];

pub fn medicine(code: &str) -> Option<&'static Medicine> {
    MEDICINES.iter().find(|m| m.code == code)
}

/// A long-term condition: who gets it (prevalence per thousand by age band) and its repeats.
#[derive(Debug, Clone, Copy)]
pub struct LongTermCondition {
    pub code: Code,
    /// Per thousand patients aged 0-17, 18-44, 45-64, 65-79, 80+.
    pub per_mille: [u16; 5],
    /// dm+d codes of its repeat medicines.
    pub medicines: &'static [&'static str],
}

const fn ltc(
    code: &'static str,
    display: &'static str,
    per_mille: [u16; 5],
    medicines: &'static [&'static str],
) -> LongTermCondition {
    LongTermCondition {
        code: (code, display),
        per_mille,
        medicines,
    }
}

pub const LONG_TERM_CONDITIONS: &[LongTermCondition] = &[
    ltc(
        "38341003",
        "Hypertension",
        [0, 40, 250, 520, 650],
        &["319283006", "318906001"],
    ),
    ltc(
        "44054006",
        "Type 2 diabetes mellitus",
        [1, 20, 110, 200, 220],
        &["325278007", "325245005"],
    ),
    ltc("46635009", "Type 1 diabetes mellitus", [3, 5, 5, 5, 4], &[]),
    ltc(
        "195967001",
        "Asthma",
        [90, 80, 70, 70, 60],
        &["320176004", "320111004"],
    ),
    ltc(
        "13645005",
        "Chronic obstructive pulmonary disease",
        [0, 3, 40, 100, 120],
        &["320176004", "330765009"],
    ),
    ltc(
        "35489007",
        "Depressive disorder",
        [10, 140, 150, 110, 90],
        &["321987003", "321949006"],
    ),
    ltc("197480006", "Anxiety disorder", [20, 100, 90, 60, 40], &[]),
    ltc(
        "49436004",
        "Atrial fibrillation",
        [0, 2, 20, 100, 200],
        &["703907008", "318590006"],
    ),
    ltc(
        "53741008",
        "Coronary heart disease",
        [0, 3, 40, 150, 250],
        &["319773006", "320000009"],
    ),
    ltc(
        "84114007",
        "Heart failure",
        [0, 1, 10, 50, 130],
        &["317972000", "318590006"],
    ),
    ltc(
        "709044004",
        "Chronic kidney disease",
        [0, 5, 30, 150, 350],
        &[],
    ),
    ltc(
        "40930008",
        "Hypothyroidism",
        [2, 20, 50, 90, 110],
        &["315254009"],
    ),
    ltc(
        "55822004",
        "Hyperlipidaemia",
        [0, 20, 150, 250, 250],
        &["320029005"],
    ),
    ltc(
        "396275006",
        "Osteoarthritis",
        [0, 10, 100, 300, 450],
        &["322280009"],
    ),
    ltc(
        "64859006",
        "Osteoporosis",
        [0, 2, 30, 100, 200],
        &["324430000"],
    ),
    ltc(
        "69896004",
        "Rheumatoid arthritis",
        [0, 5, 15, 25, 25],
        &["326958005"],
    ),
    ltc(
        "235595009",
        "Gastro-oesophageal reflux disease",
        [5, 50, 100, 150, 180],
        &["317335000", "317341005"],
    ),
    ltc("84757009", "Epilepsy", [8, 8, 8, 10, 10], &["319930009"]),
    ltc(
        "37796009",
        "Migraine",
        [20, 100, 60, 20, 10],
        &["321153001"],
    ),
    ltc("52448006", "Dementia", [0, 0, 5, 40, 200], &["321697005"]),
    ltc(
        "49049000",
        "Parkinson's disease",
        [0, 0, 3, 15, 30],
        &["330231000"],
    ),
    ltc("230690007", "Stroke", [0, 2, 15, 60, 120], &["319773006"]),
    ltc("414916001", "Obesity", [40, 200, 280, 250, 150], &[]),
    ltc(
        "24079001",
        "Atopic dermatitis",
        [120, 40, 20, 15, 10],
        &["331646005"],
    ),
    ltc(
        "254837009",
        "Malignant neoplasm of breast",
        [0, 3, 20, 40, 50],
        &[],
    ),
    ltc(
        "399068003",
        "Malignant tumour of prostate",
        [0, 0, 10, 50, 90],
        &[],
    ),
];

/// Short illnesses recorded at a consultation, with the acute medicine usually given.
pub const ACUTE_PROBLEMS: &[(Code, Option<&str>)] = &[
    (("43878008", "Streptococcal sore throat"), Some("323509004")),
    (("444814009", "Viral sinusitis"), None),
    (("10509002", "Acute bronchitis"), Some("324095003")),
    (("68566005", "Urinary tract infection"), Some("317908000")),
    (("65363002", "Otitis media"), Some("323509004")),
    (("279039007", "Low back pain"), Some("329652003")),
    (("25064002", "Headache"), Some("322236009")),
    (("128045006", "Cellulitis"), Some("323583000")),
    (("233604007", "Pneumonia"), Some("324095003")),
    (("6142004", "Influenza"), None),
    (("840539006", "COVID-19"), None),
    (("62315008", "Diarrhoea"), None),
    (("271807003", "Eruption of skin"), Some("331646005")),
    (("57676002", "Joint pain"), Some("329652003")),
    (("73595000", "Stress"), None),
    (("195662009", "Acute viral pharyngitis"), Some("322236009")),
    (
        ("232209001", "Acute exacerbation of asthma"),
        Some("326087004"),
    ),
];

/// Encounter types: (code, display, v3 ActCode class).
pub const ENCOUNTER_TYPES: &[(&str, &str, &str)] = &[
    ("11429006", "Consultation", "AMB"),
    ("11429006", "Consultation", "AMB"),
    ("185317003", "Telephone encounter", "VR"),
    ("390906007", "Follow-up encounter", "AMB"),
    ("439708006", "Home visit", "HH"),
];

/// Allergies and adverse reactions: (code, display, category, criticality).
pub const ALLERGIES: &[(&str, &str, &str, &str)] = &[
    ("91936005", "Allergy to penicillin", "medication", "high"),
    ("91936005", "Allergy to penicillin", "medication", "high"),
    ("293586001", "Allergy to aspirin", "medication", "low"),
    ("91935009", "Allergy to peanuts", "food", "high"),
    ("91934008", "Allergy to nuts", "food", "high"),
    ("91930004", "Allergy to eggs", "food", "low"),
    ("300913006", "Shellfish allergy", "food", "high"),
    ("425525006", "Allergy to dairy product", "food", "low"),
    ("418689008", "Allergy to grass pollen", "environment", "low"),
    ("232350006", "House dust mite allergy", "environment", "low"),
    ("232347008", "Dander (animal) allergy", "environment", "low"),
    ("300916003", "Latex allergy", "environment", "high"),
];

pub const ALLERGY_REACTIONS: &[Code] = &[
    ("271807003", "Eruption of skin"),
    ("247472004", "Weal"),
    ("39579001", "Anaphylaxis"),
    ("267036007", "Dyspnoea"),
    ("422587007", "Nausea"),
    ("418290006", "Itching"),
];

pub const FLU_VACCINATION: Code = ("822851000000102", "Seasonal influenza vaccination");
pub const COVID_VACCINATIONS: &[Code] = &[
    (
        "1324681000000101",
        "Administration of first dose of SARS-CoV-2 vaccine",
    ),
    (
        "1324691000000104",
        "Administration of second dose of SARS-CoV-2 vaccine",
    ),
    (
        "1362591000000103",
        "Immunisation course to maintain protection against SARS-CoV-2",
    ),
];
/// Childhood schedule: (code, display, age in weeks, first year given at that age in England).
pub const CHILDHOOD_IMMUNISATIONS: &[(&str, &str, u32, i32)] = &[
    ("1082441000000108", "First 6-in-1 vaccination", 8, 2017),
    ("1082451000000106", "Second 6-in-1 vaccination", 12, 2017),
    ("1082461000000109", "Third 6-in-1 vaccination", 16, 2017),
    (
        "38598009",
        "Measles, mumps and rubella vaccination",
        52,
        1988,
    ),
    (
        "170433008",
        "Second measles, mumps and rubella vaccination",
        172,
        1996,
    ),
];
pub const ADULT_IMMUNISATIONS: &[Code] = &[
    ("12866006", "Pneumococcal vaccination"),
    ("859641000000109", "Shingles vaccination"),
    ("16584000", "Hepatitis B vaccination"),
    ("15483003", "Typhoid vaccination"),
];

/// A laboratory or measurement result: (code, display, UCUM unit, low, high, decimals).
pub type Analyte = (&'static str, &'static str, &'static str, f64, f64, u8);

/// Pathology panels: (code, display, diagnostic service, analytes).
pub const LAB_PANELS: &[(&str, &str, &str, &[Analyte])] = &[
    (
        "26604007",
        "Full blood count",
        "HM",
        &[
            (
                "1022431000000105",
                "Haemoglobin estimation",
                "g/L",
                115.0,
                165.0,
                0,
            ),
            (
                "1022541000000102",
                "Total white blood count",
                "10*9/L",
                4.0,
                11.0,
                1,
            ),
            (
                "1022651000000100",
                "Platelet count",
                "10*9/L",
                150.0,
                400.0,
                0,
            ),
        ],
    ),
    (
        "252167001",
        "Urea and electrolytes",
        "CH",
        &[
            (
                "1000661000000107",
                "Serum sodium level",
                "mmol/L",
                133.0,
                146.0,
                0,
            ),
            (
                "1000651000000109",
                "Serum potassium level",
                "mmol/L",
                3.5,
                5.3,
                1,
            ),
            (
                "1000731000000107",
                "Serum creatinine level",
                "umol/L",
                55.0,
                120.0,
                0,
            ),
            (
                "1011481000000105",
                "eGFR using creatinine (CKD-EPI) per 1.73 square metres",
                "mL/min/{1.73_m2}",
                60.0,
                120.0,
                0,
            ),
        ],
    ),
    (
        "16254007",
        "Lipid panel",
        "CH",
        &[
            (
                "1005671000000105",
                "Serum cholesterol level",
                "mmol/L",
                3.0,
                6.5,
                1,
            ),
            (
                "1005681000000107",
                "Serum HDL cholesterol level",
                "mmol/L",
                0.9,
                2.0,
                1,
            ),
            (
                "1028861000000104",
                "Serum triglycerides level",
                "mmol/L",
                0.5,
                2.3,
                1,
            ),
        ],
    ),
    (
        "43396009",
        "Haemoglobin A1c measurement",
        "CH",
        &[(
            "999791000000106",
            "Haemoglobin A1c level - IFCC standardised",
            "mmol/mol",
            30.0,
            60.0,
            0,
        )],
    ),
    (
        "35650009",
        "Thyroid function test",
        "CH",
        &[
            ("1022791000000101", "Serum TSH level", "mU/L", 0.3, 5.0, 2),
            (
                "1016971000000106",
                "Serum free T4 level",
                "pmol/L",
                10.0,
                22.0,
                1,
            ),
        ],
    ),
];

pub const BLOOD_PRESSURE: Code = ("75367002", "Blood pressure");
pub const SYSTOLIC: Code = ("271649006", "Systolic blood pressure");
pub const DIASTOLIC: Code = ("271650006", "Diastolic blood pressure");
pub const BODY_WEIGHT: Code = ("27113001", "Body weight");
pub const BODY_MASS_INDEX: Code = ("60621009", "Body mass index");
pub const HEART_RATE: Code = ("364075005", "Heart rate");
pub const PEAK_FLOW: Code = ("29893006", "Peak flow rate");
pub const SMOKING_STATUS: &[Code] = &[
    ("266919005", "Never smoked tobacco"),
    ("266919005", "Never smoked tobacco"),
    ("8517006", "Ex-smoker"),
    ("77176002", "Smoker"),
];

/// Referrals: (code, display, receiving organisation ODS, its name).
pub const REFERRALS: &[(&str, &str, &str, &str)] = &[
    (
        "183519002",
        "Referral to cardiology service",
        "RVW",
        "North Tees and Hartlepool NHS Foundation Trust",
    ),
    (
        "183545006",
        "Referral to orthopaedic service",
        "RTR",
        "South Tees Hospitals NHS Foundation Trust",
    ),
    (
        "183524004",
        "Referral to psychiatry service",
        "RX3",
        "Tees, Esk and Wear Valleys NHS Foundation Trust",
    ),
    (
        "306206005",
        "Referral to service",
        "RVW",
        "North Tees and Hartlepool NHS Foundation Trust",
    ),
    (
        "308447003",
        "Referral to physiotherapist",
        "RVW",
        "North Tees and Hartlepool NHS Foundation Trust",
    ),
];

/// Procedures: (code, display, minimum age).
pub const PROCEDURES: &[(&str, &str, u32)] = &[
    ("171149006", "Cervical screening", 25),
    ("80146002", "Appendicectomy", 8),
    ("38102005", "Cholecystectomy", 30),
    ("73761001", "Colonoscopy", 45),
    ("52734007", "Total hip replacement", 55),
    ("609588000", "Total knee replacement", 55),
    ("232717009", "Coronary artery bypass graft", 55),
    (
        "65200003",
        "Insertion of intrauterine contraceptive device",
        18,
    ),
    ("22523008", "Vasectomy", 28),
    ("11466000", "Caesarean section", 18),
];

pub const END_OF_LIFE_CARE_PLAN: Code = ("736373009", "End of life care plan");
pub const ADVANCE_CARE_PLAN: Code = ("736366004", "Advance care plan");
pub const NOT_FOR_RESUSCITATION: Code = ("304253006", "Not for resuscitation");

/// Communication-preference flags: (system, code, display).
pub const COMMUNICATION_FLAGS: &[(&str, &str, &str)] = &[
    (
        mig_policy::fhir::SNOMED,
        "520471000000105",
        "Requires British Sign Language interpreter",
    ),
    (
        mig_policy::fhir::SNOMED,
        "957331000000109",
        "Requires written information in at least 20 point sans serif font",
    ),
    (mig_policy::fhir::SNOMED, "441092009", "Lip reads"),
    (mig_policy::fhir::SNOMED, "285055002", "Uses a hearing aid"),
    (
        mig_policy::fhir::SNOMED,
        "1082671000000100",
        "Requires aphasia-friendly communication",
    ),
    (
        mig_policy::fhir::SNOMED,
        "520491000000109",
        "Prefers written communication",
    ),
];

/// Safety warnings, filed as risks and warnings (SPEC §4): (flag-category code, text).
pub const RISK_WARNINGS: &[(&str, &str)] = &[
    (
        "behavioral",
        "Risk to staff: verbal aggression towards staff. Two staff on home visits.",
    ),
    ("safety", "Dog at the property: ask for it to be shut away."),
    (
        "safety",
        "Oxygen in use at home: no naked flames, no smoking on visits.",
    ),
];

/// Care plans that are not end-of-life care (not served, SPEC §4): (category, title).
pub const OTHER_CARE_PLANS: &[(Code, &str)] = &[
    (("734163000", "Care plan"), "Asthma action plan"),
    (("734163000", "Care plan"), "Diabetes care plan"),
    (("734163000", "Care plan"), "Falls prevention plan"),
];

/// Organisations a patient may give standing consent to (SPEC §6): social care and carers.
/// Synthetic ODS-style codes, so that demo partners can be registered with them.
pub const THIRD_PARTY_ORGANISATIONS: &[(&str, &str)] = &[
    ("8KL21", "Tees Valley Carers Support (synthetic)"),
    ("8HQ07", "Stockton Home Care Services (synthetic)"),
    ("VNE4T", "Riverside Lodge Care Home (synthetic)"),
];
