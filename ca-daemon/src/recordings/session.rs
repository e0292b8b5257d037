//! The binding of a recording to the session the CA authorized (`gateway_sessions`): `<id>-N`
//! belongs to session `<id>`, the upload must be the session's gateway's, and the recording
//! must carry the session's user, login and server.

use crate::committed::Committed;
use anyhow::Result;
use postern_core::api::RecordingMeta;

use crate::service::Refusal;
use crate::store::{self, Tx};

/// A session the CA authorized (`gateway_sessions`).
pub(super) use crate::store::nodes::GatewaySession as Session;

/// Whether `n` numbers a further session channel: 2 or more, in decimal, no leading zero.
fn channel_number(n: &str) -> bool {
    (1..=9).contains(&n.len())
        && !n.starts_with('0')
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u32>().is_ok_and(|n| n >= 2)
}

/// The authorized session a recording id belongs to: the session of that id, or for
/// `<id>-N` (N ≥ 2: the gateway records the second and later session channels of one
/// connection under those ids) the session `<id>`.
fn authorized_session(c: &Tx<'_>, id: &str) -> Result<Option<Session>> {
    if let Some(s) = store::nodes::session(c, id)? {
        return Ok(Some(s));
    }
    match id.rsplit_once('-') {
        Some((base, n)) if !base.is_empty() && channel_number(n) => store::nodes::session(c, base),
        _ => Ok(None),
    }
}

pub(super) fn unauthorized(id: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "recording {id} belongs to no session this CA authorized (a gateway asks /v1/gateway/authorize before each session); it is refused"
    ))
}

/// Where the upload of a recording by a gateway stands.
pub(super) enum UploadState {
    /// Nothing received.
    Absent,
    /// Some bytes received (the durable length the database holds).
    Partial { received: u64 },
    /// Stored: the row and its SHA-256.
    Complete { meta: RecordingMeta, sha256: String },
}

/// Where the upload of `id` by `gateway` stands; refuses an id that another gateway stored or
/// is uploading, and one that belongs to no session authorized for this gateway.
pub(super) fn upload_state(c: &Tx<'_>, id: &str, gateway: &str) -> Result<Committed<UploadState>> {
    if let Some((meta, sha256)) = store::recordings::load(c, id)? {
        if meta.gateway != gateway {
            return Ok(Committed::Refused(Refusal::Conflict(format!(
                "recording {id} was stored by another gateway"
            ))));
        }
        return Ok(Committed::Done(UploadState::Complete { meta, sha256 }));
    }
    match authorized_session(c, id)? {
        None => return Ok(Committed::Refused(unauthorized(id))),
        Some(s) if s.gateway != gateway => {
            return Ok(Committed::Refused(Refusal::Forbidden(format!(
                "session {} was authorized for another gateway",
                s.id
            ))))
        }
        Some(_) => {}
    }
    Ok(Committed::Done(match store::recordings::upload(c, id)? {
        Some((g, _)) if g != gateway => {
            return Ok(Committed::Refused(Refusal::Conflict(format!(
                "recording {id} is being uploaded by another gateway"
            ))))
        }
        Some((_, received)) => UploadState::Partial { received },
        None => UploadState::Absent,
    }))
}

/// The authorized session a recording belongs to, when its user, login, server and gateway
/// are that session's; a refusal otherwise, and for a recording of no authorized session.
pub(super) fn session_matches(
    c: &Tx<'_>,
    m: &RecordingMeta,
    gateway: &str,
) -> Result<Committed<Session>> {
    let Some(s) = authorized_session(c, &m.id)? else {
        return Ok(Committed::Refused(unauthorized(&m.id)));
    };
    let same = s.gateway == gateway
        && s.user == m.user.as_str()
        && s.login == m.login.as_str()
        && s.node == m.node.as_str();
    if !same {
        return Ok(Committed::Refused(Refusal::Forbidden(format!(
            "recording {} does not match session {} that the CA authorized (user, login, server and gateway must be the session's)",
            m.id, s.id
        ))));
    }
    Ok(Committed::Done(s))
}

