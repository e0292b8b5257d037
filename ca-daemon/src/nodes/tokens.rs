//! Join tokens: single-use, for one named server or gateway.

use anyhow::{bail, Result};
use postern_core::{Labels, NodeName, Ttl};
use serde_json::json;

use crate::admin::{TokenEntry, TokenInvite, TokensRemoved};
use crate::audit;
use crate::auth;
use crate::service::{now, Service};
use crate::store::{self, tokens::NewToken};

/// Tokens are 40 lowercase hex digits (160 random bits).
pub const TOKEN_LEN: usize = 40;

/// Whether a string has the token alphabet and length (checked before any lookup).
pub fn token_well_formed(t: &str) -> bool {
    t.len() == TOKEN_LEN
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Service {
    /// `tokens add`: a single-use join token.
    pub async fn tokens_add(
        &self,
        kind: &str,
        name: NodeName,
        replace: bool,
        labels: Labels,
        ttl: Ttl,
        actor: String,
    ) -> Result<TokenInvite> {
        let Ok(kind) = kind.parse::<postern_core::NodeKind>() else {
            bail!("token kind must be node or gateway");
        };
        let (token, hash) = auth::new_invite()?;
        let id = hash[..12].to_owned();
        let now = now();
        let expires = now + ttl.as_secs();
        let (labels_s, id2) = (labels.to_string(), id.clone());
        let (kind2, name2) = (kind, name.to_string());
        self.db
            .run(move |c| {
                store::tokens::add(c, &NewToken { id: &id2, hash: &hash, kind: kind2, labels: &labels_s, name: &name2, replace, expires, created_at: now })?;
                // The token itself is never logged or audited: only its id.
                audit::append(c, now, "token.added", &actor, json!({ "id": id2, "kind": kind2, "name": name2, "replace": replace, "labels": labels_s, "expires": expires }))
            })
            .await?;
        Ok(TokenInvite {
            token,
            id,
            kind,
            name: name.to_string(),
            replace,
            labels: labels.to_string(),
            expires_at: expires,
        })
    }

    /// `tokens ls`.
    pub async fn tokens_ls(&self) -> Result<Vec<TokenEntry>> {
        let now = now();
        let rows = self
            .db
            .run(move |c| store::tokens::list_live(c, now))
            .await?;
        Ok(rows.into_iter().map(TokenEntry::from).collect())
    }

    /// `tokens rm TOKEN` (the token or its id).
    pub async fn tokens_rm(&self, token: String, actor: String) -> Result<TokensRemoved> {
        let hash = auth::invite_hash(&token);
        let now = now();
        self.db
            .run(move |c| {
                let n = store::tokens::remove(c, &hash, &token)?;
                if n == 0 {
                    bail!("no such token");
                }
                audit::append(c, now, "token.removed", &actor, json!({}))?;
                Ok(TokensRemoved { removed: n })
            })
            .await
    }
}
