//! The one rule for cutting a queue of events into `POST …/events` requests, for the shim's
//! spool and the gateway's journal alike: the longest run from the front whose request fits
//! the CA's body limit and event count. An event too large to be sent even alone is said so,
//! so that the sender logs it where it is and moves on instead of retrying it forever.

use crate::api::{NodeEvent, MAX_BODY_BYTES};

/// The most events one request carries (the CA refuses more).
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// Room for `{"events":[…]}` around the events.
const BUDGET: usize = MAX_BODY_BYTES - 64;

/// A request being filled.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventBatch {
    used: usize,
    len: usize,
}

/// What [`EventBatch::offer`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It goes in this request.
    Taken,
    /// It does not fit: send this request, and offer it to the next.
    Full,
    /// It is larger than any request can be, and the request is empty: it can never be sent.
    TooLarge,
}

impl EventBatch {
    /// An empty request.
    pub fn new() -> EventBatch {
        EventBatch::default()
    }

    /// Offers the next event of the queue.
    pub fn offer(&mut self, ev: &NodeEvent) -> Offer {
        // Its JSON and a comma.
        let len = serde_json::to_vec(ev)
            .map(|v| v.len() + 1)
            .unwrap_or(usize::MAX);
        if len > BUDGET {
            return if self.len == 0 {
                Offer::TooLarge
            } else {
                Offer::Full
            };
        }
        if self.used + len > BUDGET || self.len == MAX_EVENTS_PER_REQUEST {
            return Offer::Full;
        }
        self.used += len;
        self.len += 1;
        Offer::Taken
    }

    /// How many events were taken.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::EventsRequest;

    fn ev(path_bytes: usize) -> NodeEvent {
        NodeEvent {
            kind: "sftp.write".into(),
            ts: 1,
            login: "root".into(),
            user: Some("alice".into()),
            session: Some("s-1".into()),
            serial: None,
            remote: None,
            tty: None,
            detail: Some(serde_json::json!({ "path": "p".repeat(path_bytes) })),
        }
    }

    fn take(queue: &[NodeEvent]) -> (usize, Offer) {
        let mut b = EventBatch::new();
        for e in queue {
            match b.offer(e) {
                Offer::Taken => {}
                other => return (b.len(), other),
            }
        }
        (b.len(), Offer::Taken)
    }

    #[test]
    fn regression_event_batches_fit_the_cas_body_limit() {
        let queue: Vec<_> = (0..500).map(|_| ev(100)).collect();
        let (n, why) = take(&queue);
        assert!(n > 0 && n < 500 && why == Offer::Full, "{n}");
        let body = serde_json::to_vec(&EventsRequest {
            events: queue[..n].to_vec(),
        })
        .unwrap();
        assert!(body.len() <= MAX_BODY_BYTES, "{}", body.len());
        // One more would not have fitted.
        let body = serde_json::to_vec(&EventsRequest {
            events: queue[..=n].to_vec(),
        })
        .unwrap();
        assert!(body.len() > MAX_BODY_BYTES - 64, "{}", body.len());
    }

    #[test]
    fn an_event_too_large_for_any_request_is_said_so_only_at_the_front() {
        let big = ev(MAX_BODY_BYTES);
        assert_eq!(take(&[big.clone(), ev(1)]), (0, Offer::TooLarge));
        assert_eq!(take(&[ev(1), big]), (1, Offer::Full));
    }

    #[test]
    fn no_request_carries_more_events_than_the_ca_takes() {
        let tiny = NodeEvent {
            detail: None,
            user: None,
            session: None,
            ..ev(0)
        };
        let mut b = EventBatch::new();
        let mut n = 0;
        while b.offer(&tiny) == Offer::Taken {
            n += 1;
        }
        assert!(n <= MAX_EVENTS_PER_REQUEST, "{n}");
    }
}
