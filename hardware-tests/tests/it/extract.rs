//! `migctl extract fit-notes` and `migctl extract verify` (SPEC §12) against a real migd on
//! swtpm: the files, their TPM signature, the audit record, and every refusal.
//!
//! Run: `cargo build --bins && cargo nextest run -p hardware-tests --test extract`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use hardware_tests::appliance::TestAppliance;

fn run(app: &TestAppliance, args: &[&str]) -> (bool, String, String) {
    let output = app.migctl(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs migctl as a recipient would, with no appliance config at all.
fn run_elsewhere(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(hardware_tests::appliance::binary("migctl"))
        .args(["--config", "/nonexistent/migd.toml"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The files in `dir` (temporary files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_signed_fit_note_extract_is_written_audited_verified_and_refused_when_it_should_be() {
    let mut app = TestAppliance::start(300).unwrap();
    let out_dir = app.app.dir.join("extracts");
    std::fs::create_dir_all(&out_dir).unwrap();
    let csv_path = out_dir.join("fit-notes-2026.csv");
    let sig_path = out_dir.join("fit-notes-2026.csv.sig");

    // The synthetic practice's records run to 2026-11-01.
    let (ok, stdout, stderr) = run(
        &app,
        &[
            "extract",
            "fit-notes",
            "--from",
            "2025-11-01",
            "--to",
            "2026-10-31",
            "--out",
            s(&csv_path),
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("signed by the TPM audit key"), "{stdout}");
    assert_eq!(
        listing(&out_dir),
        ["fit-notes-2026.csv", "fit-notes-2026.csv.sig"]
    );
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "sub_icb_location_code,period_start,period_end,extract_date,gender,diagnosis,fit_note_duration,fitness_for_work,adaptations_recommended,count"
    );
    let rows: Vec<&str> = lines.collect();
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(row.starts_with("16C,2025-11-01,2026-10-31,"), "{row}");
        let count = row.rsplit(',').next().unwrap();
        assert!(
            count == "*" || count.parse::<u64>().unwrap() % 5 == 0,
            "{row}"
        );
    }
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    assert!(sig.starts_with("MIG-EXTRACT-SIGNATURE-V1\n"));
    assert!(sig.contains("\nods: A81001\n") && sig.contains("\nasid: 200000000123\n"));

    // Verified against this appliance's audit key, naming the appliance.
    let (ok, stdout, stderr) = run(&app, &["extract", "verify", s(&csv_path)]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("good signature"), "{stdout}");
    assert!(
        stdout.contains("ODS A81001, ASID 200000000123, sub-ICB 16C"),
        "{stdout}"
    );
    assert!(stdout.contains("this appliance's audit key"), "{stdout}");
    let fingerprint = stdout
        .split("audit key SHA-256 ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 64);

    // Elsewhere, with the fingerprint given (no appliance config at all).
    let (ok, stdout, _) = run_elsewhere(&[
        "extract",
        "verify",
        s(&csv_path),
        "--fingerprint",
        &fingerprint,
    ]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("checked against the fingerprint given"));
    let wrong = "00".repeat(32);
    let (ok, _, stderr) =
        run_elsewhere(&["extract", "verify", s(&csv_path), "--fingerprint", &wrong]);
    assert!(!ok);
    assert!(stderr.contains("signed by another key"), "{stderr}");

    // A changed CSV fails, naming why.
    let tampered_path = out_dir.join("tampered.csv");
    let tampered = match csv.rfind(",*\r\n") {
        Some(i) => format!("{},10\r\n{}", &csv[..i], &csv[i + 4..]),
        None => csv.replacen(",1", ",2", 1),
    };
    assert_ne!(tampered, csv);
    std::fs::write(&tampered_path, &tampered).unwrap();
    std::fs::copy(&sig_path, out_dir.join("tampered.csv.sig")).unwrap();
    let (ok, _, stderr) = run(&app, &["extract", "verify", s(&tampered_path)]);
    assert!(!ok);
    assert!(
        stderr.contains("BAD SIGNATURE") && stderr.contains("changed after signing"),
        "{stderr}"
    );
    // A changed statement (another practice's name) fails too.
    std::fs::write(&tampered_path, &csv).unwrap();
    std::fs::write(
        out_dir.join("tampered.csv.sig"),
        sig.replace("ods: A81001", "ods: B82002"),
    )
    .unwrap();
    let (ok, _, stderr) = run(&app, &["extract", "verify", s(&tampered_path)]);
    assert!(!ok);
    assert!(stderr.contains("does not verify"), "{stderr}");

    // The run is in the audit trail: who, period, rows, the file's hash.
    let sha256 = sig
        .lines()
        .find_map(|l| l.strip_prefix("sha256: "))
        .unwrap()
        .to_owned();
    let (ok, audit, stderr) = run(&app, &["audit", "export"]);
    assert!(ok, "{stderr}");
    let record = audit
        .lines()
        .find(|l| l.contains("extract fit-notes 2025-11-01..2026-10-31"))
        .expect("no audit record of the extract");
    assert!(record.contains(&sha256), "{record}");
    assert!(record.contains(&format!("{} rows", rows.len())), "{record}");
    assert!(record.contains("uid="), "{record}");

    // Refusals: a clear message, a non-zero exit and no file.
    let failed = out_dir.join("failed.csv");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--from", "2026-03-31", "--to", "2025-04-01"],
            "the period is empty",
        ),
        (
            &["--from", "2026-01-01", "--to", "2099-01-31"],
            "ends in the future",
        ),
        (
            &["--from", "2026-02-30", "--to", "2026-03-31"],
            "is not a date",
        ),
        (&["--from", "", "--to", "2026-03-31"], "is not a date"),
        (
            &["--from", "2001-01-01", "--to", "2001-12-31"],
            "no fit notes were issued from 2001-01-01 to 2001-12-31",
        ),
    ];
    for (dates, message) in cases {
        let mut args = vec!["extract", "fit-notes"];
        args.extend_from_slice(dates);
        args.extend_from_slice(&["--out", s(&failed)]);
        let (ok, stdout, stderr) = run(&app, &args);
        assert!(!ok, "{args:?}: {stdout}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!failed.exists());
        println!("migctl {}: {}", args.join(" "), stderr.trim());
    }
    let (ok, audit, _) = run(&app, &["audit", "export"]);
    assert!(ok);
    assert!(audit.contains("refused: the period is empty"));

    // No sub-ICB code configured: refused, saying what to set.
    app.stop();
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    assert!(config.contains("sub_icb = \"16C\""), "{config}");
    std::fs::write(app.config_path(), config.replace("sub_icb = \"16C\"\n", "")).unwrap();
    app.start_migd(&[]).unwrap();
    let (ok, _, stderr) = run(
        &app,
        &[
            "extract",
            "fit-notes",
            "--from",
            "2025-11-01",
            "--to",
            "2026-10-31",
            "--out",
            s(&failed),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("no sub-ICB location code is configured"),
        "{stderr}"
    );
    assert!(!failed.exists());
    assert!(
        listing(&out_dir).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        listing(&out_dir)
    );
}
