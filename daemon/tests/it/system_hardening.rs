#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Process hardening, each check in a child process (this test binary re-executed with a role
//! in MIG_HARDENING_CHILD), since every one of these changes its process for good.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use mig::system::{self, Sandbox, SandboxAccess};

const ROLE: &str = "MIG_HARDENING_CHILD";

/// The child side. Without the role variable this is an empty test that passes.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let say = |s: String| {
        println!("CHILD {s}");
        std::io::stdout().flush().unwrap();
    };
    match role.as_str() {
        "core" => {
            say(format!(
                "dumpable_before={}",
                system::is_dumpable().unwrap()
            ));
            system::disable_core_dumps().unwrap();
            say(format!("dumpable_after={}", system::is_dumpable().unwrap()));
            say("ready".into());
            // Wait for the parent to inspect /proc/<pid>, then exit when stdin closes.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        "drop" => {
            system::disable_core_dumps().unwrap();
            let dropped = system::drop_privileges("nobody").unwrap().unwrap();
            say(format!(
                "uid={} gid={}",
                nix::unistd::getuid(),
                nix::unistd::getgid()
            ));
            say(format!(
                "euid={} egid={}",
                nix::unistd::geteuid(),
                nix::unistd::getegid()
            ));
            say(format!(
                "reported_uid={} reported_groups={:?}",
                dropped.uid, dropped.groups
            ));
            let groups: Vec<u32> = nix::unistd::getgroups()
                .unwrap()
                .iter()
                .map(|g| g.as_raw())
                .collect();
            say(format!("groups={groups:?}"));
            say(format!(
                "regain_root={}",
                nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok()
            ));
            say(format!("dumpable={}", system::is_dumpable().unwrap()));
            // Not root any more, so a second call is a no-op.
            say(format!(
                "again={:?}",
                system::drop_privileges("nobody").unwrap()
            ));
        }
        "landlock" => {
            let allowed = std::env::var("MIG_ALLOWED").unwrap();
            let outside = std::env::var("MIG_OUTSIDE").unwrap();
            let report = Sandbox::new()
                .allow(&allowed, SandboxAccess::ReadWrite, "test dir", true)
                .allow(
                    "/does/not/exist",
                    SandboxAccess::ReadOnly,
                    "optional",
                    false,
                )
                .restrict_current_thread()
                .unwrap();
            say(format!("enforced={}", report.enforced));
            say(format!("summary={}", report.summary()));
            let res = |r: std::io::Result<()>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("err:{}", e.raw_os_error().unwrap_or(0)),
            };
            say(format!(
                "read_inside={}",
                res(std::fs::read(Path::new(&allowed).join("in.txt")).map(drop))
            ));
            say(format!(
                "write_inside={}",
                res(std::fs::write(Path::new(&allowed).join("new.txt"), b"x"))
            ));
            say(format!(
                "read_outside={}",
                res(std::fs::read(Path::new(&outside).join("out.txt")).map(drop))
            ));
            say(format!(
                "write_outside={}",
                res(std::fs::write(Path::new(&outside).join("new.txt"), b"x"))
            ));
            say(format!(
                "read_etc={}",
                res(std::fs::read("/etc/hostname").map(drop))
            ));
            // A thread started after the restriction inherits it.
            let o = outside.clone();
            let thread =
                std::thread::spawn(move || std::fs::read(Path::new(&o).join("out.txt")).map(drop))
                    .join()
                    .unwrap();
            say(format!("read_outside_from_new_thread={}", res(thread)));
        }
        "landlock_config" => {
            let config =
                mig::config::Config::load(Path::new(&std::env::var("MIG_CONFIG").unwrap()))
                    .unwrap();
            let report = Sandbox::for_config(&config)
                .restrict_current_thread()
                .unwrap();
            say(format!("enforced={}", report.enforced));
            let res = |r: std::io::Result<()>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("err:{}", e.raw_os_error().unwrap_or(0)),
            };
            say(format!(
                "config={}",
                res(std::fs::read(&config.source_path).map(drop))
            ));
            say(format!(
                "state_write={}",
                res(std::fs::write(config.state_dir.join("replica.db"), b"x"))
            ));
            say(format!(
                "state_rename={}",
                res(std::fs::rename(
                    config.state_dir.join("replica.db"),
                    config.state_dir.join("sub/replica.db")
                ))
            ));
            let admin_dir = config.admin.socket.parent().unwrap().to_path_buf();
            say(format!(
                "socket_bind={}",
                res(std::os::unix::net::UnixListener::bind(&config.admin.socket).map(drop))
            ));
            say(format!(
                "proc_self={}",
                res(std::fs::read("/proc/self/status").map(drop))
            ));
            say(format!(
                "urandom={}",
                res({
                    use std::io::Read;
                    std::fs::File::open("/dev/urandom")
                        .and_then(|mut f| f.read_exact(&mut [0u8; 8]))
                })
            ));
            say(format!(
                "tmp_write={}",
                res(std::fs::write(
                    admin_dir.parent().unwrap().join("elsewhere.txt"),
                    b"x"
                ))
            ));
            say(format!(
                "etc_read={}",
                res(std::fs::read("/etc/hostname").map(drop))
            ));
        }
        "mlock" => {
            use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
            // A finite limit: refused up front, since MCL_FUTURE would make later allocations fail.
            let (_, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).unwrap();
            if hard != RLIM_INFINITY {
                setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).unwrap();
                say(format!("finite={}", system::lock_memory().is_ok()));
            } else {
                setrlimit(Resource::RLIMIT_MEMLOCK, 8 << 20, RLIM_INFINITY).unwrap();
                say(format!("finite={}", system::lock_memory().is_ok()));
            }
            // Raising the hard limit needs CAP_SYS_RESOURCE, which some sandboxes withhold.
            if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
                say(format!(
                    "infinite={:?}",
                    system::lock_memory().map_err(|e| e.to_string())
                ));
            } else {
                say("infinite=unavailable".into());
            }
            // Touch fresh memory after locking: MCL_FUTURE|MCL_ONFAULT locks it as it faults in.
            let v = vec![1u8; 4 << 20];
            say(format!(
                "touched={}",
                v.iter().map(|&b| b as usize).sum::<usize>()
            ));
            say("ready".into());
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        "huge_pages" => {
            let thp = || {
                std::fs::read_to_string("/proc/self/status")
                    .unwrap()
                    .lines()
                    .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_owned()))
                    .unwrap_or_else(|| "unknown".into())
            };
            say(format!("thp_before={}", thp()));
            system::disable_huge_pages().unwrap();
            say(format!("thp_after={}", thp()));
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, envs: &[(&str, &str)]) -> (Child, BufReader<ChildStdout>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "system_hardening::child_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads CHILD lines until `until` (or the end), returning them without the prefix.
fn read_until(out: &mut BufReader<ChildStdout>, until: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            return lines;
        }
        // The harness may print "test child_entry ... " on the same line first.
        if let Some(rest) = line.trim_end().split_once("CHILD ").map(|(_, r)| r) {
            lines.push(rest.to_string());
            if Some(rest) == until {
                return lines;
            }
        }
    }
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("child did not report {key}: {lines:?}"))
}

