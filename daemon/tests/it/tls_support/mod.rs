//! Shared fixtures for the tls_* tests: a throw-away PKI made with rcgen, an appliance state
//! directory served by a real listener on a loopback port, and a rustls client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use mig::keys::{InMemorySigner, Signer};
use mig::listener::{self, Handler, HandlerFuture, ListenerLimits, Peer, Role, SnapshotSource};
use mig::registry::{self, CertificateMatch, Partner};
use mig::tls::{Reloader, TlsSettings};
use mig_policy::{Agreement, PartnerType, RoleSet};
use mig_testkit::pki::{key_pair, leaf_params, set_validity};
use mig_testkit::rcgen::{self, CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use mig_testkit::{Ca, Leaf};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A CA (root or intermediate) that can issue certificates and CRLs: `mig_testkit::Ca` with
/// the defaults these tests share (partner names and a 30-day client validity).
pub struct Issuer(Ca);

impl Deref for Issuer {
    type Target = Ca;

    fn deref(&self) -> &Ca {
        &self.0
    }
}

impl Issuer {
    pub fn root(name: &str) -> Issuer {
        Issuer(Ca::root(name).unwrap())
    }

    pub fn intermediate(&self, name: &str) -> Issuer {
        Issuer(self.0.intermediate(name).unwrap())
    }

    /// A client certificate valid from `from` to `to` days relative to now.
    pub fn client_valid(&self, cn: &str, from_days: i64, to_days: i64) -> Identity {
        let now = OffsetDateTime::now_utc();
        self.client_between(
            cn,
            now + time::Duration::days(from_days),
            now + time::Duration::days(to_days),
        )
    }

    /// A client certificate valid from `not_before` to `not_after`.
    pub fn client_between(
        &self,
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Identity {
        let mut params = leaf_params(
            cn,
            vec![format!("{cn}.partner.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
            0,
            0,
        )
        .unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Partner Trust");
        params.not_before = not_before;
        params.not_after = not_after;
        self.0.issue(params).unwrap()
    }

    pub fn client(&self, cn: &str) -> Identity {
        self.client_valid(cn, -1, 30)
    }

    /// A CRL revoking `serials`, with `nextUpdate` `next_days` from now (negative: expired).
    pub fn crl(&self, serials: &[u64], next_days: i64) -> rcgen::CertificateRevocationList {
        self.0.crl(serials, next_days).unwrap()
    }
}

/// A client certificate chain (leaf first, no root) and its key.
pub type Identity = Leaf;

pub fn spki_sha256(who: &Identity) -> [u8; 32] {
    registry::cert_identity(&who.chain[0]).unwrap().spki_sha256
}

/// The appliance's own CA, TLS key and certificate for `mig.test`.
pub struct ApplianceKey {
    pub ca: Issuer,
    pub signer: Arc<dyn Signer>,
    pub chain_pem: String,
    pub key_pair: KeyPair,
}

impl ApplianceKey {
    pub fn new() -> ApplianceKey {
        let ca = Issuer::root("Appliance Test CA");
        let key_pair = key_pair().unwrap();
        let signer: Arc<dyn Signer> =
            InMemorySigner::from_pkcs8(&key_pair.serialize_der()).unwrap();
        let mut app = ApplianceKey {
            ca,
            signer,
            chain_pem: String::new(),
            key_pair,
        };
        app.chain_pem = app.chain_valid(-1, 365);
        app
    }

    /// A chain (leaf, CA) for this key valid from/to days relative to now.
    pub fn chain_valid(&self, from_days: i64, to_days: i64) -> String {
        let mut params = CertificateParams::new(vec!["mig.test".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "mig.test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, from_days, to_days);
        let cert = self.ca.sign(params, &self.key_pair).unwrap();
        format!("{}{}", cert.pem(), self.ca.pem())
    }
}

pub fn agreement(ods: &str) -> Agreement {
    Agreement {
        ods: ods.to_string(),
        name: format!("Partner {ods}"),
        partner_type: PartnerType::Ambulance,
        sites: Default::default(),
        sections: Default::default(),
        roles: RoleSet::Any,
        override_roles: RoleSet::none(),
        override_sections: None,
        expires: None,
        attested_permission: false,
    }
}

pub fn partner(ods: &str, who: &Identity) -> Partner {
    Partner {
        agreement: agreement(ods),
        identity: CertificateMatch::SpkiSha256(spki_sha256(who)),
    }
}

/// Answers `partner=<ODS|none> upstream=<name|none> protocol=<h1|h2>`; `/sleep/<ms>` waits first.
pub struct EchoHandler;

impl Handler for EchoHandler {
    fn handle(&self, peer: Peer, request: Request<Bytes>) -> HandlerFuture<'_> {
        Box::pin(async move {
            if let Some(ms) = request.uri().path().strip_prefix("/sleep/") {
                let ms: u64 = ms.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let body = format!(
                "partner={} upstream={} protocol={} body={}",
                peer.partner
                    .as_ref()
                    .map_or("none".to_string(), |p| p.agreement.ods.clone()),
                peer.upstream
                    .as_ref()
                    .map_or("none".to_string(), |u| u.name.clone()),
                match peer.protocol {
                    listener::Protocol::Http1 => "h1",
                    listener::Protocol::Http2 => "h2",
                },
                request.body().len()
            );
            let mut response = Response::new(Bytes::from(body));
            *response.status_mut() = StatusCode::OK;
            response
        })
    }
}

/// A running appliance listener over a temporary state directory.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub key: ApplianceKey,
    pub reloader: Arc<Reloader>,
    pub addr: SocketAddr,
    pub upstream_addr: SocketAddr,
    pub shutdown: watch::Sender<bool>,
    pub handle: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct Options {
    pub settings: TlsSettings,
    pub limits: ListenerLimits,
    pub poll: Option<Duration>,
    /// Makes every server signature take this long (imitates a TPM).
    pub sign_delay: Option<Duration>,
    /// Serves the partner listener with this handler instead of `EchoHandler`.
    pub handler: Option<Arc<dyn Handler>>,
}

/// Adds a fixed latency to every signature and signs one at a time, like a TPM.
#[derive(Debug)]
pub struct DelayedSigner {
    pub inner: Arc<dyn Signer>,
    pub delay: Duration,
    /// A TPM executes one command at a time.
    pub busy: std::sync::Mutex<()>,
}

impl Signer for DelayedSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, mig::keys::SignError> {
        let _one_at_a_time = self.busy.lock().unwrap();
        std::thread::sleep(self.delay);
        self.inner.sign(message)
    }

    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der()
    }
}

impl Appliance {
    /// Starts an appliance trusting `trust` (CA PEMs written to trust/), with `partners`.
    pub async fn start(trust: &[&Issuer], partners: &[Partner], options: Options) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let key = ApplianceKey::new();
        let state = dir.path();
        registry::install_appliance_chain(
            state,
            key.chain_pem.as_bytes(),
            key.signer.as_ref(),
            std::time::SystemTime::now(),
        )
        .unwrap();
        for ca in trust {
            registry::add_trust_ca(state, ca.pem().as_bytes()).unwrap();
        }
        for p in partners {
            registry::add_partner(state, p).unwrap();
        }
        let signer: Arc<dyn Signer> = match options.sign_delay {
            Some(delay) => Arc::new(DelayedSigner {
                inner: key.signer.clone(),
                delay,
                busy: Default::default(),
            }),
            None => key.signer.clone(),
        };
        let reloader = Reloader::new(state, signer, options.settings.clone()).unwrap();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let handle = listener::serve(
            tcp,
            SnapshotSource::new(reloader.subscribe(), Role::Partner),
            options.limits.clone(),
            options.handler.unwrap_or_else(|| Arc::new(EchoHandler)),
            shutdown_rx.clone(),
        );
        let upstream_tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream_tcp.local_addr().unwrap();
        listener::serve(
            upstream_tcp,
            SnapshotSource::new(reloader.subscribe(), Role::Upstream),
            options.limits,
            Arc::new(EchoHandler),
            shutdown_rx.clone(),
        );
        if let Some(interval) = options.poll {
            reloader.spawn_poll(interval, shutdown_rx);
        }
        Appliance {
            dir,
            key,
            reloader,
            addr,
            upstream_addr,
            shutdown,
            handle,
        }
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A client config trusting this appliance, presenting `who` (or nothing).
    pub fn client_config(&self, who: Option<&Identity>) -> Arc<ClientConfig> {
        client_config(&self.key.ca, who, rustls::ALL_VERSIONS, None)
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(
    server_ca: &Issuer,
    who: Option<&Identity>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Option<&[u8]>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match who {
        Some(who) => builder
            .with_client_auth_cert(who.chain.clone(), who.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Arc::new(config)
}

/// Result of one HTTP/1.1 exchange over a fresh TLS connection.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub body: String,
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    pub suite: Option<rustls::CipherSuite>,
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(ServerName::try_from("mig.test").unwrap(), tcp)
        .await
}

/// Connects from the local address `source` (any of 127.0.0.0/8 on loopback).
pub async fn connect_from(
    addr: SocketAddr,
    source: std::net::IpAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream> {
    let tcp = tcp_from(addr, source).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(ServerName::try_from("mig.test").unwrap(), tcp)
        .await
}

/// A plain TCP connection from the local address `source`.
pub async fn tcp_from(
    addr: SocketAddr,
    source: std::net::IpAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Sends one keep-alive `GET path` on an open connection and reads its response (status,
/// headers as text, body) by its content-length. `Err` once the server has closed.
pub async fn request_on(tls: &mut TlsStream, path: &str) -> std::io::Result<(u16, String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: mig.test\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                let status = parse_status(&head)
                    .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).to_string();
                return Ok((status, head, body));
            }
        }
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// True when the server closes `tls` within `within` (EOF or reset on read).
pub async fn closed_within(tls: &mut TlsStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Connects, sends `GET path` with `Connection: close`, reads the whole response. A refusal
/// in the handshake shows up as `Err` (in TLS 1.3 the client's connect succeeds and the
/// server's alert arrives on the first read).
pub async fn get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
) -> std::io::Result<Exchange> {
    let mut tls = connect(addr, config).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: mig.test\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    let (_, session) = tls.get_ref();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let version = session.protocol_version();
    let suite = session.negotiated_cipher_suite().map(|s| s.suite());
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = parse_status(&text)
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok(Exchange {
        status,
        body,
        resumed,
        version,
        suite,
    })
}

pub fn parse_status(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The TLS alert the server sent, if `error` is one.
pub fn alert(error: &std::io::Error) -> Option<rustls::AlertDescription> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Asserts the exchange was refused in the handshake with `expected` (any alert if None).
pub fn assert_refused(
    result: std::io::Result<Exchange>,
    expected: Option<rustls::AlertDescription>,
) {
    match result {
        Ok(exchange) => panic!("expected a handshake refusal, got {exchange:?}"),
        Err(error) => {
            let got = alert(&error);
            match expected {
                Some(expected) => assert_eq!(got, Some(expected), "error: {error}"),
                None => assert!(got.is_some(), "expected a TLS alert, got: {error}"),
            }
        }
    }
}
