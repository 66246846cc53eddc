#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The admin socket over a real Unix socket: peer credentials, mode and group, JSON-line
//! framing, stale sockets, and the client's errors. Peers with other uids are this test binary
//! re-executed (role in MIG_ADMIN_CHILD) and switched to uid 65534 while still root.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mig::admin::transport::{
    self, AdminClientError, AdminHandler, AdminListener, HandlerFuture, PeerCred, TransportError,
    MAX_LINE_BYTES,
};
use nix::unistd::{Gid, Group, Uid};
use serde_json::{json, Value};

const ROLE: &str = "MIG_ADMIN_CHILD";
const NOBODY: u32 = 65534;

struct Echo;

impl AdminHandler for Echo {
    fn handle(&self, peer: PeerCred, request: Value) -> HandlerFuture<'_> {
        Box::pin(async move {
            json!({"ok": true, "uid": peer.uid, "gid": peer.gid, "pid": peer.pid,
                   "connection": peer.connection, "echo": request})
        })
    }
}

/// Child side: become uid 65534 with the groups in the environment, call the socket, print
/// the outcome. Without the role variable this is an empty test that passes.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "client");
    let socket = PathBuf::from(std::env::var("MIG_SOCKET").unwrap());
    let gid: u32 = std::env::var("MIG_GID").unwrap().parse().unwrap();
    let groups: Vec<Gid> = std::env::var("MIG_GROUPS")
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Gid::from_raw(s.parse().unwrap()))
        .collect();
    nix::unistd::setgroups(&groups).unwrap();
    nix::unistd::setgid(Gid::from_raw(gid)).unwrap();
    nix::unistd::setuid(Uid::from_raw(NOBODY)).unwrap();
    let outcome = match transport::call(&socket, &json!({"cmd": "status"})) {
        Ok(v) => format!("ok {v}"),
        Err(AdminClientError::Forbidden { message }) => format!("forbidden {message}"),
        Err(AdminClientError::PermissionDenied { .. }) => "permission-denied".to_string(),
        Err(e) => format!("error {e}"),
    };
    println!("\nCHILD {outcome}");
}

fn run_child(socket: &Path, gid: u32, groups: &[u32]) -> String {
    let groups = groups
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "system_admin_socket::child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "client")
        .env("MIG_SOCKET", socket)
        .env("MIG_GID", gid.to_string())
        .env("MIG_GROUPS", groups)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD "))
        .unwrap_or_else(|| panic!("no outcome from child: {stdout}"))
        .to_string()
}

/// A group that exists here and that uid 65534 is not in by default.
fn admin_group() -> Group {
    for name in ["users", "staff", "adm"] {
        if let Ok(Some(g)) = Group::from_name(name) {
            return g;
        }
    }
    panic!("no usable test group (users, staff, adm) on this machine");
}

/// A directory others can enter, so that uid 65534 reaches the socket.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), TransportError>>,
}

