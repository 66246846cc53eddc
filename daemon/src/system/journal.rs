//! Logging to journald over its native protocol (SPEC §14): each event is one datagram of
//! `KEY=value` fields on the journal socket, so every tracing field becomes a journal field
//! (`remote` → `REMOTE`) and events of one kind carry a stable `MESSAGE_ID`. Used when
//! systemd connected stderr to the journal (`JOURNAL_STREAM` names stderr); text otherwise.
//!
//! Written here rather than taken from `tracing-journald` so the socket path can be set
//! (`MIG_JOURNAL_SOCKET`), which lets a test read what migd sends.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
pub use tracing::Level;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Overrides the socket path (tests; a journal in a container).
pub const SOCKET_ENV: &str = "MIG_JOURNAL_SOCKET";
/// Datagrams larger than this are cut to fit (journald refuses more without a memfd).
const MAX_DATAGRAM: usize = 200 * 1024;

/// Stable `MESSAGE_ID`s, one per kind of event (`journalctl MESSAGE_ID=…`). Never reuse or
/// change one: fleet alerting and log forwarding select on them. Listed in docs/operations.md.
pub mod ids {
    pub const STARTED: &str = "9188f24cbb1f400aaa4bb5c0fd469f59";
    pub const READY: &str = "9e9cbaba180a4af982c1f145fd851e1e";
    pub const STOPPING: &str = "413bc44f3b8b4dd59eeb7dbf64365016";
    pub const STOPPED: &str = "0cfbd47c148946d0bd233f0817334b13";
    pub const START_FAILED: &str = "b8136675e3ed4145904f82b979eb60d9";
    pub const RELOAD_APPLIED: &str = "4a6d1a222fe04cfebff27dcf91aaec66";
    pub const RELOAD_REJECTED: &str = "760cd497cb634456bf3317190c574ec3";
    pub const REGISTRY_FILE_NOT_APPLIED: &str = "7eec2c14104f47a59f4547b83e255322";
    pub const CERTIFICATE_EXPIRING: &str = "d4a7ff3b545948449a0a506394f9c02c";
    pub const CRL_EXPIRED: &str = "cb26e7280f894a28939db2d205f4c0c7";
    pub const CHECKPOINT_WRITTEN: &str = "74b704d7cc524e4cb352406e7deb7efa";
    pub const CHECKPOINT_FAILED: &str = "94aa6b8499d34517ab04776f62ca4d71";
    pub const AUDIT_UNAVAILABLE: &str = "863bd1d5591540fb852fa8f358b256c1";
    pub const OVERRIDE_ALERT: &str = "25a32cd44fe34536b23afd5ca4071aed";
    pub const HEALTH_FAILING: &str = "7028f157e2324035b25e0abce982d7d4";
    pub const HEALTH_RECOVERED: &str = "9e06f4fea512441082ceb916be6c83ab";
    pub const METRICS_UNAVAILABLE: &str = "72e93800a16c4d3baa693211a9fb4bb0";
    // Update steps (SPEC §14). The first four are sent by `migctl update install`, the rest
    // by the boot's health gate (image/rootfs/usr/lib/mig/health-gate, which repeats them).
    pub const UPDATE_INSTALL_STARTED: &str = "bfadadde0c20699b90d570ef944baf46";
    pub const UPDATE_REFUSED: &str = "6f6ebb4eb15df960e1080f13a9cabd84";
    pub const UPDATE_INSTALL_FAILED: &str = "a0356d1bd533619a6054b18b9734da5c";
    pub const UPDATE_INSTALLED: &str = "c9e97ac9a05c57424c904c300e444b63";
    pub const UPDATE_TRIAL_BOOT: &str = "32807bf9a143fc8a95eb15f3446b2d4a";
    pub const UPDATE_TRIAL_FAILED: &str = "f2abba167eaa337a5ad378b83f874bc3";
    pub const UPDATE_MARKED_GOOD: &str = "f78708e49211c16717cafac4878a08f8";
    pub const UPDATE_ROLLED_BACK: &str = "81d665d287ab325082d489391cb85d07";
}

