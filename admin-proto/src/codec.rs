//! Framing: one JSON object per `\n`-terminated UTF-8 line (tokio-util's `LinesCodec` with a
//! maximum length, so a peer cannot make the other end buffer without bound). Usable with
//! `FramedRead` on a tokio stream or by hand on a blocking one.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};

use crate::{decode_request, AdminError, ErrorCode, Request, Response};

/// Longest request line, newline excluded. Imports send NDJSON in chunks of a few MiB.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Longest answer line, newline excluded: an audit export carries the whole trail in one
/// answer, so this is larger than the request limit; longer exports take `--since`.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// Why a line could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent a line longer than the limit; what follows cannot be framed reliably.
    #[error("line is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A line to send is longer than the limit the other end enforces.
    #[error("line is {len} bytes, over the admin socket's {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    #[error("cannot encode the line as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("admin socket I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

fn lines_error(e: LinesCodecError, max: usize) -> FrameError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => FrameError::TooLong { max },
        LinesCodecError::Io(e) => FrameError::Io(e),
    }
}

/// `LinesCodec` reports a line that is not UTF-8 as `InvalidData` after consuming it, so the
/// next line can still be read.
fn line_or_not_utf8(
    decoded: Result<Option<String>, LinesCodecError>,
    max: usize,
) -> Result<Option<Result<String, AdminError>>, FrameError> {
    match decoded {
        Ok(line) => Ok(line.map(Ok)),
        Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Some(
            Err(AdminError::new(ErrorCode::MalformedRequest, "not UTF-8")),
        )),
        Err(e) => Err(lines_error(e, max)),
    }
}

fn encode_line<T: serde::Serialize>(
    lines: &mut LinesCodec,
    value: &T,
    max: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let line = serde_json::to_string(value).map_err(FrameError::Encode)?;
    if line.len() > max {
        return Err(FrameError::TooLarge {
            len: line.len(),
            max,
        });
    }
    lines.encode(line, dst).map_err(|e| lines_error(e, max))
}

/// migd's end: decodes requests (an undecodable line is an error answer to send, not the end
/// of the connection), encodes responses.
#[derive(Debug)]
pub struct ServerCodec {
    lines: LinesCodec,
}

impl ServerCodec {
    pub fn new() -> ServerCodec {
        ServerCodec::with_max_request(MAX_REQUEST_BYTES)
    }

    /// With another request limit (tests).
    pub fn with_max_request(max: usize) -> ServerCodec {
        ServerCodec {
            lines: LinesCodec::new_with_max_length(max),
        }
    }

    fn decoded(
        &self,
        line: Option<Result<String, AdminError>>,
    ) -> Option<Result<Request, AdminError>> {
        line.map(|line| line.and_then(|line| decode_request(&line)))
    }
}

impl Default for ServerCodec {
    fn default() -> ServerCodec {
        ServerCodec::new()
    }
}

impl Decoder for ServerCodec {
    type Item = Result<Request, AdminError>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        let max = self.lines.max_length();
        let line = line_or_not_utf8(self.lines.decode(src), max)?;
        Ok(self.decoded(line))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        let max = self.lines.max_length();
        let line = line_or_not_utf8(self.lines.decode_eof(src), max)?;
        Ok(self.decoded(line))
    }
}

impl Encoder<&Response> for ServerCodec {
    type Error = FrameError;

    fn encode(&mut self, response: &Response, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_line(&mut self.lines, response, MAX_ANSWER_BYTES, dst)
    }
}

/// migctl's end: encodes requests, decodes answer lines (typed by [`crate::decode_reply`],
/// which knows the request's answer type).
#[derive(Debug)]
pub struct ClientCodec {
    lines: LinesCodec,
}

impl ClientCodec {
    pub fn new() -> ClientCodec {
        ClientCodec {
            lines: LinesCodec::new_with_max_length(MAX_ANSWER_BYTES),
        }
    }
}

impl Default for ClientCodec {
    fn default() -> ClientCodec {
        ClientCodec::new()
    }
}

impl Decoder for ClientCodec {
    type Item = String;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, FrameError> {
        self.lines
            .decode(src)
            .map_err(|e| lines_error(e, MAX_ANSWER_BYTES))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, FrameError> {
        self.lines
            .decode_eof(src)
            .map_err(|e| lines_error(e, MAX_ANSWER_BYTES))
    }
}

impl Encoder<&Request> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, request: &Request, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_line(&mut self.lines, request, MAX_REQUEST_BYTES, dst)
    }
}
