//! What the client does with its connections, against a small TLS server on loopback: one
//! client keeps one connection open across calls (async and blocking alike), and a server
//! that does not present the pinned CA is refused before a byte of the request is sent.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;

use postern_api_client::{blocking, ApiError, CaPin, Client};

mod common;
use common::Server;

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
