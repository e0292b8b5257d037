//! Fuzzes the JSON bodies of the HTTPS API as `posternd` parses them (`serde_json::from_slice`
//! into the wire types of `postern_core::api`, whose names validate themselves) and the answers
//! its clients parse: nothing panics, and what parses serializes and parses again.
//! Input: byte 0 chooses the type, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::api::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let again = serde_json::to_vec(&v).expect("a parsed body serializes");
    if let Err(e) = serde_json::from_slice::<T>(&again) {
        panic!(
            "a parsed body does not parse once serialized: {e}: {}",
            String::from_utf8_lossy(&again)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 24 {
        // What the CA reads.
        0 => round_trip::<EnrollRequest>(body),
        1 => round_trip::<LoginRequest>(body),
        2 => round_trip::<RenewRequest>(body),
        3 => round_trip::<JoinRequest>(body),
        4 => round_trip::<SyncRequest>(body),
        5 => round_trip::<EventsRequest>(body),
        6 => round_trip::<NodeEvent>(body),
        7 => round_trip::<AuthorizeRequest>(body),
        8 => round_trip::<HostCertRequest>(body),
        9 => round_trip::<RecordingUpload>(body),
        10 => round_trip::<RecordingComplete>(body),
        11 => round_trip::<RecordingMeta>(body),
        // What the gateway, the shim and the CLI read from the CA.
        12 => round_trip::<CertResponse>(body),
        13 => round_trip::<JoinResponse>(body),
        14 => round_trip::<Bundle>(body),
        15 => round_trip::<SyncResponse>(body),
        16 => round_trip::<Inventory>(body),
        17 => round_trip::<AuthorizeResponse>(body),
        18 => round_trip::<HostCertResponse>(body),
        19 => round_trip::<RecordingUploadStatus>(body),
        20 => round_trip::<ErrorBody>(body),
        21 => round_trip::<EnrollResponse>(body),
        22 => round_trip::<GatewayPublicAddr>(body),
        _ => {
            // The lock rule over parsed locks: never a panic, and an unknown kind denies.
            let Ok(locks) = serde_json::from_slice::<Vec<LockEntry>>(body) else {
                return;
            };
            let s = LockSubject {
                user: Some("alice"),
                login: Some("deploy"),
                node: Some("web1"),
            };
            for now in [0, 1_800_000_000, u64::MAX] {
                let _ = lock_for(&locks, &s, now);
                for l in &locks {
                    let applies = l.applies(&s, now);
                    let live = l.expires.is_none_or(|e| e > now);
                    if live && !["user", "login", "node"].contains(&l.target.as_str()) {
                        assert!(applies, "a lock of unknown kind does not deny: {l:?}");
                    }
                    let _ = l.describe();
                }
            }
        }
    }
});
