//! Live sessions and their cuts: the table every fresh inventory judges
//! (`postern_core::cut`), the expiry timer of each session, delivery of a cut (once, on the
//! session's watch channel, audited), and what a cut ends: bridged streams and the connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use postern_core::cut::{cut_by_inventory, expired, Cut, LiveSession};
use postern_core::SessionId;
use tokio::sync::watch;

use super::Gateway;
use postern_core::clock::now;

/// A live session, for cuts (locks, revoked certificates, removed servers, the end of the
/// user certificate) to end.
pub(super) struct Live {
    session: LiveSession,
    /// `Some(what the user reads)` once cut; the relays, forwards, agent channels and the
    /// connection's watcher all wait on it.
    cut: watch::Sender<Option<String>>,
}

impl Live {
    /// Delivers a cut unless the session was cut already (the first reason is the one the
    /// user reads and the audit log keeps), and audits it once.
    fn deliver(&self, id: &SessionId, cut: &Cut, audit: &crate::audit::Audit) {
        let msg = cut.message(&self.session);
        let first = self.cut.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(msg.clone());
            true
        });
        if first {
            tracing::info!(session = %id, user = %self.session.user, node = %self.session.node, reason = %cut.audit_reason(), "cutting the live session: {msg}");
            audit.session_cut(&self.session, id, cut, &msg);
        }
    }
}

impl Gateway {
    /// Refreshes the inventory and cuts the live sessions it covers (`cut_by_inventory`).
    ///
    /// The inventory is stored before the table is read, and `register` inserts before it
    /// reads the inventory: a session registering meanwhile is judged by one of the two.
    pub async fn refresh(&self) -> Result<()> {
        let fresh = self.ca.inventory().await?;
        *self.inventory.write().await = Some(fresh);
        let inv = self.inventory.read().await;
        let Some(inv) = inv.as_ref() else {
            return Ok(());
        };
        let now = now();
        if let Ok(live) = self.live.lock() {
            for (id, l) in live.iter() {
                if let Some(cut) =
                    cut_by_inventory(&l.session, inv, now, self.disconnect_expired_cert)
                {
                    l.deliver(id, &cut, &self.audit);
                }
            }
        }
        Ok(())
    }

    /// Cuts one live session, if it is still live.
    fn cut_live(&self, id: &SessionId, cut: &Cut) {
        if let Ok(live) = self.live.lock() {
            if let Some(l) = live.get(id) {
                l.deliver(id, cut, &self.audit);
            }
        }
    }

