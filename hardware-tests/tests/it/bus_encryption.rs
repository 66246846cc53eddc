//! The replica key never crosses the TPM link in clear: a recording proxy between migd's TPM
//! service and swtpm sees every byte of provisioning and unsealing, and the key is not among
//! them (the sessions that carry it are salted and encrypt it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use hardware_tests::Swtpm;
use mig::tpm::{KeyRole, Tpm, TpmSettings};
use sha2::{Digest, Sha256};

type Recording = Arc<Mutex<Vec<u8>>>;

/// Forwards `listen` → 127.0.0.1:`target`, recording both directions.
fn proxy(listen: TcpListener, target: u16, recording: Recording) {
    std::thread::spawn(move || {
        for client in listen.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let recording = recording.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = from.read(&mut buffer) {
                        if n == 0 || to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                        recording.lock().unwrap().extend_from_slice(&buffer[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_replica_key_is_encrypted_on_the_tpm_link() {
    let swtpm = Swtpm::start_software().unwrap();
    let swtpm_port: u16 = swtpm.tcti().rsplit('=').next().unwrap().parse().unwrap();
    let port = hardware_tests::free_port_pair().unwrap();
    let recording = Recording::default();
    for offset in [0, 1] {
        let listener = TcpListener::bind(("127.0.0.1", port + offset)).unwrap();
        proxy(listener, swtpm_port + offset, recording.clone());
    }
    let settings = TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        ..swtpm.settings(&[7])
    };

    let state = tempfile::tempdir().unwrap();
    let tpm = Tpm::connect(&settings).unwrap();
    tpm.provision(state.path()).unwrap();
    tpm.load(state.path()).unwrap();
    let key = tpm.unseal_replica_key().unwrap();
    tpm.sign(KeyRole::Tls, b"visible").unwrap();
    drop(tpm);

    let seen = recording.lock().unwrap();
    // The recorder works: the digest signed under a password session travels in clear.
    assert!(
        contains(&seen, &Sha256::digest(b"visible")),
        "proxy saw no traffic"
    );
    assert!(
        !contains(&seen, &key[..]),
        "the replica key crossed the link in clear"
    );
    assert!(
        !contains(&seen, &key[..8]),
        "part of the replica key crossed the link in clear"
    );
}
