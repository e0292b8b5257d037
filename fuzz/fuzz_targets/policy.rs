//! Fuzzes the policy file parser: any text parses or is refused with an error naming a line
//! and column inside the text, and a policy that parses answers every question without
//! panicking and parses again the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::{Labels, Policy, Ttl, Username};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::parse(text, "policy.toml") {
        Ok(p) => p,
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines, "{e} in {lines} lines");
            assert!(e.column >= 1, "{e}");
            assert!(e.to_string().starts_with("policy.toml:"), "{e}");
            return;
        }
    };
    let users: Vec<Username> = ["alice", "bob", "u", "root"]
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    let labels: Vec<Labels> = ["", "env=dev", "env=prod,team=db", "a=b"]
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect();
    for u in &users {
        let _ = policy.roles_of(u).count();
        let _ = policy.views_others_recordings(u);
        let _ = policy.decide_login(u, None);
        let _ = policy.decide_login(u, "1h".parse::<Ttl>().ok());
        for l in &labels {
            for login in policy.logins_on_node(u, l) {
                assert!(policy
                    .decide_node_access(u, &login, l, "5m".parse().unwrap())
                    .is_ok());
            }
            let _ = policy.recording_viewer_role(u, l);
        }
    }
    for l in &labels {
        let _ = policy.slice_for_node(l);
    }
    assert!(Policy::parse(text, "policy.toml").is_ok());
});
