//! What the client does with its connections, against a small TLS server on loopback: one
//! client keeps one connection open across calls (async and blocking alike), and a server
//! that does not present the pinned CA is refused before a byte of the request is sent.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use postern_api_client::{blocking, ApiError, CaPin, CaUrl, Client};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server on loopback answering every request with `{}`, counting connections and
/// requests.
struct Server {
    url: CaUrl,
    ca_pin: CaPin,
    connections: Arc<AtomicUsize>,
    /// Requests whose head the server read, and bytes of any request it read at all.
    requests: Arc<AtomicUsize>,
    request_bytes: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let chain = vec![
            CertificateDer::from(leaf_cert.der().to_vec()),
            CertificateDer::from(ca_cert.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let request_bytes = Arc::new(AtomicUsize::new(0));
        let (c, r, b) = (connections.clone(), requests.clone(), request_bytes.clone());
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, r, b) = (acceptor.clone(), r.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        b.fetch_add(n, Ordering::SeqCst);
                        head.extend_from_slice(&buf[..n]);
                        // Requests without a body (GET) only: each ends at its blank line.
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            r.fetch_add(1, Ordering::SeqCst);
                            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                          content-length: 2\r\n\r\n{}";
                            if tls.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Server {
            url: format!("https://{addr}").parse().unwrap(),
            ca_pin: CaPin::of_der(ca_cert.der()),
            connections,
            requests,
            request_bytes,
            _rt: rt,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[test]
fn the_async_client_keeps_one_connection_across_calls() {
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::new(&server.url, server.ca_pin, None).unwrap();
        for _ in 0..3 {
            let _: serde_json::Value = client.get("/v1/ping").await.unwrap();
        }
        // A clone shares the pool.
        let _: serde_json::Value = client.clone().get("/v1/ping").await.unwrap();
    });
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);
    assert_eq!(server.connections(), 1);
}

#[test]
fn the_blocking_client_keeps_one_connection_across_calls() {
    let server = Server::start();
    let client = blocking::Client::new(&server.url, server.ca_pin, None).unwrap();
    for _ in 0..3 {
        let _: serde_json::Value = client.get("/v1/ping").unwrap();
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    assert_eq!(server.connections(), 1);
}

#[test]
fn a_wrong_pin_is_refused_before_the_request_is_sent() {
    let server = Server::start();
    let wrong = CaPin::of_der(b"some other CA");
    let client = blocking::Client::new(&server.url, wrong, None).unwrap();
    let e = client
        .post::<_, serde_json::Value>("/v1/login", &serde_json::json!({"password": "secret"}))
        .unwrap_err();
    assert!(matches!(e, ApiError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("certificate pin mismatch"), "{e}");
    assert!(server.connections() >= 1, "the client did not even connect");
    assert_eq!(server.request_bytes.load(Ordering::SeqCst), 0);
}