/// The labels a recording of session `s` is judged by from now on: the server's at
/// authorization, or (a session authorized before the CA kept them) its labels now, or none.
pub(super) fn snapshot_labels(c: &Tx<'_>, s: &Session) -> Result<String> {
    if let Some(l) = &s.labels {
        return Ok(l.clone());
    }
    Ok(store::nodes::server_labels(c, &s.node)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::super::files::{file_of, partial_of};
    use super::super::fixtures::{
        authorize, complete_req, forbidden, gw, service, single, slot, CAST,
    };

    /// Finding 6: a recording of an id the CA never authorized was stored with whatever user
    /// and server the gateway claimed, on every upload route.
    #[tokio::test]
    async fn regression_recordings_of_unauthorized_sessions_are_refused_on_every_route() {
        let (d, svc) = service(1 << 20, 4096).await;
        let m = forbidden(
            svc.recording_store(gw("gw1"), single("s-x", "alice"), slot(&svc).await)
                .await,
        );
        assert!(m.contains("no session this CA authorized"), "{m}");
        let m = forbidden(
            svc.recording_chunk(
                gw("gw1"),
                "s-x".into(),
                0,
                axum::body::Bytes::from_static(CAST),
                slot(&svc).await,
            )
            .await,
        );
        assert!(m.contains("no session this CA authorized"), "{m}");
        forbidden(svc.recording_upload_status(gw("gw1"), "s-x".into()).await);
        forbidden(
            svc.recording_complete(gw("gw1"), "s-x".into(), complete_req("s-x", "alice", CAST))
                .await,
        );
        assert!(!file_of(d.path(), "s-x").exists());
        assert!(!partial_of(d.path(), "s-x").exists());

        // The further channels of an authorized session belong to it, on both routes.
        authorize(&svc.db, "s-a", "gw1", "web1", Some("env=dev")).await;
        for id in ["s-a", "s-a-2"] {
            svc.recording_chunk(
                gw("gw1"),
                id.into(),
                0,
                axum::body::Bytes::from_static(CAST),
                slot(&svc).await,
            )
            .await
            .unwrap();
            svc.recording_complete(gw("gw1"), id.into(), complete_req(id, "alice", CAST))
                .await
                .unwrap();
        }
        svc.recording_store(gw("gw1"), single("s-a-3", "alice"), slot(&svc).await)
            .await
            .unwrap();
        let labels: String = svc
            .db
            .run(|c| {
                Ok(c.conn().query_row(
                    "SELECT node_labels FROM recordings WHERE id = 's-a-3'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(labels, "env=dev");
        // Nothing else maps to a session.
        for id in ["s-a-1", "s-a-02", "s-a-x", "s-a-2-2", "s-ab"] {
            let m = forbidden(
                svc.recording_store(gw("gw1"), single(id, "alice"), slot(&svc).await)
                    .await,
            );
            assert!(m.contains("no session"), "{id}: {m}");
        }
        // Another user, or another gateway, than the session's.
        let m = forbidden(
            svc.recording_store(gw("gw1"), single("s-a-4", "bob"), slot(&svc).await)
                .await,
        );
        assert!(m.contains("does not match session s-a"), "{m}");
        svc.recording_chunk(
            gw("gw1"),
            "s-a-5".into(),
            0,
            axum::body::Bytes::from_static(CAST),
            slot(&svc).await,
        )
        .await
        .unwrap();
        let m = forbidden(
            svc.recording_complete(
                gw("gw1"),
                "s-a-5".into(),
                complete_req("s-a-5", "bob", CAST),
            )
            .await,
        );
        assert!(m.contains("does not match"), "{m}");
        let m = forbidden(
            svc.recording_chunk(
                gw("gw2"),
                "s-a-6".into(),
                0,
                axum::body::Bytes::from_static(CAST),
                slot(&svc).await,
            )
            .await,
        );
        assert!(m.contains("another gateway"), "{m}");
        let m = forbidden(
            svc.recording_store(gw("gw2"), single("s-a-6", "alice"), slot(&svc).await)
                .await,
        );
        assert!(m.contains("does not match"), "{m}");
        for id in ["s-a-4", "s-a-5", "s-a-6"] {
            assert!(!file_of(d.path(), id).exists(), "{id}");
        }
    }
}
