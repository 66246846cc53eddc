//! The admin socket's transport: a Unix stream socket carrying one JSON request per line and
//! one JSON response per line, with the caller identified by its kernel peer credentials.
//!
//! Validates: who connects (SO_PEERCRED: root, migd's own user, or a member of the admin group,
//! primary or supplementary: SO_PEERGROUPS, else `/proc/<pid>/status`), line length (16 MiB)
//! and that each line is JSON. Does not validate what a request asks for: that is the handler's
//! job (`AdminHandler`).
//!
//! Wire format, both directions UTF-8, `\n`-terminated, any number of requests per connection,
//! answered in order. Transport-level errors are answered with
//! `{"ok":false,"error":{"code":CODE,"message":TEXT}}`, CODE one of `forbidden`,
//! `malformed_request`, `request_too_large`. Large imports: a request may carry NDJSON text in a
//! string field up to the line limit; bigger inputs are sent as several requests on one
//! connection ([`PeerCred::connection`] tells the handler they belong together, and
//! [`AdminHandler::connection_closed`] says when the sender is gone). See docs/operations.md.

use std::future::Future;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

/// Longest request or response line, newline excluded.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Connections served at once; more wait in the kernel backlog. Admin traffic is one person at
/// a console, so this only bounds what a misbehaving local client can hold open.
const MAX_CONNECTIONS: usize = 32;

/// Mode of the socket file (SPEC §9).
const SOCKET_MODE: u32 = 0o660;

/// Why the admin socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket's directory could not be created.
    #[error("cannot create admin socket directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something that is not a socket is at the socket path; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Another process (another migd?) answers on the socket.
    #[error("admin socket {} is in use by a running process (is migd already running?)", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A socket-file operation failed.
    #[error("admin socket {}: {operation}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Who is on the other end, from the kernel (SO_PEERCRED at connect time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// The peer's uid.
    pub uid: u32,
    /// The peer's primary gid.
    pub gid: u32,
    /// The peer's pid (0 if the kernel did not say).
    pub pid: i32,
    /// Identifies the connection: requests with the same value came over one connection, in
    /// order (for multi-request operations such as a chunked import).
    pub connection: u64,
}

/// A handler's answer, as a boxed future (no async-trait).
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Value> + Send + 'a>>;

/// The command set behind the socket.
pub trait AdminHandler: Send + Sync + 'static {
    /// Answers one request. The caller has already passed the peer check.
    fn handle(&self, peer: PeerCred, request: Value) -> HandlerFuture<'_>;

    /// The connection `peer.connection` is gone: drop any state kept for it.
    fn connection_closed(&self, _peer: PeerCred) {}
}

/// A transport-level error response.
pub fn error_response(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message}})
}

/// Who may talk to the socket.
#[derive(Debug, Clone)]
struct PeerPolicy {
    own_uid: u32,
    group: String,
    admin_gid: Option<u32>,
}

impl PeerPolicy {
    /// `groups` is a lazy lookup of the peer's supplementary groups, only run when needed.
    fn allows(&self, uid: u32, gid: u32, groups: impl FnOnce() -> Vec<u32>) -> bool {
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let Some(admin) = self.admin_gid else {
            return false;
        };
        gid == admin || groups().contains(&admin)
    }
}

/// SO_PEERGROUPS (Linux 4.13), asm-generic value (x86, arm, riscv); libc does not export it.
const SO_PEERGROUPS: libc::c_int = 59;

