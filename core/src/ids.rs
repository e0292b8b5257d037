//! Identifiers and kinds the parts pass each other: certificate serials, session and
//! recording ids, lock targets, node and certificate kinds. Each is a type with one rule, so
//! that a string of one kind cannot be passed where another is meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A certificate serial. The CA chooses them at random (63 bits, so that they also fit a
/// signed 64-bit database column); they are looked up, never counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Serial(u64);

impl Serial {
    /// The serial `n`.
    pub const fn new(n: u64) -> Serial {
        Serial(n)
    }

    /// Its value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Serial {
    fn from(n: u64) -> Serial {
        Serial(n)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Serial {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Serial, Self::Err> {
        s.parse().map(Serial)
    }
}

/// A session or recording id that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    what: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} must be 1 to 64 characters of a-z, 0-9 and -",
            self.what
        )
    }
}

impl std::error::Error for IdError {}

/// The rule of session and recording ids: `[a-z0-9-]{1,64}`. A recording id names a file in
/// the CA's store, so nothing else is allowed.
fn id_rule(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if id_rule(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError { what: $what })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                if id_rule(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError { what: $what })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Read as the string it is (every id is one); only made through its rule.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The id of one inner connection of a gateway, chosen by the gateway before it asks the
    /// CA to authorize it (`s-` and 16 hex digits); the node-access certificate's key id is
    /// `USER/SESSION`.
    SessionId,
    "session_id"
);

id_type!(
    /// The id of one recording: the id of its session for the first session channel of an
    /// inner connection, `<session>-N` for the N-th (N >= 2).
    RecordingId,
    "recording id"
);

impl SessionId {
    /// A new random session id, `s-` and 16 hex digits; an error when the system has no
    /// randomness to give (ids must not repeat, so there is no fallback).
    pub fn random() -> Result<SessionId, getrandom::Error> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b)?;
        Ok(SessionId(format!("s-{}", hex::encode(b))))
    }
}

impl RecordingId {
    /// The recording of the `n`-th session channel (counting from 1) of `session`; an error
    /// when `<session>-N` would be longer than the rule allows (the gateway's session ids are
    /// 18 bytes, so never for them).
    pub fn of_channel(session: &SessionId, n: usize) -> Result<RecordingId, IdError> {
        if n <= 1 {
            Ok(RecordingId(session.0.clone()))
        } else {
            RecordingId::try_from(format!("{}-{n}", session.0))
        }
    }

    /// The sessions this recording may belong to, in the order to look them up: the session
    /// of the same id, and for `<id>-N` (N >= 2, decimal, no leading zero) the session `<id>`.
    pub fn sessions(&self) -> (SessionId, Option<SessionId>) {
        let whole = SessionId(self.0.clone());
        let base = match self.0.rsplit_once('-') {
            Some((base, n)) if !base.is_empty() && channel_number(n) => {
                Some(SessionId(base.to_owned()))
            }
            _ => None,
        };
        (whole, base)
    }
}

/// Whether `n` numbers a further session channel: 2 or more, in decimal, no leading zero.
fn channel_number(n: &str) -> bool {
    (1..=9).contains(&n.len())
        && !n.starts_with('0')
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u32>().is_ok_and(|n| n >= 2)
}

/// What a lock names. A kind this version does not know is kept (a newer CA may lock by
/// something older parts cannot see) and covers every access: locks fail closed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockTarget {
    /// A Postern user.
    User,
    /// An OS login on every server.
    Login,
    /// A server.
    Node,
    /// A kind this version does not know.
    Other(String),
}

impl LockTarget {
    /// The kinds `posternd locks add` takes.
    pub const KNOWN: [LockTarget; 3] = [LockTarget::User, LockTarget::Login, LockTarget::Node];

    /// The kind as the wire and the database spell it.
    pub fn as_str(&self) -> &str {
        match self {
            LockTarget::User => "user",
            LockTarget::Login => "login",
            LockTarget::Node => "node",
            LockTarget::Other(s) => s,
        }
    }

    /// Reads a kind; any string is a kind (an unknown one is [`LockTarget::Other`]).
    pub fn parse(s: &str) -> LockTarget {
        match s {
            "user" => LockTarget::User,
            "login" => LockTarget::Login,
            "node" => LockTarget::Node,
            other => LockTarget::Other(other.to_owned()),
        }
    }
}

impl From<&str> for LockTarget {
    fn from(s: &str) -> LockTarget {
        LockTarget::parse(s)
    }
}

impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LockTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LockTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(LockTarget::parse(&String::deserialize(d)?))
    }
}

/// A kind that is not one of the names this version knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindError {
    what: &'static str,
    value: String,
    known: &'static str,
}

