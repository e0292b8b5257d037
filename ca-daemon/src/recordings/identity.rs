//! Who is uploading: the joined gateway behind an upload's mTLS identity, checked before the
//! body is read. (A user's identity is checked inside each view's own transaction:
//! `AuthedUser::check` in `authed.rs`.)

use postern_core::NodeName;

use super::Outcome;
use crate::authed::AuthedGateway;
use crate::service::{now, Refusal, Service};

impl Service {
    /// The gateway behind an mTLS identity, checked before an upload's body is read.
    pub async fn authenticate_gateway(&self, gateway: AuthedGateway) -> Outcome<NodeName> {
        let now = now();
        self.db
            .run(move |c| gateway.check(c, now))
            .await?
            .ok_or_else(|| Refusal::Forbidden("only a joined gateway may upload recordings".into()))
    }
}