impl Server {
    fn start(path: &Path, group: &str) -> Server {
        let listener = AdminListener::bind(path, group).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener.serve(Arc::new(Echo), async move {
            let _ = stopped.await;
        }));
        Server {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_has_mode_0660_and_admin_group_and_serves_root() {
    let dir = open_dir();
    let group = admin_group();
    let path = dir.path().join("run").join("admin.sock");
    let server = Server::start(&path, &group.name);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), group.gid.as_raw());
    // The directory it made for the socket: 0750, admin group.
    let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dmeta.mode() & 0o7777, 0o750);
    assert_eq!(dmeta.gid(), group.gid.as_raw());

    let p = path.clone();
    let answer = blocking(move || transport::call(&p, &json!({"cmd": "status"})))
        .await
        .unwrap();
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["uid"], nix::unistd::getuid().as_raw());
    assert_eq!(answer["pid"], std::process::id());
    assert_eq!(answer["echo"], json!({"cmd": "status"}));

    server.stop().await;
    assert!(!path.exists(), "socket file left behind after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_admin_group_is_served_and_others_refused() {
    if !Uid::effective().is_root() {
        eprintln!("SKIPPED member_of_admin_group_is_served_and_others_refused: needs root to run a client as uid 65534");
        return;
    }
    let dir = open_dir();
    let group = admin_group();
    let gid = group.gid.as_raw();
    let path = dir.path().join("admin.sock");
    let server = Server::start(&path, &group.name);

    // Supplementary member: allowed through /proc/<pid>/status Groups.
    let p = path.clone();
    let out = blocking(move || run_child(&p, NOBODY, &[NOBODY, gid])).await;
    assert!(out.starts_with("ok "), "{out}");
    assert!(out.contains("\"uid\":65534"), "{out}");

    // Primary group member: allowed.
    let p = path.clone();
    let out = blocking(move || run_child(&p, gid, &[])).await;
    assert!(out.starts_with("ok "), "{out}");

    // Not a member: the file mode already keeps it out.
    let p = path.clone();
    let out = blocking(move || run_child(&p, NOBODY, &[NOBODY])).await;
    assert_eq!(out, "permission-denied");

    // Even with the file opened to everyone, the peer check refuses it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let p = path.clone();
    let out = blocking(move || run_child(&p, NOBODY, &[NOBODY])).await;
    assert!(out.starts_with("forbidden "), "{out}");
    assert!(out.contains("65534"), "{out}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_line_gets_error_response_and_connection_goes_on() {
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let server = Server::start(&path, &admin_group().name);
    let p = path.clone();
    let answers = blocking(move || {
        let mut s = UnixStream::connect(&p).unwrap();
        s.write_all(b"{\"cmd\": \"status\"\nnot json at all\n\n[1,2]\n")
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut out = Vec::new();
        for _ in 0..4 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            out.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        out
    })
    .await;
    for (i, a) in answers[..3].iter().enumerate() {
        assert_eq!(a["ok"], false, "{a}");
        assert_eq!(a["error"]["code"], "malformed_request", "{a}");
        let msg = a["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("line {}", i + 1)), "{msg}");
    }
    // A valid request after the bad ones is served on the same connection.
    assert_eq!(answers[3]["echo"], json!([1, 2]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_line_is_refused_without_crashing() {
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let server = Server::start(&path, &admin_group().name);
    let p = path.clone();
    let answer = blocking(move || {
        let mut s = UnixStream::connect(&p).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..=(MAX_LINE_BYTES >> 20) {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        writer.join().unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    })
    .await;
    assert_eq!(answer["error"]["code"], "request_too_large", "{answer}");
    // The server is still there for the next client.
    let p = path.clone();
    let ok = blocking(move || transport::call(&p, &json!("ping")))
        .await
        .unwrap();
    assert_eq!(ok["echo"], "ping");
    // The client refuses to send an over-long request at all.
    let p = path.clone();
    let big = json!({"ndjson": "x".repeat(MAX_LINE_BYTES)});
    let err = blocking(move || transport::call(&p, &big))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminClientError::TooLarge { .. }), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_one_connection_share_its_id_and_closing_is_reported() {
    use std::sync::Mutex;
    struct Track(Mutex<Vec<u64>>);
    impl AdminHandler for Track {
        fn handle(&self, peer: PeerCred, _r: Value) -> HandlerFuture<'_> {
            Box::pin(async move { json!({"connection": peer.connection}) })
        }
        fn connection_closed(&self, peer: PeerCred) {
            self.0.lock().unwrap().push(peer.connection);
        }
    }
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let track = Arc::new(Track(Mutex::new(Vec::new())));
    let listener = AdminListener::bind(&path, &admin_group().name).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.serve(track.clone(), async move {
        let _ = stopped.await;
    }));
    let p = path.clone();
    let ids = blocking(move || {
        let mut c = transport::AdminClient::connect(&p).unwrap();
        let a = c.call(&json!(1)).unwrap();
        let b = c.call(&json!(2)).unwrap();
        let other = transport::call(&p, &json!(3)).unwrap();
        (
            a["connection"].clone(),
            b["connection"].clone(),
            other["connection"].clone(),
        )
    })
    .await;
    assert_eq!(ids.0, ids.1);
    assert_ne!(ids.0, ids.2);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let closed = track.0.lock().unwrap().clone();
    assert!(closed.contains(&ids.0.as_u64().unwrap()), "{closed:?}");
    assert!(closed.contains(&ids.2.as_u64().unwrap()), "{closed:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_live_one_and_files_are_not() {
    let dir = open_dir();
    let group = admin_group().name;
    let path = dir.path().join("admin.sock");

    // Stale: a socket file with nobody listening (a migd that died).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let p = path.clone();
    let err = blocking(move || transport::call(&p, &json!(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminClientError::NotRunning { .. }), "{err}");
    assert!(err.to_string().contains("migd is not running"), "{err}");
    let server = Server::start(&path, &group);

    // Live: a second bind is refused and the first keeps serving.
    let err = AdminListener::bind(&path, &group).unwrap_err();
    assert!(matches!(err, TransportError::InUse { .. }), "{err}");
    let p = path.clone();
    assert_eq!(
        blocking(move || transport::call(&p, &json!(7)))
            .await
            .unwrap()["echo"],
        7
    );
    server.stop().await;

    // Not a socket: left alone.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let err = AdminListener::bind(&file, &group).unwrap_err();
    assert!(matches!(err, TransportError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // Missing socket: migd is not running.
    let missing = dir.path().join("missing.sock");
    let err = transport::call(&missing, &json!(1)).unwrap_err();
    assert!(matches!(err, AdminClientError::NotRunning { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_group_still_serves_root_with_a_warning() {
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let listener = AdminListener::bind(&path, "no-such-group-mig").unwrap();
    assert_eq!(listener.admin_gid(), None);
    assert_eq!(
        std::fs::symlink_metadata(&path).unwrap().mode() & 0o7777,
        0o660
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.serve(Arc::new(Echo), async move {
        let _ = stopped.await;
    }));
    let p = path.clone();
    assert_eq!(
        blocking(move || transport::call(&p, &json!("x")))
            .await
            .unwrap()["echo"],
        "x"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A handler that never answers: the client's timeout ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_ends_a_hung_call() {
    struct Hang;
    impl AdminHandler for Hang {
        fn handle(&self, _p: PeerCred, _r: Value) -> HandlerFuture<'_> {
            Box::pin(std::future::pending())
        }
    }
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let listener = AdminListener::bind(&path, &admin_group().name).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.serve(Arc::new(Hang), async move {
        let _ = stopped.await;
    }));
    let p = path.clone();
    let err = blocking(move || {
        let mut c = transport::AdminClient::connect(&p).unwrap();
        c.set_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let started = std::time::Instant::now();
        let err = c.call(&json!("x")).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        err
    })
    .await;
    assert!(
        matches!(
            err,
            AdminClientError::Io {
                operation: "receive",
                ..
            }
        ),
        "{err}"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
