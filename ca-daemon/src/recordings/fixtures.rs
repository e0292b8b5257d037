//! Test fixtures shared by the recordings modules' tests: a service with a small policy, an
//! authorized session, metadata and casts.
#![cfg(test)]

use std::sync::Arc;

use postern_core::api::{RecordingComplete, RecordingMeta, RecordingUpload};
use postern_core::{NodeName, Policy};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::claim::Store;
use super::files::prepare_dir;
use super::{Outcome, UPLOAD_SLOTS};
use crate::db::Db;
use crate::service::{now, Refusal, Service};

pub(super) fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub(super) const CAST: &[u8] = b"{\"version\": 2}\n[0.1, \"o\", \"hi\"]\n";

pub(super) const POLICY: &str = r#"
[roles.dev]
logins = ["root"]
nodes = { env = "dev" }

[roles.dev-viewer]
logins = ["root"]
nodes = { env = "dev" }
view_recordings = { env = "dev" }

[users.alice]
roles = ["dev"]
[users.bob]
roles = ["dev"]
[users.dave]
roles = ["dev-viewer"]
"#;

pub(super) async fn service(max_bytes: u64, chunk_bytes: u64) -> (tempfile::TempDir, Service) {
    let d = tempfile::tempdir().unwrap();
    crate::keys::create(d.path(), "c.test", &["localhost".to_owned()], now()).unwrap();
    let keys = Arc::new(crate::keys::load(d.path()).unwrap());
    prepare_dir(&d.path().join("recordings")).unwrap();
    let svc = Service {
        cluster: "c.test".parse().unwrap(),
        gateways: Vec::new(),
        keys,
        db: Db::open(&d.path().join("posternd.db")).unwrap(),
        policy: std::sync::RwLock::new(Arc::new(Policy::parse(POLICY, "policy.toml").unwrap())),
        policy_source: crate::policy_db::PolicySource::File("policy.toml".into()),
        ghosts: Default::default(),
        recordings_dir: d.path().join("recordings"),
        upload_slots: Arc::new(tokio::sync::Semaphore::new(UPLOAD_SLOTS)),
        recordings: Store::new(max_bytes, chunk_bytes),
        limits: Default::default(),
    };
    (d, svc)
}

/// A session as `/v1/gateway/authorize` records it (user alice, login root).
pub(super) async fn authorize(db: &Db, id: &str, gateway: &str, node: &str, labels: Option<&str>) {
    let (id, gateway, node) = (id.to_owned(), gateway.to_owned(), node.to_owned());
    let labels = labels.map(str::to_owned);
    db.run(move |c| {
        c.conn().execute(
            "INSERT INTO gateway_sessions (id, gateway, user, login, node, first_authorized, labels) VALUES (?1, ?2, 'alice', 'root', ?3, 1, ?4)",
            params![id, gateway, node, labels],
        )?;
        Ok(())
    })
    .await
    .unwrap();
}

pub(super) fn gw(name: &str) -> NodeName {
    postern_core::names::parse_node_name(name).unwrap()
}

pub(super) async fn slot(svc: &Service) -> OwnedSemaphorePermit {
    Arc::clone(&svc.upload_slots).acquire_owned().await.unwrap()
}

pub(super) fn meta(id: &str, user: &str, bytes: usize) -> RecordingMeta {
    RecordingMeta {
        id: id.parse().unwrap(),
        user: user.parse().unwrap(),
        login: "root".parse().unwrap(),
        node: gw("web1"),
        gateway: "ignored".into(),
        started_at: 1,
        ended_at: 2,
        interrupted: false,
        bytes: bytes as u64,
    }
}

pub(super) fn complete_req(id: &str, user: &str, cast: &[u8]) -> RecordingComplete {
    RecordingComplete {
        meta: meta(id, user, cast.len()),
        sha256: sha(cast),
    }
}

pub(super) fn single(id: &str, user: &str) -> RecordingUpload {
    RecordingUpload {
        meta: meta(id, user, CAST.len()),
        cast: String::from_utf8(CAST.to_vec()).unwrap(),
    }
}

pub(super) fn forbidden<T: std::fmt::Debug>(o: Outcome<T>) -> String {
    match o {
        Err(Refusal::Forbidden(m)) => m,
        other => panic!("expected a refusal (403), got {other:?}"),
    }
}

pub(super) async fn received_of(db: &Db, id: &str) -> Option<i64> {
    let id = id.to_owned();
    db.run(move |c| {
        Ok(c.conn()
            .query_row(
                "SELECT received FROM recording_uploads WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?)
    })
    .await
    .unwrap()
}