/// Logs one event of a kind: `event!(warn, CRL_EXPIRED, file = %p, "CRL has expired")`. The
/// kind's id goes in the `message_id` field, which the journal layer sends as `MESSAGE_ID`.
#[macro_export]
macro_rules! journal_event {
    ($level:ident, $id:ident, $($rest:tt)+) => {
        ::tracing::$level!(message_id = $crate::system::journal::ids::$id, $($rest)+)
    };
}
pub use crate::journal_event as event;

/// The socket entries go to: `MIG_JOURNAL_SOCKET`, or journald's.
pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV).map_or_else(|| PathBuf::from(JOURNAL_SOCKET), PathBuf::from)
}

/// Sends one entry of a kind from a process that logs no other way (migctl's update steps):
/// `MESSAGE` (with the fields appended, as migd's entries), `PRIORITY`, `MESSAGE_ID`, the
/// identifier and each field in upper case.
pub fn send(
    socket: &std::path::Path,
    identifier: &str,
    message_id: &str,
    level: Level,
    message: &str,
    fields: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut text = message.to_owned();
    for (name, value) in fields {
        let _ = write!(text, " {name}={value}");
    }
    let mut out = Vec::with_capacity(256);
    put_field(&mut out, "MESSAGE", &text);
    put_field(&mut out, "MESSAGE_ID", message_id);
    put_field(&mut out, "PRIORITY", priority(&level));
    put_field(&mut out, "SYSLOG_IDENTIFIER", identifier);
    for (name, value) in fields {
        put_field(&mut out, &field_name(name), value);
    }
    out.truncate(MAX_DATAGRAM);
    UnixDatagram::unbound()?.send_to(&out, socket).map(|_| ())
}

/// Where journal datagrams go when migd should log to the journal: `MIG_JOURNAL_SOCKET`, or
/// the system socket when stderr is the journal; `None` for stderr text.
pub fn socket_from_env() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(SOCKET_ENV) {
        return Some(PathBuf::from(path));
    }
    let stream = std::env::var("JOURNAL_STREAM").ok()?;
    let stderr = nix::sys::stat::fstat(2).ok()?;
    stderr_is_journal(&stream, stderr.st_dev, stderr.st_ino).then(|| PathBuf::from(JOURNAL_SOCKET))
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, as systemd sets it) names stderr's file. A child
/// whose stderr was redirected (a shell in a unit starting migd by hand) inherits the variable
/// but not the stream, and must keep logging where its stderr goes (systemd.exec(5)).
pub fn stderr_is_journal(stream: &str, device: u64, inode: u64) -> bool {
    stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((device, inode))
}

/// A tracing layer that sends each event to journald.
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
    identifier: String,
}

impl JournalLayer {
    pub fn new(path: PathBuf) -> std::io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        // Never block a request on logging: a journal that is not reading gets the line on
        // stderr instead (which systemd also hands to the journal).
        socket.set_nonblocking(true)?;
        Ok(JournalLayer {
            socket,
            path,
            identifier: "migd".to_owned(),
        })
    }
}

/// journald's field name for a tracing field: upper case, `[A-Z0-9_]`, not starting with `_`
/// (those are trusted fields only journald sets) or a digit.
pub fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    while out.starts_with('_') || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.remove(0);
    }
    if out.is_empty() {
        out.push_str("FIELD");
    }
    out.truncate(64);
    out
}

/// Appends one field in the native format: `NAME=value\n`, or, when the value has a newline,
/// `NAME\n`, its length as 64-bit little endian, the value and `\n`.
pub fn put_field(datagram: &mut Vec<u8>, name: &str, value: &str) {
    datagram.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        datagram.push(b'\n');
        datagram.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        datagram.push(b'=');
    }
    datagram.extend_from_slice(value.as_bytes());
    datagram.push(b'\n');
}

fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field_name(field.name()), value));
        }
    }
}

