//! The addresses users are told to use for the cluster's gateways (posternd.toml's `[gateway]
//! public_addr`, one or several, which `postern login` writes as `ProxyJump`), as the CA says
//! them, and the check that the gateway's host certificate names them: without the name stock
//! ssh refuses the gateway with "Host key verification failed", so `serve` refuses to start
//! with a certificate that names none of them, and warns about one that misses some.

use crate::ca::{CaClient, Refused};

/// Where the address came from, for the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The CA answered now.
    Ca,
    /// The CA could not be asked: what it said at join (`joined.json`).
    Join,
}

/// The address users are told to use, from the CA when it answers, otherwise from the join
/// record (with a warning, so that a CA that is down does not keep the gateway from starting).
/// A CA too old to know the route (404) had no way to tell: the join record says the same.
pub async fn learn(ca: &CaClient) -> (Vec<String>, Source) {
    match ca.public_addr().await {
        Ok(r) => (r.all(), Source::Ca),
        Err(Refused(why, status)) => {
            if status != Some(404) {
                tracing::warn!(
                    error = %why,
                    "cannot ask the CA for the gateway's public address; checking the host certificate against the address it gave at join"
                );
            }
            (ca.joined().public_addrs(), Source::Join)
        }
    }
}

/// Why a host certificate with these principals does not do at any of `public_addrs`, or
/// `None` when it does at one at least (see [`unnamed`] for the others).
pub fn mismatch(principals: &[String], public_addrs: &[String]) -> Option<String> {
    let mut why = Vec::new();
    for a in public_addrs {
        match mismatch_at(principals, a) {
            None => return None,
            Some(w) => why.push(w),
        }
    }
    match why.len() {
        0 => None,
        1 => why.pop(),
        _ => Some(format!(
            "the gateway's host certificate names none of the {} addresses users are told to \
             use ({}): {}",
            why.len(),
            public_addrs.join(", "),
            why.join("; ")
        )),
    }
}

/// The addresses of `public_addrs` a host certificate with these principals does not name:
/// users sent to one of them who reach this gateway there fail "Host key verification".
pub fn unnamed(principals: &[String], public_addrs: &[String]) -> Vec<String> {
    public_addrs
        .iter()
        .filter(|a| mismatch_at(principals, a).is_some())
        .cloned()
        .collect()
}

/// Why a host certificate with these principals does not do at `public_addr` (stock ssh
/// checks the lowercased host it connects to against them exactly), or `None` when it does.
fn mismatch_at(principals: &[String], public_addr: &str) -> Option<String> {
    let names = if principals.is_empty() {
        "no names".to_owned()
    } else {
        principals.join(", ")
    };
    match postern_core::names::address_principal(public_addr) {
        Ok(host) if principals.iter().any(|p| p == host.as_str()) => None,
        Ok(host) => Some(format!(
            "the gateway's host certificate names {names}, but users are told to reach it at \
             {public_addr} (posternd.toml's [gateway] public_addr, which `postern login` writes \
             as ProxyJump), and it does not name {host}: stock ssh would fail with \"Host key \
             verification failed\""
        )),
        Err(e) => Some(format!(
            "users are told to reach the gateway at {public_addr} (posternd.toml's [gateway] \
             public_addr), which no host certificate can name ({e}); the gateway's host \
             certificate names {names}"
        )),
    }
}

/// What to do about a [`mismatch`], for the gateway `name`.
pub fn fix(name: &str) -> String {
    format!(
        "re-join this gateway so that the CA certifies its public_addr (`posternd tokens add \
         --kind gateway --name {name} --replace`, then `postern-gate join ... --name {name}`), \
         or set [gateway] public_addr in posternd.toml to an address the certificate names and \
         restart posternd"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_certificate_naming_the_public_host_does() {
        let p = names(&["gw", "gw.example.com", "gate.example.com"]);
        assert_eq!(mismatch(&p, &names(&["gate.example.com:3023"])), None);
        // ssh lowercases the name it connects to; the port plays no part.
        assert_eq!(mismatch(&p, &names(&["Gate.Example.com"])), None);
        let ip = names(&["127.0.0.1"]);
        assert_eq!(mismatch(&ip, &names(&["127.0.0.1:3023"])), None);
        assert_eq!(mismatch(&p, &[]), None);
    }

    #[test]
    fn of_several_addresses_one_named_does_and_the_others_are_listed() {
        let p = names(&["gw1", "127.0.0.2"]);
        let all = names(&["127.0.0.1:3023", "127.0.0.2:3023", "gate.example.com"]);
        assert_eq!(mismatch(&p, &all), None);
        assert_eq!(
            unnamed(&p, &all),
            names(&["127.0.0.1:3023", "gate.example.com"])
        );
        let why = mismatch(&names(&["gw1"]), &all).unwrap();
        assert!(why.contains("names none of the 3 addresses"), "{why}");
        assert!(why.contains("127.0.0.1:3023, 127.0.0.2:3023"), "{why}");
    }

    #[test]
    fn a_certificate_without_it_is_refused_naming_both() {
        let mismatch = |p: &[String], a: &str| mismatch(p, &names(&[a]));
        let why = mismatch(&names(&["gw", "gw.example.com"]), "127.0.0.1:3023").unwrap();
        assert!(why.contains("names gw, gw.example.com"), "{why}");
        assert!(why.contains("127.0.0.1:3023"), "{why}");
        assert!(why.contains("Host key verification failed"), "{why}");
        // Principals are compared exactly, as ssh does: a mixed-case one never matches.
        assert!(mismatch(&names(&["Gate.example.com"]), "gate.example.com:22").is_some());
        assert!(mismatch(&[], "gw:22").unwrap().contains("names no names"));
        let why = mismatch(&names(&["gw"]), "[::1]:3023").unwrap();
        assert!(why.contains("no host certificate can name"), "{why}");
    }
}