/// The peer's supplementary groups as of connect(), from the kernel (SO_PEERGROUPS). Preferred
/// to /proc: no race with the peer exiting, and works where /proc hides other users'
/// processes (the unit's ProtectProc=invisible).
#[allow(unsafe_code)]
fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let width = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * width)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is valid for writes of `len` bytes; the kernel writes at most `len`
        // bytes and stores the length it wrote (or needs, with ERANGE) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / width;
        if rc == 0 {
            groups.truncate(count.min(groups.len()));
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(err);
        }
        groups.resize(count, 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

/// Fallback when SO_PEERGROUPS fails: the `Groups:` line of `/proc/<pid>/status`. The peer may
/// have exited (or its pid been reused) since it connected; then this fails closed to "no
/// supplementary groups", or names a process that connected nothing, which gains that process
/// nothing as the answer goes to the socket, not to it.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    if pid <= 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The bound admin socket, not yet serving.
#[derive(Debug)]
pub struct AdminListener {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    policy: PeerPolicy,
}

impl AdminListener {
    /// Binds the socket at `path`: creates a missing parent directory (mode 0750, group
    /// `group`), removes a stale socket left by a dead migd (refuses if one answers, or if the
    /// path is not a socket), sets mode 0660 and group `group` (a warning, not an error, if the
    /// group does not exist or cannot be set: then only root and migd's user get in). Needs no
    /// runtime: call it before the sandbox or the runtime exist if you like.
    pub fn bind(path: &Path, group: &str) -> Result<AdminListener, TransportError> {
        let sock_err = |operation: &'static str| {
            move |source| TransportError::Socket {
                path: path.to_path_buf(),
                operation,
                source,
            }
        };
        let admin_gid = match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => {
                tracing::warn!(
                    "admin group {group:?} does not exist: only root and migd's own user may use \
                     the admin socket (create the group, or fix admin.group in the config)"
                );
                None
            }
            Err(e) => {
                tracing::warn!("cannot look up admin group {group:?} ({e}): only root and migd's own user may use the admin socket");
                None
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| TransportError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(
                    |source| TransportError::CreateDir {
                        path: dir.to_path_buf(),
                        source,
                    },
                )?;
                if let Some(gid) = admin_gid {
                    if let Err(e) =
                        nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))
                    {
                        tracing::warn!(
                            "cannot give {} to group {group:?} ({e}); its members cannot reach the admin socket",
                            dir.display()
                        );
                    }
                }
            } else if let Ok(meta) = dir.metadata() {
                let others_traverse = meta.mode() & 0o001 != 0;
                let group_traverse = meta.mode() & 0o010 != 0 && Some(meta.gid()) == admin_gid;
                if !others_traverse && !group_traverse {
                    tracing::warn!(
                        "members of {group:?} cannot enter {} (mode {:o}, gid {}); they will not reach the admin socket",
                        dir.display(),
                        meta.mode() & 0o7777,
                        meta.gid()
                    );
                }
            }
        }
        match path.symlink_metadata() {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(TransportError::InUse {
                            path: path.to_path_buf(),
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tracing::info!("removing stale admin socket {}", path.display());
                        std::fs::remove_file(path).map_err(sock_err("remove stale socket"))?;
                    }
                    Err(source) => {
                        return Err(TransportError::Socket {
                            path: path.to_path_buf(),
                            operation: "probe existing socket",
                            source,
                        })
                    }
                }
            }
            Ok(_) => {
                return Err(TransportError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TransportError::Socket {
                    path: path.to_path_buf(),
                    operation: "inspect path",
                    source,
                })
            }
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(sock_err("bind"))?;
        // Between bind and chmod the file has the umask's mode; the per-connection peer check
        // below is what keeps others out either way.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(sock_err("chmod 0660"))?;
        if let Some(gid) = admin_gid {
            if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
                tracing::warn!(
                    "cannot give the admin socket {} to group {group:?} ({e}): add migd's user to \
                     that group; until then only root and migd's own user may use it",
                    path.display()
                );
            }
        }
        listener
            .set_nonblocking(true)
            .map_err(sock_err("set non-blocking"))?;
        Ok(AdminListener {
            listener,
            path: path.to_path_buf(),
            policy: PeerPolicy {
                own_uid: nix::unistd::geteuid().as_raw(),
                group: group.to_string(),
                admin_gid,
            },
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The admin group's gid, if the group exists.
    pub fn admin_gid(&self) -> Option<u32> {
        self.policy.admin_gid
    }

    /// Serves connections until `shutdown` completes, then stops accepting, removes the socket
    /// file and returns (connections in progress finish their current request on their own
    /// tasks). Needs a tokio runtime.
    pub async fn serve<S>(
        self,
        handler: Arc<dyn AdminHandler>,
        shutdown: S,
    ) -> Result<(), TransportError>
    where
        S: Future<Output = ()>,
    {
        let path = self.path.clone();
        let listener = tokio::net::UnixListener::from_std(self.listener).map_err(|source| {
            TransportError::Socket {
                path: path.clone(),
                operation: "register with the runtime",
                source,
            }
        })?;
        let inode = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
        let policy = Arc::new(self.policy);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let next_id = AtomicU64::new(1);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let handler = handler.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                serve_connection(stream, id, &policy, handler).await;
                drop(permit);
            });
        }
        // Remove the socket only if it is still the one we bound (a new migd may have taken
        // the path over).
        if let (Some(ino), Ok(meta)) = (inode, std::fs::symlink_metadata(&path)) {
            if meta.ino() == ino {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    connection: u64,
    policy: &PeerPolicy,
    handler: Arc<dyn AdminHandler>,
) {
    let (read, mut write) = stream.into_split();
    let cred = match read.as_ref().peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("admin socket: cannot read peer credentials ({e}); closing");
            return;
        }
    };
    let peer = PeerCred {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
        connection,
    };
    let groups = || {
        use std::os::fd::AsFd;
        peer_groups(read.as_ref().as_fd()).unwrap_or_else(|e| {
            tracing::debug!(
                "SO_PEERGROUPS failed ({e}); reading /proc/{}/status",
                peer.pid
            );
            supplementary_groups(peer.pid)
        })
    };
    if !policy.allows(peer.uid, peer.gid, groups) {
        tracing::warn!(
            "admin socket: refused uid {} gid {} pid {}: not root, not migd's user, not in group {:?}",
            peer.uid,
            peer.gid,
            peer.pid,
            policy.group
        );
        let answer = error_response(
            "forbidden",
            &format!(
                "permission denied: uid {} is not allowed on the admin socket (ask for membership of group {:?})",
                peer.uid, policy.group
            ),
        );
        let _ = write_line(&mut write, &answer).await;
        return;
    }
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        let answer = match read_line_limited(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(LineRead::Eof) => break,
            Ok(LineRead::TooLong) => {
                let answer = error_response(
                    "request_too_large",
                    &format!("request line {number} is longer than {MAX_LINE_BYTES} bytes; split it (see docs/operations.md)"),
                );
                let _ = write_line(&mut write, &answer).await;
                // The rest of the line is still in flight: we cannot find the next request.
                break;
            }
            Ok(LineRead::Line) => match serde_json::from_slice::<Value>(&line) {
                Ok(request) => handler.handle(peer, request).await,
                Err(e) => error_response(
                    "malformed_request",
                    &format!("request line {number} is not JSON: {e}"),
                ),
            },
            Err(e) => {
                tracing::debug!("admin connection {connection} read error: {e}");
                break;
            }
        };
        if let Err(e) = write_line(&mut write, &answer).await {
            tracing::debug!("admin connection {connection} write error: {e}");
            break;
        }
    }
    handler.connection_closed(peer);
}