/// The datagram for one event.
pub fn datagram(identifier: &str, event: &Event<'_>) -> Vec<u8> {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let meta = event.metadata();
    let mut out = Vec::with_capacity(256);
    // The fields also go in MESSAGE, so `journalctl` without `-o verbose` still shows them.
    let mut message = fields.message;
    for (name, value) in &fields.others {
        if name != "MESSAGE_ID" {
            let _ = write!(message, " {}={value}", name.to_ascii_lowercase());
        }
    }
    put_field(&mut out, "MESSAGE", message.trim_start());
    put_field(&mut out, "PRIORITY", priority(meta.level()));
    put_field(&mut out, "SYSLOG_IDENTIFIER", identifier);
    put_field(&mut out, "TARGET", meta.target());
    if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
        put_field(&mut out, "CODE_FILE", file);
        put_field(&mut out, "CODE_LINE", &line.to_string());
    }
    for (name, value) in &fields.others {
        put_field(&mut out, name, value);
    }
    out
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut bytes = datagram(&self.identifier, event);
        if bytes.len() > MAX_DATAGRAM {
            bytes.truncate(MAX_DATAGRAM);
        }
        if self.socket.send_to(&bytes, &self.path).is_err() {
            // journald is away (restarting) or behind: the line still reaches stderr.
            eprintln!("{}", String::from_utf8_lossy(&bytes).replace('\n', " "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_journald_safe() {
        assert_eq!(field_name("message_id"), "MESSAGE_ID");
        assert_eq!(field_name("_hidden.x"), "HIDDEN_X");
        assert_eq!(field_name("9lives"), "LIVES");
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(stderr_is_journal("8:12345", 8, 12345));
        assert!(!stderr_is_journal("8:12345", 8, 999));
        assert!(!stderr_is_journal("garbage", 8, 12345));
    }

    #[test]
    fn values_with_newlines_are_length_prefixed() {
        let mut out = Vec::new();
        put_field(&mut out, "A", "one");
        put_field(&mut out, "B", "x\ny");
        let mut expected = b"A=one\nB\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"x\ny\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        use ids::*;
        let all = [
            STARTED,
            READY,
            STOPPING,
            STOPPED,
            START_FAILED,
            RELOAD_APPLIED,
            RELOAD_REJECTED,
            REGISTRY_FILE_NOT_APPLIED,
            CERTIFICATE_EXPIRING,
            CRL_EXPIRED,
            CHECKPOINT_WRITTEN,
            CHECKPOINT_FAILED,
            AUDIT_UNAVAILABLE,
            OVERRIDE_ALERT,
            HEALTH_FAILING,
            HEALTH_RECOVERED,
            METRICS_UNAVAILABLE,
            UPDATE_INSTALL_STARTED,
            UPDATE_REFUSED,
            UPDATE_INSTALL_FAILED,
            UPDATE_INSTALLED,
            UPDATE_TRIAL_BOOT,
            UPDATE_TRIAL_FAILED,
            UPDATE_MARKED_GOOD,
            UPDATE_ROLLED_BACK,
        ];
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert!(all
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn an_entry_sent_by_another_process_carries_its_kind_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let journal = UnixDatagram::bind(&path).unwrap();
        send(
            &path,
            "migctl",
            ids::UPDATE_REFUSED,
            Level::WARN,
            "update refused",
            &[("bundle", "/media/usb/x.raucb"), ("reason", "two\nlines")],
        )
        .unwrap();
        let mut buf = vec![0; 4096];
        let n = journal.recv(&mut buf).unwrap();
        let mut expected = Vec::new();
        put_field(
            &mut expected,
            "MESSAGE",
            "update refused bundle=/media/usb/x.raucb reason=two\nlines",
        );
        put_field(&mut expected, "MESSAGE_ID", ids::UPDATE_REFUSED);
        put_field(&mut expected, "PRIORITY", "4");
        put_field(&mut expected, "SYSLOG_IDENTIFIER", "migctl");
        put_field(&mut expected, "BUNDLE", "/media/usb/x.raucb");
        put_field(&mut expected, "REASON", "two\nlines");
        assert_eq!(buf[..n], expected[..]);
    }

    /// The health gate is a shell script: its ids must be the ones listed here.
    #[test]
    fn the_health_gate_sends_the_listed_boot_ids() {
        let gate = include_str!("../../../image/rootfs/usr/lib/mig/health-gate");
        for id in [
            ids::UPDATE_TRIAL_BOOT,
            ids::UPDATE_TRIAL_FAILED,
            ids::UPDATE_MARKED_GOOD,
            ids::UPDATE_ROLLED_BACK,
        ] {
            assert!(gate.contains(id), "health-gate does not send {id}");
        }
    }
}
