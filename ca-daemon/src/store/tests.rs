//! The same store-level tests on both backends: the embedded SQLite file and a real
//! PostgreSQL server (Debian's package, initdb in a temporary directory by the test harness).

use postern_core::api::RecordingMeta;
use postern_core::{CertKind, NodeKind, Username};

use super::{audit, certs, locks, meta, nodes, recordings, tokens, users, Tx};
use crate::config::{PgSettings, Storage};
use crate::db::Db;

fn alice() -> Username {
    "alice".parse().unwrap()
}

/// Runs one store operation in its own transaction.
async fn run<T: Send + 'static>(
    db: &Db,
    f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T> + Send + 'static,
) -> T {
    db.run(f).await.unwrap()
}

async fn users_tokens_and_locks(db: &Db) {
    run(db, |tx| {
        users::add_invited(tx, "alice", "invite-hash", 2_000, 1_000)
    })
    .await;
    assert_eq!(
        run(db, |tx| users::enrolled(tx, "alice")).await,
        Some(false)
    );
    run(db, |tx| {
        users::enroll(tx, &alice(), "pw-hash", &[0, 1, 2, 255])
    })
    .await;
    run(db, |tx| {
        users::login_succeeded(tx, &alice(), 57_000_000, 1_100)
    })
    .await;
    let row = run(db, |tx| users::get(tx, "alice")).await.unwrap();
    assert_eq!(row.password_hash.as_deref(), Some("pw-hash"));
    assert_eq!(row.totp_secret.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert_eq!(row.last_totp_step, 57_000_000);
    assert_eq!(
        run(db, |tx| users::get(tx, "nobody")).await.map(|_| ()),
        None
    );
    // A failed statement (a second alice) fails only its own transaction.
    let dup = db
        .run(|tx| users::add_invited(tx, "alice", "h", 1, 1))
        .await;
    assert!(dup.is_err());
    assert_eq!(run(db, users::list).await.len(), 1);

    let t = tokens::NewToken {
        id: "tok1",
        hash: "hash1",
        kind: NodeKind::Node,
        labels: "env=prod",
        name: "web1",
        replace: true,
        expires: 5_000,
        created_at: 1_000,
    };
    run(db, move |tx| tokens::add(tx, &t)).await;
    let found = run(db, |tx| tokens::find(tx, "hash1")).await.unwrap();
    assert!(found.replace);
    assert_eq!(run(db, |tx| tokens::list_live(tx, 4_000)).await.len(), 1);
    assert!(run(db, |tx| tokens::list_live(tx, 6_000)).await.is_empty());
    run(db, |tx| tokens::spend(tx, "hash1")).await;
    assert!(run(db, |tx| tokens::find(tx, "hash1")).await.is_none());

    let a = run(db, |tx| {
        locks::add(tx, "user", "alice", "left", 1_000, None, "admin")
    })
    .await;
    let b = run(db, |tx| {
        locks::add(tx, "node", "web1", "patching", 1_000, Some(1_500), "admin")
    })
    .await;
    assert!(b > a, "lock ids grow: {a} then {b}");
    assert_eq!(run(db, |tx| locks::active(tx, 1_200)).await.len(), 2);
    assert_eq!(run(db, |tx| locks::active(tx, 1_600)).await.len(), 1);
    assert!(run(db, move |tx| locks::remove(tx, a)).await);
    assert!(!run(db, move |tx| locks::remove(tx, a)).await);
}

async fn certs_and_recordings(db: &Db) {
    let mut serials = Vec::new();
    for _ in 0..3 {
        serials.push(
            run(db, |tx| {
                certs::record(
                    tx,
                    &certs::CertRow {
                        kind: CertKind::SshUser,
                        subject: "alice",
                        principals: "alice,deploy",
                        valid_after: 1_000,
                        valid_before: 9_000,
                        issued_at: 1_000,
                        fingerprint: "SHA256:x",
                    },
                )
            })
            .await,
        );
    }
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(serials.len(), 3);
    // The full 63-bit range survives the round trip.
    let s = serials[2];
    let got = run(db, move |tx| certs::by_serial(tx, CertKind::SshUser, s))
        .await
        .unwrap();
    assert_eq!(
        (got.subject.as_str(), got.revoked, got.valid_before),
        ("alice", false, 9_000)
    );
    assert!(
        run(db, move |tx| certs::by_serial(tx, CertKind::SshHost, s))
            .await
            .is_none()
    );
    assert_eq!(run(db, |tx| certs::revoke_subject(tx, "alice")).await, 3);
    let live = run(db, |tx| certs::live_ssh(tx, 2_000)).await;
    assert!(live
        .iter()
        .all(|c| c.revoked && c.kind == Some(CertKind::SshUser)));
    assert_eq!(
        run(db, |tx| certs::revoked_user_certs(tx, 2_000))
            .await
            .len(),
        3
    );

    let m = |id: &str, user: &str| RecordingMeta {
        id: id.parse().unwrap(),
        user: user.parse().unwrap(),
        login: "root".parse().unwrap(),
        node: "web1".parse().unwrap(),
        gateway: "gw1".into(),
        started_at: 1_500,
        ended_at: 1_600,
        interrupted: false,
        bytes: 42,
    };
    let (mine, theirs) = (m("s-1", "alice"), m("s-2", "bob"));
    let (m1, m2) = (mine.clone(), theirs.clone());
    assert!(
        run(db, move |tx| recordings::insert(
            tx, &m1, "sha", "env=prod", 1_500, 1_700
        ))
        .await
    );
    assert!(
        run(db, move |tx| recordings::insert(
            tx, &m2, "sha", "env=dev", 1_500, 1_700
        ))
        .await
    );
    let again = mine.clone();
    assert!(
        !run(db, move |tx| recordings::insert(
            tx, &again, "sha", "", 1_500, 1_700
        ))
        .await
    );
    // alice sees her own, and others' only with labels she may view.
    let seen = |labels: Vec<String>| async move {
        run(db, move |tx| {
            recordings::list_visible(tx, &alice(), &labels, None, None, 10)
        })
        .await
        .into_iter()
        .map(|r| r.id.to_string())
        .collect::<Vec<_>>()
    };
    assert_eq!(seen(vec![]).await, ["s-1"]);
    let mut both = seen(vec!["env=dev".into()]).await;
    both.sort();
    assert_eq!(both, ["s-1", "s-2"]);
    run(db, |tx| {
        recordings::set_received(tx, "s-3", "gw1", 100, 1_000)
    })
    .await;
    run(db, |tx| {
        recordings::set_received(tx, "s-4", "gw1", 23, 1_000)
    })
    .await;
    assert_eq!(
        run(db, |tx| recordings::others_received(tx, "gw1", "s-3")).await,
        23
    );
    assert_eq!(
        run(db, |tx| recordings::others_received(tx, "gw1", "none")).await,
        123
    );
}

async fn the_audit_chain_and_meta(db: &Db) {
    // More events than one page of `for_each_event`.
    let n = 2_100i64;
    run(db, move |tx| {
        let mut prev = String::new();
        for seq in 1..=n {
            let hash = format!("h{seq}");
            audit::insert_event(
                tx,
                &audit::StoredEvent {
                    seq,
                    ts: 1_000 + seq,
                    kind: "test.event".into(),
                    actor: "t".into(),
                    detail: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    cp_hash: None,
                    cp_sig: None,
                },
            )?;
            prev = hash;
        }
        audit::insert_checkpoint(tx, n, "h-last", "sig1")?;
        audit::replace_checkpoint(tx, n, "h-last", "sig2")
    })
    .await;
    assert_eq!(run(db, audit::head).await, Some((n, format!("h{n}"))));
    let (count, last) = run(db, |tx| {
        let (mut count, mut last) = (0i64, 0i64);
        audit::for_each_event(tx, |e| {
            assert_eq!(e.seq, last + 1, "events out of order");
            (count, last) = (count + 1, e.seq);
            Ok(())
        })?;
        Ok((count, last))
    })
    .await;
    assert_eq!((count, last), (n, n));
    assert_eq!(run(db, audit::newest_checkpoint).await.unwrap().sig, "sig2");
    assert_eq!(
        run(db, |tx| audit::tail(tx, 3))
            .await
            .first()
            .map(|e| e.seq),
        Some(n - 2)
    );
    assert!(run(db, |tx| audit::first_report(tx, "gw1", "e1", 1)).await);
    assert!(!run(db, |tx| audit::first_report(tx, "gw1", "e1", 2)).await);

    // The KRL's version never goes back, whatever an instance's clock says.
    assert_eq!(run(db, |tx| meta::krl_version(tx, 1_000)).await, 1_000);
    assert_eq!(run(db, |tx| meta::krl_version(tx, 990)).await, 1_000);
    assert_eq!(run(db, |tx| meta::krl_version(tx, 1_001)).await, 1_001);
    run(db, |tx| meta::claim_ca(tx, "sha256:aa", "c.test")).await;
    run(db, |tx| meta::claim_ca(tx, "sha256:aa", "c.test")).await;
    let e = db
        .run(|tx| meta::claim_ca(tx, "sha256:bb", "c.test"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must hold the same keys"), "{e}");
}

async fn servers_and_gateways(db: &Db) {
    for (name, kind, address) in [
        ("web1", NodeKind::Node, Some("127.0.0.1:22")),
        ("db1", NodeKind::Node, None),
        ("gw1", NodeKind::Gateway, None),
    ] {
        run(db, move |tx| {
            nodes::add(
                tx,
                &nodes::NewNode {
                    name,
                    kind,
                    address,
                    labels: "env=prod",
                    host_key: "ssh-ed25519 AAAA",
                    host_cert_expiry: 9_000,
                    identity_serial: 1 << 62,
                    egress: Some("127.0.0.1"),
                    seen_from: None,
                    joined_at: 1_000,
                },
            )
        })
        .await;
    }
    assert_eq!(run(db, |tx| nodes::list(tx, None)).await.len(), 3);
    assert_eq!(
        run(db, |tx| nodes::list(tx, Some("gateway"))).await.len(),
        1
    );
    assert_eq!(
        run(db, |tx| nodes::kind_of(tx, "gw1")).await,
        Some(NodeKind::Gateway)
    );
    let routable = run(db, nodes::routable_servers).await;
    assert_eq!(
        routable.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["web1"]
    );
    assert!(run(db, |tx| nodes::server(tx, "gw1")).await.is_none());
    assert_eq!(
        run(db, |tx| nodes::gateway_egress(tx, "gw1"))
            .await
            .as_deref(),
        Some("127.0.0.1")
    );
    run(db, |tx| nodes::touch(tx, "web1", 1_234)).await;
    let s = nodes::GatewaySession {
        id: "s-1".into(),
        gateway: "gw1".into(),
        user: "alice".into(),
        login: "root".into(),
        node: "web1".into(),
        labels: Some("env=prod".into()),
        first_authorized: 1_000,
    };
    run(db, move |tx| nodes::add_session(tx, &s)).await;
    let got = run(db, |tx| nodes::session(tx, "s-1")).await.unwrap();
    assert_eq!(
        (got.user.as_str(), got.labels.as_deref()),
        ("alice", Some("env=prod"))
    );
    assert!(run(db, |tx| nodes::remove(tx, "db1")).await);
}

async fn several_certificates_at_once(db: &Db) {
    // Two rows at once (pipelined on PostgreSQL), each with its own serial and kind.
    let two = run(db, |tx| {
        let row = |kind, principals| certs::CertRow {
            kind,
            subject: "bob",
            principals,
            valid_after: 1_000,
            valid_before: 9_000,
            issued_at: 1_000,
            fingerprint: "SHA256:y",
        };
        certs::record_all(
            tx,
            &[
                row(CertKind::SshUser, "alice"),
                row(CertKind::X509Client, ""),
            ],
        )
    })
    .await;
    assert_eq!(two.len(), 2);
    assert_ne!(two[0], two[1]);
    let (s0, s1) = (two[0], two[1]);
    assert!(
        run(db, move |tx| certs::by_serial(tx, CertKind::SshUser, s0))
            .await
            .is_some()
    );
    assert!(
        run(db, move |tx| certs::by_serial(tx, CertKind::X509Client, s1))
            .await
            .is_some()
    );
    assert!(
        run(db, move |tx| certs::by_serial(tx, CertKind::SshUser, s1))
            .await
            .is_none()
    );
}

async fn every_test(db: Db) {
    users_tokens_and_locks(&db).await;
    servers_and_gateways(&db).await;
    certs_and_recordings(&db).await;
    several_certificates_at_once(&db).await;
    the_audit_chain_and_meta(&db).await;
}

async fn db_pg_lease(storage: &Storage) -> Db {
    Db::open_storage(storage).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_on_sqlite() {
    let d = tempfile::tempdir().unwrap();
    every_test(Db::open(&d.path().join("posternd.db")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_on_postgres() {
    let pg = tokio::task::spawn_blocking(postern_tests::Postgres::start)
        .await
        .unwrap();
    let storage = Storage::Postgres(PgSettings {
        url: pg.url(),
        password_file: None,
        ca_file: None,
    });
    every_test(Db::open_storage(&storage).await.unwrap()).await;
    // The schema is made once: a second instance opens the same database as it is.
    // One holder at a time; a lease run out is taken by the next.
    assert!(
        run(&db_pg_lease(&storage).await, |tx| meta::take_lease(
            tx, "w", "one", 10, 20
        ))
        .await
    );
    let again = Db::open_storage(&storage).await.unwrap();
    assert!(!run(&again, |tx| meta::take_lease(tx, "w", "two", 15, 25)).await);
    assert!(run(&again, |tx| meta::take_lease(tx, "w", "one", 15, 30)).await);
    assert!(run(&again, |tx| meta::take_lease(tx, "w", "two", 31, 40)).await);
    assert_eq!(run(&again, audit::head).await.map(|h| h.0), Some(2_100));
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// The audit head a PostgreSQL session remembers within a batch (one read fewer per append)
/// never outlives what it describes: a rollback to the job's savepoint forgets it, and so
/// does the commit, after which another instance may append.
#[test]
fn the_audit_head_remembered_in_a_batch_is_forgotten_at_a_rollback_and_at_the_commit() {
    use super::pg;
    let server = postern_tests::Postgres::start();
    let settings = PgSettings {
        url: server.url(),
        password_file: None,
        ca_file: None,
    };
    let (s, other) = (
        pg::Session::connect(&settings).unwrap(),
        pg::Session::connect(&settings).unwrap(),
    );
    pg::init_schema(&s).unwrap();
    let event = |seq: i64, hash: &str| audit::StoredEvent {
        seq,
        ts: 1,
        kind: "test".into(),
        actor: "t".into(),
        detail: "{}".into(),
        prev_hash: "p".into(),
        hash: hash.into(),
        cp_hash: None,
        cp_sig: None,
    };
    let head = |s: &pg::Session| audit::head(&Tx::postgres(s)).unwrap();
    s.batch("BEGIN; SAVEPOINT job").unwrap();
    audit::insert_event_with_checkpoint(&Tx::postgres(&s), &event(1, "h1"), "h1", "sig").unwrap();
    assert_eq!(head(&s), Some((1, "h1".into())));
    s.batch("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job; SAVEPOINT job")
        .unwrap();
    assert_eq!(head(&s), None, "the rolled-back head is still remembered");
    audit::insert_event_with_checkpoint(&Tx::postgres(&s), &event(1, "h1b"), "h1b", "sig").unwrap();
    s.batch("RELEASE SAVEPOINT job; COMMIT").unwrap();
    // Another instance appends; this one's next transaction reads the head it wrote.
    other.batch("BEGIN").unwrap();
    audit::insert_event_with_checkpoint(&Tx::postgres(&other), &event(2, "h2"), "h2", "sig")
        .unwrap();
    other.batch("COMMIT").unwrap();
    s.batch("BEGIN").unwrap();
    assert_eq!(
        head(&s),
        Some((2, "h2".into())),
        "a stale head after the commit"
    );
    s.batch("COMMIT").unwrap();
}