async fn write_line<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await
}

enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads up to `\n` (not included) into `buf`, never holding more than `max` bytes.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            // A last line without its newline still counts.
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(LineRead::Line);
        }
    }
}

/// Why `migctl` could not get an answer from migd.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// No socket, or nobody listening: migd is not running (or uses another socket).
    #[error("migd is not running (no admin socket answering at {})", path.display())]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The socket exists but this user may not open it.
    #[error("permission denied on the admin socket {}: run as root or as a member of the admin group", path.display())]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// Any other connect failure.
    #[error("cannot connect to the admin socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("admin socket {operation} failed")]
    Io {
        /// "send" or "receive".
        operation: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The request is longer than the line limit.
    #[error("request is {len} bytes, over the admin socket's {MAX_LINE_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// migd closed the connection without answering.
    #[error("migd closed the admin connection without answering")]
    Closed,
    /// The answer is not JSON.
    #[error("migd's answer is not JSON")]
    BadResponse {
        /// The parse error.
        source: serde_json::Error,
    },
    /// migd refused the caller (peer credential check).
    #[error("migd refused this user: {message}")]
    Forbidden {
        /// migd's explanation.
        message: String,
    },
}

/// A blocking connection to migd's admin socket, for several requests in order.
#[derive(Debug)]
pub struct AdminClient {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl AdminClient {
    /// Connects; a missing socket or refused connection means migd is not running.
    pub fn connect(socket_path: &Path) -> Result<AdminClient, AdminClientError> {
        let stream = std::os::unix::net::UnixStream::connect(socket_path).map_err(|source| {
            let path = socket_path.to_path_buf();
            match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    AdminClientError::NotRunning { path, source }
                }
                std::io::ErrorKind::PermissionDenied => {
                    AdminClientError::PermissionDenied { path, source }
                }
                _ => AdminClientError::Connect { path, source },
            }
        })?;
        let writer = stream.try_clone().map_err(|source| AdminClientError::Io {
            operation: "clone socket",
            source,
        })?;
        Ok(AdminClient {
            reader: std::io::BufReader::new(stream),
            writer,
        })
    }

    /// Limits how long [`AdminClient::call`] waits for each answer (`None`: no limit, the
    /// default, as an import may take a while). A timeout is an [`AdminClientError::Io`] of kind
    /// `WouldBlock`/`TimedOut`.
    pub fn set_timeout(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), AdminClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .and_then(|_| self.writer.set_write_timeout(timeout))
            .map_err(|source| AdminClientError::Io {
                operation: "set timeout",
                source,
            })
    }

    /// Sends one request and waits for its answer. A transport refusal (`forbidden`) becomes
    /// [`AdminClientError::Forbidden`]; every other answer, error or not, is returned as is.
    pub fn call(&mut self, request: &Value) -> Result<Value, AdminClientError> {
        let mut bytes = serde_json::to_vec(request)
            .map_err(|source| AdminClientError::BadResponse { source })?;
        if bytes.len() > MAX_LINE_BYTES {
            return Err(AdminClientError::TooLarge { len: bytes.len() });
        }
        bytes.push(b'\n');
        let io = |operation| move |source| AdminClientError::Io { operation, source };
        let sent = self
            .writer
            .write_all(&bytes)
            .and_then(|_| self.writer.flush());
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io("receive"))?;
        if read == 0 {
            // migd may have refused us and closed before reading: the send error says less.
            sent.map_err(io("send"))?;
            return Err(AdminClientError::Closed);
        }
        let answer: Value = serde_json::from_slice(&line)
            .map_err(|source| AdminClientError::BadResponse { source })?;
        if answer.pointer("/error/code").and_then(Value::as_str) == Some("forbidden") {
            let message = answer
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("forbidden")
                .to_string();
            return Err(AdminClientError::Forbidden { message });
        }
        Ok(answer)
    }
}

