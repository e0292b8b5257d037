//! Who is asking: the Postern user behind the X.509 identity of `postern login` (unlocked), or
//! the joined gateway behind an upload's mTLS identity.

use crate::committed::Committed;
use anyhow::Result;
use postern_core::{NodeName, Username};

use super::Outcome;
use crate::gateway::gateway_for;
use crate::service::{now, Refusal, Service};
use crate::store::{self, Tx};
use crate::x509::ClientIdentity;

/// The Postern user behind an X.509 identity from `postern login`: a known, unrevoked,
/// unexpired `x509-client` certificate whose subject is an existing user.
fn user_for(c: &Tx<'_>, id: &ClientIdentity, now: u64) -> Result<Option<Username>> {
    let row = store::certs::by_serial(c, "x509-client", id.serial)?
        .map(|c| (c.subject, c.revoked, c.valid_before));
    let Some((subject, false, before)) = row else {
        return Ok(None);
    };
    if subject != id.subject || now >= before {
        return Ok(None);
    }
    let Ok(user) = subject.parse::<Username>() else {
        return Ok(None);
    };
    Ok(store::users::exists(c, user.as_str())?.then_some(user))
}

fn bad_identity() -> Refusal {
    Refusal::Forbidden(
        "this device's identity is not valid (expired, revoked or unknown); run `postern login`"
            .into(),
    )
}

/// Checks a user's identity and that no lock stops them.
pub(super) fn signed_in_user(
    c: &Tx<'_>,
    id: &ClientIdentity,
    now: u64,
) -> Result<Committed<Username>> {
    let Some(user) = user_for(c, id, now)? else {
        return Ok(Committed::Refused(bad_identity()));
    };
    let locks = crate::nodes::active_locks(c, now)?;
    let subject = postern_core::api::LockSubject {
        user: Some(user.as_str()),
        ..Default::default()
    };
    if let Some(l) = postern_core::api::lock_for(&locks, &subject, now) {
        return Ok(Committed::Refused(Refusal::Forbidden(l.describe())));
    }
    Ok(Committed::Done(user))
}

impl Service {
    /// The gateway behind an mTLS identity, checked before an upload's body is read.
    pub async fn authenticate_gateway(&self, id: ClientIdentity) -> Outcome<NodeName> {
        let now = now();
        self.db
            .run(move |c| gateway_for(c, &id, now))
            .await?
            .ok_or_else(|| Refusal::Forbidden("only a joined gateway may upload recordings".into()))
    }
}
