//! The admin socket's server: binds the Unix socket (mode 0660, admin group), accepts
//! connections, checks each peer ([`super::peer`]) and serves typed requests framed by the
//! protocol crate's [`ServerCodec`], in order, any number per connection.
//!
//! Validates: who connects (refused with a `forbidden` answer and closed), line length
//! ([`mig_admin_proto::MAX_REQUEST_BYTES`]: a longer line gets `request_too_large` and the
//! connection is closed, as the rest of it cannot be framed), and that each line is a request
//! (otherwise a typed `malformed_request`, `unknown-command` or `bad-request` answer, and the
//! connection goes on).
//! Does not validate what a request asks for: that is the handler's job ([`AdminHandler`]).
//!
//! Large imports: a request may carry NDJSON text up to the line limit; bigger inputs are sent
//! as several requests on one connection ([`PeerCred::connection`] tells the handler they
//! belong together, and [`AdminHandler::connection_closed`] says when the sender is gone). See
//! docs/operations.md.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use mig_admin_proto::{AdminError, ErrorCode, FrameError, Request, Response, ServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::codec::{Decoder, Encoder};

use super::peer::{peer_of, PeerCred, PeerPolicy};

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

/// A handler's answer, as a boxed future (no async-trait).
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// The command set behind the socket.
pub trait AdminHandler: Send + Sync + 'static {
    /// Answers one request. The caller has already passed the peer check.
    fn handle(&self, peer: PeerCred, request: Request) -> HandlerFuture<'_>;

    /// The connection `peer.connection` is gone: drop any state kept for it.
    fn connection_closed(&self, _peer: PeerCred) {}
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
    let mut codec = ServerCodec::new();
    let mut out = BytesMut::new();
    let peer = match peer_of(&stream, connection) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("admin socket: cannot read peer credentials ({e}); closing");
            return;
        }
    };
    let (mut read, mut write) = stream.into_split();
    if !policy.admits(&peer, read.as_ref()) {
        tracing::warn!(
            "admin socket: refused uid {} gid {} pid {}: not root, not migd's user, not in group {:?}",
            peer.uid,
            peer.gid,
            peer.pid,
            policy.group
        );
        let answer = Response::Error(AdminError::new(
            ErrorCode::Forbidden,
            format!(
                "permission denied: uid {} is not allowed on the admin socket (ask for membership of group {:?})",
                peer.uid, policy.group
            ),
        ));
        let _ = send(&mut codec, &mut out, &mut write, &answer).await;
        return;
    }
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut number = 0u64;
    let mut eof = false;
    loop {
        let decoded = if eof {
            codec.decode_eof(&mut input)
        } else {
            codec.decode(&mut input)
        };
        let frame = match decoded {
            Ok(Some(frame)) => frame,
            Ok(None) if eof => break,
            Ok(None) => {
                // Whole reads, not the few bytes BytesMut grows by on its own.
                input.reserve(64 * 1024);
                match read.read_buf(&mut input).await {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("admin connection {connection} read error: {e}");
                        break;
                    }
                }
                continue;
            }
            Err(FrameError::TooLong { max }) => {
                let answer = Response::Error(AdminError::new(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "request line {} is longer than {max} bytes; split it (see docs/operations.md)",
                        number + 1
                    ),
                ));
                let _ = send(&mut codec, &mut out, &mut write, &answer).await;
                // The rest of the line is still in flight: we cannot find the next request.
                break;
            }
            Err(e) => {
                tracing::debug!("admin connection {connection}: {e}");
                break;
            }
        };
        number += 1;
        let answer = match frame {
            Ok(request) => handler.handle(peer, request).await,
            Err(error) => Response::Error(AdminError::new(
                error.code,
                format!("request line {number}: {}", error.message),
            )),
        };
        if let Err(e) = send(&mut codec, &mut out, &mut write, &answer).await {
            tracing::debug!("admin connection {connection} write error: {e}");
            break;
        }
    }
    handler.connection_closed(peer);
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    codec: &mut ServerCodec,
    out: &mut BytesMut,
    write: &mut W,
    answer: &Response,
) -> Result<(), FrameError> {
    out.clear();
    if let Err(e) = codec.encode(answer, out) {
        // Too big to send (an export over the answer limit): say so instead of going quiet.
        tracing::warn!("admin answer not sent: {e}");
        out.clear();
        let refusal = Response::Error(AdminError::new(
            ErrorCode::Internal,
            format!("the answer cannot be sent: {e}"),
        ));
        codec.encode(&refusal, out)?;
    }
    write.write_all(out).await?;
    write.flush().await?;
    Ok(())
}
