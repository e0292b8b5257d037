-- The schema of a database made by posternd before numbered steps (db.rs' SCHEMA and
-- ADDED_COLUMNS at schema version 4): a test fixture, never run by the daemon.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    totp_secret BLOB,
    last_totp_step INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    invite_hash TEXT,
    invite_expires INTEGER,
    last_password_login INTEGER,
    created_at INTEGER NOT NULL,
    hard_locked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS certs (
    serial INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    principals TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    key_fingerprint TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS certs_subject ON certs(subject);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
-- Every audit event's (seq, hash) signed with the audit key (DATA/ca/audit.key): added after
-- schema 3, created in older databases by this IF NOT EXISTS (their events are signed once,
-- when the key is created: audit::sign_existing).
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    sig TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    labels TEXT NOT NULL,
    expires INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    name TEXT,
    replace INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    address TEXT,
    labels TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    last_sync INTEGER,
    host_key TEXT NOT NULL,
    host_cert_expiry INTEGER,
    identity_serial INTEGER NOT NULL,
    egress TEXT,
    seen_from TEXT
);
-- The event ids a gateway's events carry: an event sent again is audited once.
CREATE TABLE IF NOT EXISTS gateway_event_ids (
    gateway TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received INTEGER NOT NULL,
    PRIMARY KEY (gateway, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires INTEGER,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_sessions (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    user TEXT NOT NULL,
    login TEXT NOT NULL,
    node TEXT NOT NULL,
    first_authorized INTEGER NOT NULL,
    labels TEXT
);
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    login TEXT NOT NULL,
    node TEXT NOT NULL,
    gateway TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER NOT NULL,
    interrupted INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    stored_at INTEGER NOT NULL,
    node_labels TEXT,
    authorized_at INTEGER
);
CREATE INDEX IF NOT EXISTS recordings_user ON recordings(user, started_at);
CREATE INDEX IF NOT EXISTS recordings_node ON recordings(node, started_at);
CREATE TABLE IF NOT EXISTS recording_uploads (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    received INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '4');
