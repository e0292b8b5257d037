//! A small TLS server on loopback for the client's tests, with the CA it presents.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use postern_api_client::{CaPin, CaUrl};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA for test servers: several servers of one CA share its pin, as instances of posternd
/// do.
pub struct TestCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = ca.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn pin(&self) -> CaPin {
        CaPin::of_der(&self.cert_der)
    }
}

/// A TLS server on loopback answering every request with one status and `{}`, counting
/// connections and requests.
pub struct Server {
    pub url: CaUrl,
    pub ca_pin: CaPin,
    pub connections: Arc<AtomicUsize>,
    /// Requests whose head the server read, and bytes of any request it read at all.
    pub requests: Arc<AtomicUsize>,
    pub request_bytes: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    /// A server of its own CA answering 200.
    pub fn start() -> Server {
        Server::answering(&TestCa::new(), "200 OK")
    }

    /// A server of `ca` answering every request with `status` (`"503 Service Unavailable"`).
    pub fn answering(ca: &TestCa, status: &'static str) -> Server {
        let ca_key = KeyPair::from_pem(&ca.key_pem).unwrap();
        let ca_cert_der = ca.cert_der.clone();
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let chain = vec![
            CertificateDer::from(leaf_cert.der().to_vec()),
            CertificateDer::from(ca_cert_der),
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
                            let answer = format!(
                                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                                 content-length: 2\r\n\r\n{{}}"
                            );
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
            ca_pin: ca.pin(),
            connections,
            requests,
            request_bytes,
            _rt: rt,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