#[test]
fn transparent_huge_pages_off_for_the_process() {
    let (mut child, mut out) = spawn("huge_pages", &[]);
    let lines = read_until(&mut out, None);
    assert!(child.wait().unwrap().success(), "{lines:?}");
    // Kernels before 6.0 do not report THP_enabled; the call itself must still succeed.
    if value(&lines, "thp_before") != "unknown" {
        assert_eq!(value(&lines, "thp_after"), "0", "{lines:?}");
    }
}

#[test]
fn core_dumps_off_and_process_not_dumpable() {
    let (mut child, mut out) = spawn("core", &[]);
    let lines = read_until(&mut out, Some("ready"));
    assert_eq!(value(&lines, "dumpable_before"), "true", "{lines:?}");
    assert_eq!(value(&lines, "dumpable_after"), "false", "{lines:?}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn root_drops_to_service_user_with_its_groups() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED root_drops_to_service_user_with_its_groups: needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let (mut child, mut out) = spawn("drop", &[]);
    let lines = read_until(&mut out, None);
    assert!(child.wait().unwrap().success(), "{lines:?}");
    let want = format!("uid={} gid={}", nobody.uid, nobody.gid);
    assert!(lines.contains(&want), "{lines:?}");
    assert!(
        lines.contains(&format!("euid={} egid={}", nobody.uid, nobody.gid)),
        "{lines:?}"
    );
    assert_eq!(value(&lines, "regain_root"), "false");
    assert_eq!(value(&lines, "dumpable"), "false");
    assert_eq!(value(&lines, "again"), "None");
    // Root's own supplementary groups are gone; only nobody's remain.
    let groups = value(&lines, "groups");
    assert!(!groups.contains("0,") && groups != "[0]", "{groups}");
    assert!(groups.contains(&nobody.gid.to_string()), "{groups}");
}

#[test]
fn landlock_allows_inside_and_denies_outside() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(allowed.join("in.txt"), b"in").unwrap();
    std::fs::write(outside.join("out.txt"), b"out").unwrap();
    let (mut child, mut out) = spawn(
        "landlock",
        &[
            ("MIG_ALLOWED", allowed.to_str().unwrap()),
            ("MIG_OUTSIDE", outside.to_str().unwrap()),
        ],
    );
    let lines = read_until(&mut out, None);
    assert!(child.wait().unwrap().success(), "{lines:?}");
    eprintln!("{}", value(&lines, "summary"));
    if value(&lines, "enforced") != "true" {
        eprintln!("SKIPPED landlock_allows_inside_and_denies_outside: this kernel does not enforce Landlock: {lines:?}");
        return;
    }
    assert_eq!(value(&lines, "read_inside"), "ok");
    assert_eq!(value(&lines, "write_inside"), "ok");
    assert!(allowed.join("new.txt").exists());
    let eacces = format!("err:{}", libc::EACCES);
    assert_eq!(value(&lines, "read_outside"), eacces);
    assert_eq!(value(&lines, "write_outside"), eacces);
    assert_eq!(value(&lines, "read_etc"), eacces);
    assert_eq!(value(&lines, "read_outside_from_new_thread"), eacces);
    assert!(!outside.join("new.txt").exists());
}

