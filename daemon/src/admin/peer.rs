//! Who is on the other end of an admin connection, and whether they may use it.
//!
//! Validates: the peer's kernel credentials (SO_PEERCRED at connect time) against root,
//! migd's own user, or a member of the admin group, primary or supplementary (SO_PEERGROUPS,
//! else `/proc/<pid>/status`). Fails closed: unreadable credentials or groups mean no entry
//! (beyond root and migd's user). Does not validate what a request asks for.

use std::os::fd::AsFd;

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

/// Who may talk to the socket.
#[derive(Debug, Clone)]
pub(super) struct PeerPolicy {
    pub(super) own_uid: u32,
    pub(super) group: String,
    pub(super) admin_gid: Option<u32>,
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

/// The credentials of `socket`'s peer, or why they could not be read.
pub(super) fn peer_of(
    socket: &tokio::net::UnixStream,
    connection: u64,
) -> std::io::Result<PeerCred> {
    let cred = socket.peer_cred()?;
    Ok(PeerCred {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
        connection,
    })
}

impl PeerPolicy {
    /// Whether the peer on `socket` may use the admin socket; its supplementary groups are
    /// only read when its uid and primary group do not already decide.
    pub(super) fn admits(&self, peer: &PeerCred, socket: &tokio::net::UnixStream) -> bool {
        let groups = || {
            peer_groups(socket.as_fd()).unwrap_or_else(|e| {
                tracing::debug!(
                    "SO_PEERGROUPS failed ({e}); reading /proc/{}/status",
                    peer.pid
                );
                supplementary_groups(peer.pid)
            })
        };
        self.allows(peer.uid, peer.gid, groups)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