/// One request, one answer, on a fresh connection.
pub fn call(socket_path: &Path, request: &Value) -> Result<Value, AdminClientError> {
    AdminClient::connect(socket_path)?.call(request)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn reads_lines_within_the_limit() {
        let data: &[u8] = b"{\"a\":1}\n12345678901\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"{\"a\":1}");
        buf.clear();
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::TooLong
        ));
        let mut r = BufReader::new(&b"last"[..]);
        buf.clear();
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"last");
        buf.clear();
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Eof
        ));
    }

    #[test]
    fn policy() {
        let p = PeerPolicy {
            own_uid: 999,
            group: "g".into(),
            admin_gid: Some(4242),
        };
        let none = Vec::new;
        assert!(p.allows(0, 0, none));
        assert!(p.allows(999, 1, none));
        assert!(p.allows(1000, 4242, none));
        assert!(!p.allows(1000, 1000, none));
        assert!(p.allows(1000, 1000, || vec![7, 4242]));
        let closed = PeerPolicy {
            own_uid: 999,
            group: "g".into(),
            admin_gid: None,
        };
        assert!(!closed.allows(1000, 4242, || vec![4242]));
    }

    #[test]
    fn peer_groups_match_proc_for_a_local_pair() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut from_socket = peer_groups(a.as_fd()).unwrap();
        let mut from_proc = supplementary_groups(std::process::id() as i32);
        from_socket.sort_unstable();
        from_proc.sort_unstable();
        assert_eq!(from_socket, from_proc);
        let mut own: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        own.sort_unstable();
        assert_eq!(from_socket, own);
    }
}
