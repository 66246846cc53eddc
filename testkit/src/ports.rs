//! Free loopback ports, chosen by the kernel.

use std::io;
use std::net::TcpListener;

/// `N` different free ports: all are held until every one is chosen, since the kernel may hand
/// a port it just released out again at once.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let held = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// One free port.
pub fn free_port() -> io::Result<u16> {
    let [port] = free_ports::<1>()?;
    Ok(port)
}

/// A free port P with P+1 free too (swtpm's control channel).
pub fn free_port_pair() -> io::Result<u16> {
    for _ in 0..50 {
        let port = free_port()?;
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free pair of loopback ports for swtpm"))
}
