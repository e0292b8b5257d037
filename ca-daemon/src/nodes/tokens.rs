//! Join tokens: single-use, for one named server or gateway.

use anyhow::{bail, Result};
use postern_core::{Labels, NodeName, Ttl};
use rusqlite::params;
use serde_json::json;

use super::i;
use crate::audit;
use crate::auth;
use crate::service::{now, Service};

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
    ) -> Result<serde_json::Value> {
        if kind != "node" && kind != "gateway" {
            bail!("token kind must be node or gateway");
        }
        let (token, hash) = auth::new_invite()?;
        let id = hash[..12].to_owned();
        let now = now();
        let expires = now + ttl.as_secs();
        let (kind, labels_s, id2) = (kind.to_owned(), labels.to_string(), id.clone());
        let (kind2, name2) = (kind.clone(), name.to_string());
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT INTO tokens (id, hash, kind, labels, expires, created_at, name, replace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![id2, hash, kind2, labels_s, i(expires), i(now), name2, replace],
                )?;
                // The token itself is never logged or audited: only its id.
                audit::append(c, now, "token.added", &actor, json!({ "id": id2, "kind": kind2, "name": name2, "replace": replace, "labels": labels_s, "expires": expires }))
            })
            .await?;
        Ok(
            json!({ "token": token, "id": id, "kind": kind, "name": name.to_string(), "replace": replace, "labels": labels.to_string(), "expires_at": expires }),
        )
    }

    /// `tokens ls`.
    pub async fn tokens_ls(&self) -> Result<serde_json::Value> {
        let now = now();
        self.db
            .run(move |c| {
                let mut st = c.prepare("SELECT id, kind, labels, expires, name, replace FROM tokens WHERE expires > ?1 ORDER BY created_at")?;
                let rows = st
                    .query_map([i(now)], |r| {
                        Ok(json!({ "id": r.get::<_, String>(0)?, "kind": r.get::<_, String>(1)?, "labels": r.get::<_, String>(2)?, "expires_at": r.get::<_, i64>(3)?, "name": r.get::<_, Option<String>>(4)?, "replace": r.get::<_, bool>(5)? }))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(serde_json::Value::Array(rows))
            })
            .await
    }

    /// `tokens rm TOKEN` (the token or its id).
    pub async fn tokens_rm(&self, token: String, actor: String) -> Result<serde_json::Value> {
        let hash = auth::invite_hash(&token);
        let now = now();
        self.db
            .run(move |c| {
                let n = c.execute(
                    "DELETE FROM tokens WHERE hash = ?1 OR id = ?2",
                    params![hash, token],
                )?;
                if n == 0 {
                    bail!("no such token");
                }
                audit::append(c, now, "token.removed", &actor, json!({}))?;
                Ok(json!({ "removed": n }))
            })
            .await
    }
}