    /// Makes a session live: from now on every fresh inventory judges it, and it is judged
    /// at once by the last one, so that nothing that changed between the CA's authorization
    /// and this moment (a lock, `users rm`, `nodes rm`) lets it run. When the expiry cut is on,
    /// a timer ends it at its certificate's end without asking the CA.
    pub(super) async fn register(
        self: &Arc<Self>,
        id: &SessionId,
        session: LiveSession,
    ) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        match self.live.lock() {
            Ok(mut l) => {
                let before = l.insert(
                    id.clone(),
                    Live {
                        session: session.clone(),
                        cut: tx,
                    },
                );
                if before.is_none() {
                    crate::metrics::get().session_started();
                }
            }
            Err(_) => {
                // A session no cut could reach must not run.
                let _ = tx.send(Some("the gateway cannot track this session".into()));
                return rx;
            }
        }
        let first =
            self.inventory.read().await.as_ref().and_then(|inv| {
                cut_by_inventory(&session, inv, now(), self.disconnect_expired_cert)
            });
        match first {
            Some(cut) => self.cut_live(id, &cut),
            None if self.disconnect_expired_cert => self.expire_at_end(id, rx.clone()),
            None => {}
        }
        rx
    }

    /// The expiry timer of one session: sleeps in steps of at most a minute (the certificate's
    /// end is wall-clock time, the sleep is monotonic: a suspended or stepped clock is caught
    /// up with), and ends when the session does.
    fn expire_at_end(self: &Arc<Self>, id: &SessionId, mut cut: watch::Receiver<Option<String>>) {
        let gw = Arc::clone(self);
        let id = id.clone();
        tokio::spawn(async move {
            loop {
                let session = gw
                    .live
                    .lock()
                    .ok()
                    .and_then(|l| l.get(&id).map(|l| l.session.clone()));
                let Some(session) = session else { return };
                let now = now();
                if let Some(c) = expired(&session, now) {
                    gw.cut_live(&id, &c);
                    return;
                }
                let left = next_expiry_check(session.user_cert_valid_before, now);
                tokio::select! {
                    _ = tokio::time::sleep(left) => {}
                    changed = cut.changed() => {
                        // Unregistered (the sender is gone) or cut for another reason.
                        if changed.is_err() || cut.borrow().is_some() {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// The session ended: no cut reaches it any more.
    pub(super) fn unregister(&self, id: &SessionId) {
        if let Ok(mut l) = self.live.lock() {
            if l.remove(id).is_some() {
                crate::metrics::get().session_ended();
            }
        }
    }
}

/// How long the expiry timer sleeps before it looks again: until the certificate's end, at
/// most a minute.
fn next_expiry_check(valid_before: u64, now: u64) -> Duration {
    Duration::from_secs(valid_before.saturating_sub(now).min(60))
}

/// Returns once the session is cut by a lock (or its gateway-side state is gone).
pub(super) async fn until_cut(mut cut: watch::Receiver<Option<String>>) {
    loop {
        if cut.borrow_and_update().is_some() {
            return;
        }
        if cut.changed().await.is_err() {
            return;
        }
    }
}

/// Copies both ways until either side ends or the session is cut.
pub(super) async fn bridge<A, B>(mut a: A, mut b: B, cut: watch::Receiver<Option<String>>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        _ = until_cut(cut) => {}
    }
}

/// Once a cut arrives, ends the whole connection behind `handle` with its message (port
/// forwards and agent channels too, not only the session channels that the relay closes with
/// a message), after a moment that lets the relays deliver their message.
pub(super) fn disconnect_when_cut(
    mut cut: watch::Receiver<Option<String>>,
    handle: russh::server::Handle,
    id: SessionId,
) {
    tokio::spawn(async move {
        let why = loop {
            if let Some(why) = cut.borrow_and_update().clone() {
                break why;
            }
            if cut.changed().await.is_err() {
                return;
            }
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        tracing::info!(session = %id, reason = %why, "disconnecting the cut session");
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                format!("postern: session closed: {why}"),
                String::new(),
            )
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_expiry_timer_wakes_at_the_end_and_at_least_every_minute() {
        assert_eq!(next_expiry_check(1_000, 990), Duration::from_secs(10));
        assert_eq!(next_expiry_check(1_000, 1_000), Duration::ZERO);
        // A clock stepped past the end: look at once.
        assert_eq!(next_expiry_check(1_000, 5_000), Duration::ZERO);
        assert_eq!(next_expiry_check(100_000, 0), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn until_cut_returns_on_a_cut_or_when_the_session_is_gone() {
        let (tx, rx) = watch::channel(None);
        tx.send_replace(Some("locked".into()));
        until_cut(rx).await;
        let (tx, rx) = watch::channel(None::<String>);
        let waiting = tokio::spawn(until_cut(rx));
        drop(tx);
        waiting.await.unwrap();
        let (tx, rx) = watch::channel(None);
        let waiting = tokio::spawn(until_cut(rx));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send_replace(Some("user alice was removed".into()));
        waiting.await.unwrap();
    }

    #[tokio::test]
    async fn a_bridge_copies_both_ways_until_the_cut() {
        let (a, mut a_far) = tokio::io::duplex(64);
        let (b, mut b_far) = tokio::io::duplex(64);
        let (tx, rx) = watch::channel(None);
        let bridged = tokio::spawn(bridge(a, b, rx));
        let mut buf = [0u8; 5];
        a_far.write_all(b"hello").await.unwrap();
        b_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        b_far.write_all(b"world").await.unwrap();
        a_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
        tx.send_replace(Some("locked".into()));
        bridged.await.unwrap();
        // Both ends are closed: nothing more goes through.
        assert_eq!(a_far.read(&mut buf).await.unwrap(), 0);
        assert_eq!(b_far.read(&mut buf).await.unwrap(), 0);
    }
}