impl fmt::Display for KindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?} (one of {})",
            self.what,
            self.value.chars().take(40).collect::<String>(),
            self.known
        )
    }
}

impl std::error::Error for KindError {}

macro_rules! kind_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every kind.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The kind as the wire and the database spell it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }
        }

        impl FromStr for $name {
            type Err = KindError;
            fn from_str(s: &str) -> Result<Self, KindError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(KindError {
                        what: $what,
                        value: other.to_owned(),
                        known: concat!($($s, " "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

kind_enum!(
    /// What joined: a server (its sshd runs `postern-shim`) or a gateway (`postern-gate`).
    NodeKind, "node kind" {
        /// A server.
        Node = "node",
        /// A gateway.
        Gateway = "gateway",
    }
);

kind_enum!(
    /// What a certificate the CA recorded is: one of the three OpenSSH CAs' certificates, or
    /// an X.509 identity of the service CA.
    CertKind, "certificate kind" {
        /// A user certificate (`postern login`, renewal, `certs sign user`).
        SshUser = "ssh-user",
        /// A server's or gateway's host certificate.
        SshHost = "ssh-host",
        /// A gateway's certificate for one login on one server.
        SshNodeAccess = "ssh-node-access",
        /// A user's mTLS identity (renewal).
        X509Client = "x509-client",
        /// A server's or gateway's mTLS identity.
        X509Node = "x509-node",
    }
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn session_ids_are_random_and_follow_the_rule() {
        let a = SessionId::random().unwrap();
        let b = SessionId::random().unwrap();
        assert_ne!(a, b);
        assert!(
            a.as_str().starts_with("s-") && a.as_str().len() == 18,
            "{a}"
        );
        assert_eq!(a.as_str().parse::<SessionId>().unwrap(), a);
    }

    #[test]
    fn ids_outside_the_rule_are_refused_with_the_rule() {
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "A",
            "a.cast",
            "a b",
            &"a".repeat(65),
        ] {
            let e = bad.parse::<RecordingId>().unwrap_err();
            assert_eq!(
                e.to_string(),
                "recording id must be 1 to 64 characters of a-z, 0-9 and -"
            );
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?}");
            assert!(serde_json::from_value::<SessionId>(serde_json::json!(bad)).is_err());
        }
        assert!("a".repeat(64).parse::<SessionId>().is_ok());
    }

    #[test]
    fn a_recording_belongs_to_its_session_or_the_session_it_numbers_a_channel_of() {
        let s: SessionId = "s-0123456789abcdef".parse().unwrap();
        assert_eq!(RecordingId::of_channel(&s, 1).unwrap().as_str(), s.as_str());
        let r2 = RecordingId::of_channel(&s, 2).unwrap();
        assert_eq!(r2.as_str(), "s-0123456789abcdef-2");
        assert_eq!(r2.sessions(), (SessionId(r2.0.clone()), Some(s.clone())));
        for (id, base) in [
            ("s-1-10", Some("s-1")),
            ("s-1-1", None),
            ("s-1-0", None),
            ("s-1-02", None),
            ("s-1-", None),
            ("-2", None),
            ("s-1-9999999999", None),
            ("abc", None),
        ] {
            let r: RecordingId = id.parse().unwrap();
            assert_eq!(r.sessions().1.as_ref().map(SessionId::as_str), base, "{id}");
        }
        let long: SessionId = "a".repeat(63).parse().unwrap();
        assert!(RecordingId::of_channel(&long, 1).is_ok());
        assert!(RecordingId::of_channel(&long, 2).is_err());
    }

    #[test]
    fn unknown_lock_targets_are_kept_and_round_trip() {
        for t in LockTarget::KNOWN {
            assert_eq!(LockTarget::parse(t.as_str()), t);
        }
        let other: LockTarget = serde_json::from_str("\"role\"").unwrap();
        assert_eq!(other, LockTarget::Other("role".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"role\"");
    }

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_named() {
        for k in NodeKind::ALL {
            assert_eq!(k.as_str().parse::<NodeKind>().unwrap(), *k);
        }
        for k in CertKind::ALL {
            let j = serde_json::to_string(k).unwrap();
            assert_eq!(serde_json::from_str::<CertKind>(&j).unwrap(), *k);
        }
        let e = "router".parse::<NodeKind>().unwrap_err().to_string();
        assert!(
            e.contains("unknown node kind \"router\"") && e.contains("gateway"),
            "{e}"
        );
        assert_eq!(Serial::new(7).to_string(), "7");
        assert_eq!(serde_json::to_string(&Serial::new(7)).unwrap(), "7");
    }
}
