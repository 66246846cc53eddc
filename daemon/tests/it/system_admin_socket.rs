#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The admin socket over a real Unix socket: peer credentials, mode and group, typed JSON-line
//! framing, stale sockets, and the client's errors. Peers with other uids are this test binary
//! re-executed (role in MIG_ADMIN_CHILD) and switched to uid 65534 while still root.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mig::admin::client::{self, AdminClient, AdminClientError};
use mig::admin::peer::PeerCred;
use mig::admin::server::{AdminHandler, AdminListener, HandlerFuture, TransportError};
use mig_admin_proto::{
    decode_reply, AuditExport, AuditExportAnswer, Empty, ErrorCode, ImportChunk, Request, Response,
    Status, MAX_REQUEST_BYTES,
};
use nix::unistd::{Gid, Group, Uid};

const ROLE: &str = "MIG_ADMIN_CHILD";
const NOBODY: u32 = 65534;

/// Answers every request with an export answer that describes the caller and the request.
struct Echo;

fn echo(peer: PeerCred, request: &Request) -> Response {
    Response::Ok(
        AuditExportAnswer {
            count: peer.connection,
            ndjson: format!(
                "uid={} gid={} pid={} request={}",
                peer.uid,
                peer.gid,
                peer.pid,
                serde_json::to_string(request).unwrap()
            ),
        }
        .into(),
    )
}

impl AdminHandler for Echo {
    fn handle(&self, peer: PeerCred, request: Request) -> HandlerFuture<'_> {
        Box::pin(async move { echo(peer, &request) })
    }
}

/// One export request on a fresh connection, its answer's text.
fn ask(socket: &Path, since: &str) -> Result<String, AdminClientError> {
    let answer = client::call(
        socket,
        AuditExport {
            since: Some(since.into()),
        },
    )?;
    Ok(answer.unwrap().ndjson)
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
    let outcome = match ask(&socket, "status") {
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
    let answer = blocking(move || ask(&p, "status")).await.unwrap();
    assert!(
        answer.starts_with(&format!(
            "uid={} gid={} pid={} ",
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            std::process::id()
        )),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"request={"command":"audit-export","since":"status"}"#),
        "{answer}"
    );

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
    assert!(out.contains("uid=65534 "), "{out}");

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
async fn malformed_lines_get_typed_error_answers_and_the_connection_goes_on() {
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let server = Server::start(&path, &admin_group().name);
    let p = path.clone();
    let answers = blocking(move || {
        let mut s = UnixStream::connect(&p).unwrap();
        s.write_all(
            b"{\"command\": \"status\"\nnot json at all\n\n[1,2]\n\xff\xfe\n\
              {\"command\":\"format-disk\"}\n{\"command\":\"alerts-ack\",\"id\":\"seven\"}\n\
              {\"command\":\"status\"}\n",
        )
        .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut out = Vec::new();
        for _ in 0..8 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            out.push(decode_reply::<AuditExportAnswer>(&line).unwrap());
        }
        out
    })
    .await;
    let expected = [
        ErrorCode::MalformedRequest,
        ErrorCode::MalformedRequest,
        ErrorCode::MalformedRequest,
        ErrorCode::MalformedRequest,
        ErrorCode::MalformedRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::BadRequest,
    ];
    for (i, (a, code)) in answers.iter().zip(expected).enumerate() {
        let error = a.as_ref().unwrap_err();
        assert_eq!(error.code, code, "{error:?}");
        assert!(
            error
                .message
                .starts_with(&format!("request line {}: ", i + 1)),
            "{error:?}"
        );
    }
    // A valid request after the bad ones is served on the same connection.
    let served = answers[7].as_ref().unwrap();
    assert!(
        served.ndjson.ends_with(r#"{"command":"status"}"#),
        "{served:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_line_is_refused_with_a_clear_error_and_the_connection_closed() {
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let server = Server::start(&path, &admin_group().name);
    let p = path.clone();
    let answer = blocking(move || {
        let mut s = UnixStream::connect(&p).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..=(MAX_REQUEST_BYTES >> 20) {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        // The connection is closed after the refusal: no second answer, no hang.
        let mut rest = String::new();
        let closed = r.read_line(&mut rest).unwrap();
        writer.join().unwrap();
        assert_eq!(closed, 0, "{rest}");
        decode_reply::<Empty>(&line).unwrap().unwrap_err()
    })
    .await;
    assert_eq!(answer.code, ErrorCode::RequestTooLarge, "{answer:?}");
    assert!(
        answer
            .message
            .contains(&format!("longer than {MAX_REQUEST_BYTES} bytes")),
        "{answer:?}"
    );
    // The server is still there for the next client.
    let p = path.clone();
    let ok = blocking(move || ask(&p, "ping")).await.unwrap();
    assert!(ok.contains("ping"), "{ok}");
    // The client refuses to send an over-long request at all.
    let p = path.clone();
    let big = ImportChunk {
        ndjson: "x".repeat(MAX_REQUEST_BYTES),
    };
    let err = blocking(move || client::call(&p, big)).await.unwrap_err();
    assert!(matches!(err, AdminClientError::TooLarge { .. }), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_one_connection_share_its_id_and_closing_is_reported() {
    use std::sync::Mutex;
    struct Track(Mutex<Vec<u64>>);
    impl AdminHandler for Track {
        fn handle(&self, peer: PeerCred, request: Request) -> HandlerFuture<'_> {
            Box::pin(async move { echo(peer, &request) })
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
        let mut c = AdminClient::connect(&p).unwrap();
        let a = c.call(AuditExport::default()).unwrap().unwrap();
        let b = c.call(AuditExport::default()).unwrap().unwrap();
        let other = client::call(&p, AuditExport::default()).unwrap().unwrap();
        (a.count, b.count, other.count)
    })
    .await;
    assert_eq!(ids.0, ids.1);
    assert_ne!(ids.0, ids.2);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let closed = track.0.lock().unwrap().clone();
    assert!(closed.contains(&ids.0), "{closed:?}");
    assert!(closed.contains(&ids.2), "{closed:?}");
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
    let err = blocking(move || client::call(&p, Status {}))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminClientError::NotRunning { .. }), "{err}");
    assert!(err.to_string().contains("migd is not running"), "{err}");
    let server = Server::start(&path, &group);

    // Live: a second bind is refused and the first keeps serving.
    let err = AdminListener::bind(&path, &group).unwrap_err();
    assert!(matches!(err, TransportError::InUse { .. }), "{err}");
    let p = path.clone();
    assert!(blocking(move || ask(&p, "7"))
        .await
        .unwrap()
        .contains("\"7\""));
    server.stop().await;

    // Not a socket: left alone.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let err = AdminListener::bind(&file, &group).unwrap_err();
    assert!(matches!(err, TransportError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // Missing socket: migd is not running.
    let missing = dir.path().join("missing.sock");
    let err = client::call(&missing, Status {}).unwrap_err();
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
    assert!(blocking(move || ask(&p, "x"))
        .await
        .unwrap()
        .contains("\"x\""));
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A handler that never answers: the client's timeout ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_ends_a_hung_call() {
    struct Hang;
    impl AdminHandler for Hang {
        fn handle(&self, _p: PeerCred, _r: Request) -> HandlerFuture<'_> {
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
        let mut c = AdminClient::connect(&p).unwrap();
        c.set_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let started = std::time::Instant::now();
        let err = c.call(Status {}).unwrap_err();
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
