//! The admin socket's client, as migctl uses it: blocking, one typed request and its typed
//! answer at a time, several in order on one connection when needed (a chunked import).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use mig_admin_proto::{decode_reply, AdminError, ClientCodec, Command, ErrorCode, FrameError};
use tokio_util::codec::{Decoder, Encoder};

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
    #[error("request is {len} bytes, over the admin socket's {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// migd's answer line is longer than the answer limit.
    #[error("migd's answer is longer than {max} bytes")]
    AnswerTooLong {
        /// The limit.
        max: usize,
    },
    /// migd closed the connection without answering.
    #[error("migd closed the admin connection without answering")]
    Closed,
    /// The answer is not the request's answer type (migd and migctl of different versions?).
    #[error("migd's answer is not understood")]
    BadResponse {
        /// The decoding error.
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
    stream: UnixStream,
    codec: ClientCodec,
    input: BytesMut,
}

impl AdminClient {
    /// Connects; a missing socket or refused connection means migd is not running.
    pub fn connect(socket_path: &Path) -> Result<AdminClient, AdminClientError> {
        let stream = UnixStream::connect(socket_path).map_err(|source| {
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
        Ok(AdminClient {
            stream,
            codec: ClientCodec::new(),
            input: BytesMut::new(),
        })
    }

    /// Limits how long [`AdminClient::call`] waits for each answer (`None`: no limit, the
    /// default, as an import may take a while). A timeout is an [`AdminClientError::Io`] of kind
    /// `WouldBlock`/`TimedOut`.
    pub fn set_timeout(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), AdminClientError> {
        self.stream
            .set_read_timeout(timeout)
            .and_then(|_| self.stream.set_write_timeout(timeout))
            .map_err(|source| AdminClientError::Io {
                operation: "set timeout",
                source,
            })
    }

    /// Sends one request and waits for its answer: `Ok(Err(_))` is migd's error answer. A
    /// transport refusal (`forbidden`) is [`AdminClientError::Forbidden`] instead.
    pub fn call<C: Command>(
        &mut self,
        request: C,
    ) -> Result<Result<C::Answer, AdminError>, AdminClientError> {
        let mut bytes = BytesMut::new();
        self.codec
            .encode(&request.into(), &mut bytes)
            .map_err(|e| match e {
                FrameError::TooLarge { len, max } => AdminClientError::TooLarge { len, max },
                other => AdminClientError::Io {
                    operation: "send",
                    source: std::io::Error::other(other),
                },
            })?;
        let sent = self
            .stream
            .write_all(&bytes)
            .and_then(|_| self.stream.flush());
        let line = match self.receive()? {
            Some(line) => line,
            None => {
                // migd may have refused us and closed before reading: the send error says less.
                sent.map_err(|source| AdminClientError::Io {
                    operation: "send",
                    source,
                })?;
                return Err(AdminClientError::Closed);
            }
        };
        match decode_reply::<C::Answer>(&line) {
            Ok(Err(error)) if error.code == ErrorCode::Forbidden => {
                Err(AdminClientError::Forbidden {
                    message: error.message,
                })
            }
            Ok(reply) => Ok(reply),
            Err(source) => Err(AdminClientError::BadResponse { source }),
        }
    }

    /// The next answer line, `None` if migd closed the connection first.
    fn receive(&mut self) -> Result<Option<String>, AdminClientError> {
        let framing = |e: FrameError| match e {
            FrameError::TooLong { max } => AdminClientError::AnswerTooLong { max },
            other => AdminClientError::Io {
                operation: "receive",
                source: std::io::Error::other(other),
            },
        };
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(line) = self.codec.decode(&mut self.input).map_err(framing)? {
                return Ok(Some(line));
            }
            let read = self
                .stream
                .read(&mut chunk)
                .map_err(|source| AdminClientError::Io {
                    operation: "receive",
                    source,
                })?;
            if read == 0 {
                return self.codec.decode_eof(&mut self.input).map_err(framing);
            }
            self.input.extend_from_slice(&chunk[..read]);
        }
    }
}

/// One request, one answer, on a fresh connection.
pub fn call<C: Command>(
    socket_path: &Path,
    request: C,
) -> Result<Result<C::Answer, AdminError>, AdminClientError> {
    AdminClient::connect(socket_path)?.call(request)
}