#[test]
fn memory_locked_only_with_unlimited_memlock() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "SKIPPED memory_locked_only_with_unlimited_memlock: needs root to raise RLIMIT_MEMLOCK"
        );
        return;
    }
    let (mut child, mut out) = spawn("mlock", &[]);
    let lines = read_until(&mut out, Some("ready"));
    assert_eq!(value(&lines, "finite"), "false", "{lines:?}");
    if value(&lines, "infinite") == "unavailable" {
        eprintln!(
            "SKIPPED the locking half of memory_locked_only_with_unlimited_memlock: cannot raise \
             RLIMIT_MEMLOCK here (no CAP_SYS_RESOURCE); the refusal half ran"
        );
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        return;
    }
    assert_eq!(value(&lines, "infinite"), "Ok(())", "{lines:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        locked_kb >= 4096,
        "VmLck {locked_kb} kB after touching 4 MiB"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// The sandbox migd builds from its config: state dir and socket dir writable, config
/// readable, /proc readable, nothing else.
#[test]
fn landlock_from_config_allows_what_migd_needs_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("sub")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let appliance = mig::config::ApplianceConfig {
        ods: "A81001".parse().unwrap(),
        name: "The Surgery".into(),
        asid: "200000000123".parse().unwrap(),
        fhir_base: "https://mig.example/fhir".parse().unwrap(),
    };
    let mut config = mig::config::Config::new(
        state,
        appliance,
        "swtpm:host=127.0.0.1,port=2321".parse().unwrap(),
    )
    .unwrap();
    config.admin.socket = dir.path().join("run/admin.sock");
    let path = dir.path().join("migd.toml");
    config.write_new(&path).unwrap();
    let (mut child, mut out) = spawn("landlock_config", &[("MIG_CONFIG", path.to_str().unwrap())]);
    let lines = read_until(&mut out, None);
    assert!(child.wait().unwrap().success(), "{lines:?}");
    if value(&lines, "enforced") != "true" {
        eprintln!(
            "SKIPPED landlock_from_config_allows_what_migd_needs_only: no Landlock here: {lines:?}"
        );
        return;
    }
    for ok in [
        "config",
        "state_write",
        "state_rename",
        "socket_bind",
        "proc_self",
        "urandom",
    ] {
        assert_eq!(value(&lines, ok), "ok", "{ok}: {lines:?}");
    }
    let eacces = format!("err:{}", libc::EACCES);
    assert_eq!(value(&lines, "tmp_write"), eacces, "{lines:?}");
    assert_eq!(value(&lines, "etc_read"), eacces, "{lines:?}");
}
