//! The users' routes: their listing of the recordings they may see, the streamed download
//! (audited as `recording.viewed`), and the admin socket's `recordings ls`.

use crate::committed::Committed;
use anyhow::{Context, Result};
use postern_core::api::RecordingMeta;
use postern_core::{NodeName, Username};
use serde_json::json;

use super::files::file_of;
use super::visibility::{is_own, list_visible, visibility};
use super::{Outcome, DEFAULT_LIST};
use crate::audit;
use crate::authed::{AuthedUser, Recordings};
use crate::gateway::valid_session_id;
use crate::service::{now, Refusal, Service};

impl Service {
    /// `GET /v1/recordings`: the recordings the caller may see: their own, and other users'
    /// that a role's `view_recordings` selects by the recording's labels. Asking for another
    /// user's without any `view_recordings` is refused rather than answered with an empty list.
    pub async fn recordings_of_user(
        &self,
        id: AuthedUser<Recordings>,
        user: Option<Username>,
        node: Option<NodeName>,
        limit: Option<u32>,
    ) -> Outcome<Vec<RecordingMeta>> {
        let now = now();
        let policy = self.policy();
        self.db
            .run(move |c| -> Result<Committed<Vec<RecordingMeta>>> {
                let me = match id.check(c, now)? {
                    Committed::Done(u) => u,
                    Committed::Refused(r) => return Ok(Committed::Refused(r)),
                };
                let vis = visibility(c, &policy, &me)?;
                if let Some(other) = user.as_ref().filter(|u| **u != me) {
                    if !vis.any {
                        return Ok(Committed::Refused(Refusal::Forbidden(format!(
                            "{me} may list only their own recordings, not {other}'s: no role of {me} has view_recordings in the policy"
                        ))));
                    }
                }
                let rows = list_visible(
                    c,
                    &me,
                    &vis,
                    user.as_ref().map(Username::as_str),
                    node.as_ref().map(NodeName::as_str),
                    limit.unwrap_or(DEFAULT_LIST),
                )?;
                Ok(Committed::Done(rows))
            })
            .await?
            .into_result()
    }

    /// `GET /v1/recordings/ID`: one recording the caller may see, as an open file and its
    /// length (the API streams it). Playing another user's recording is audited with the role
    /// that allowed it.
    pub async fn recording_cast(
        &self,
        id: AuthedUser<Recordings>,
        rid: String,
    ) -> Outcome<(tokio::fs::File, u64)> {
        let now = now();
        let policy = self.policy();
        let valid = valid_session_id(&rid);
        let r2 = rid.clone();
        let visible = self
            .db
            .run(
                move |c| -> Result<Committed<std::result::Result<(), bool>>> {
                    let me = match id.check(c, now)? {
                        Committed::Done(u) => u,
                        Committed::Refused(r) => return Ok(Committed::Refused(r)),
                    };
                    let views_others = policy.views_others_recordings(&me);
                    let stored = if valid {
                        crate::store::recordings::load_for_viewing(c, &r2)?
                    } else {
                        None
                    };
                    let Some((meta, labels)) = stored else {
                        return Ok(Committed::Done(Err(views_others)));
                    };
                    let role = if meta.user == me && is_own(c, &me, &r2)? {
                        None
                    } else {
                        match policy.recording_viewer_role(&me, &labels) {
                            Some(role) => Some(role.to_owned()),
                            None => return Ok(Committed::Done(Err(views_others))),
                        }
                    };
                    audit::append(
                        c,
                        now,
                        "recording.viewed",
                        me.as_str(),
                        json!({
                            "id": r2, "user": meta.user.as_str(), "node": meta.node.as_str(),
                            "role": role,
                        }),
                    )?;
                    Ok(Committed::Done(Ok(())))
                },
            )
            .await?
            .into_result()?;
        if let Err(views_others) = visible {
            // The same answer whether it does not exist or is not the caller's to see.
            let shown: String = rid.chars().take(64).collect();
            return Err(Refusal::NotFound(if views_others {
                format!("no recording {shown} that you may see")
            } else {
                format!("no recording {shown} of yours")
            }));
        }
        let path = file_of(&self.recordings_dir, &rid);
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        Ok((file, len))
    }

    /// `recordings ls` (admin).
    pub async fn recordings_ls(
        &self,
        user: Option<String>,
        node: Option<String>,
        limit: u32,
    ) -> Result<Vec<RecordingMeta>> {
        self.db
            .run(move |c| {
                crate::store::recordings::list(
                    c,
                    user.as_deref(),
                    node.as_deref(),
                    limit.min(super::MAX_LIST),
                )
            })
            .await
    }
}
