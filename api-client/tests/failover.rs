//! When a client with several CA URLs goes to the next one, against small TLS servers of one
//! CA on loopback: a dead address and a 503 are passed over (a 503 only for a request that is
//! safe to send again), an answer such as 401 never is, the address that answered is kept for
//! the next call, and when none answers the error names each with its reason.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::Ordering;

use postern_api_client::{blocking, ApiError, CaUrl, CaUrls, Resend};

mod common;
use common::{Server, TestCa};

/// A URL on which nothing listens: its port was free a moment ago.
fn dead_url() -> CaUrl {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}").parse().unwrap()
}

fn urls(list: &[&CaUrl]) -> CaUrls {
    CaUrls::new(list.iter().map(|u| (*u).clone())).unwrap()
}

fn requests(s: &Server) -> usize {
    s.requests.load(Ordering::SeqCst)
}

#[test]
fn a_dead_first_address_is_passed_over_and_the_live_one_kept_for_the_next_calls() {
    let ca = TestCa::new();
    let live = Server::answering(&ca, "200 OK");
    let dead = dead_url();
    let client = blocking::Client::new(urls(&[&dead, &live.url]), ca.pin(), None).unwrap();
    // Even a request that may not be sent twice: it reached no server at the dead address.
    let _: serde_json::Value = client.post("/v1/login", &serde_json::json!({})).unwrap();
    for _ in 0..2 {
        let _: serde_json::Value = client.get("/v1/ping").unwrap();
    }
    assert_eq!(requests(&live), 3);
    // The calls after the first went straight to the address that answered.
    assert_eq!(live.connections(), 1);
}

#[test]
fn a_503_is_passed_over_only_by_a_request_that_is_safe_to_send_again() {
    let ca = TestCa::new();
    let busy = Server::answering(&ca, "503 Service Unavailable");
    let live = Server::answering(&ca, "200 OK");
    let client = blocking::Client::new(urls(&[&busy.url, &live.url]), ca.pin(), None).unwrap();

    // A login spends its one-time code: the 503 does not say that nothing was done.
    let e = client
        .post::<_, serde_json::Value>("/v1/login", &serde_json::json!({}))
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!((requests(&busy), requests(&live)), (1, 0));

    // A read is the same everywhere.
    let _: serde_json::Value = client.get("/v1/ping").unwrap();
    assert_eq!((requests(&busy), requests(&live)), (2, 1));
    let _: serde_json::Value = client
        .post_resend(Resend::Always, "/v1/renew", &serde_json::json!({}), None)
        .unwrap();
    assert_eq!((requests(&busy), requests(&live)), (2, 2));
}

#[test]
fn a_refusal_is_an_answer_and_is_not_sent_on() {
    let ca = TestCa::new();
    let refusing = Server::answering(&ca, "401 Unauthorized");
    let live = Server::answering(&ca, "200 OK");
    let client = blocking::Client::new(urls(&[&refusing.url, &live.url]), ca.pin(), None).unwrap();
    for _ in 0..2 {
        let e = client
            .post_resend::<_, serde_json::Value>(
                Resend::Always,
                "/v1/renew",
                &serde_json::json!({}),
                None,
            )
            .unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
    }
    assert_eq!((requests(&refusing), requests(&live)), (2, 0));
}

#[test]
fn with_no_address_answering_the_error_names_each_and_its_reason() {
    let ca = TestCa::new();
    let dead = dead_url();
    let busy = Server::answering(&ca, "503 Service Unavailable");
    let client = blocking::Client::new(urls(&[&dead, &busy.url]), ca.pin(), None).unwrap();
    let e = client.get::<serde_json::Value>("/v1/ping").unwrap_err();
    let ApiError::Unavailable { tried, rounds } = &e else {
        panic!("not the error of every address: {e:?}");
    };
    assert_eq!(*rounds, postern_api_client::ROUNDS);
    assert_eq!(tried.len(), 2, "{e}");
    // Every round tried both.
    assert_eq!(requests(&busy), postern_api_client::ROUNDS as usize);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("no CA address answered in {} rounds: ", rounds)),
        "{text}"
    );
    assert!(
        text.contains(&format!("could not reach {dead}/v1/ping: ")),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(
        text.contains(&format!("{}/v1/ping answered: ", busy.url)),
        "{text}"
    );
    assert!(text.contains("503"), "{text}");
}

#[test]
fn one_address_is_tried_once_as_before() {
    let ca = TestCa::new();
    let busy = Server::answering(&ca, "503 Service Unavailable");
    let client = blocking::Client::new(&busy.url, ca.pin(), None).unwrap();
    let e = client.get::<serde_json::Value>("/v1/ping").unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!(requests(&busy), 1);
}
