//! `postern reachable HOST:PORT [--unless EARLIER]...`: whether an SSH server answers at
//! HOST:PORT. The ssh_config of a cluster with several gateways runs it (`Match exec`) so that
//! stock ssh jumps through the first gateway that answers. A TCP connection alone is not
//! enough: a stopped process's socket still accepts, and a load balancer accepts for backends
//! that are gone, so the answer is the server's banner (RFC 4253 4.2: `SSH-`, possibly after
//! other lines).
//!
//! ssh evaluates every `Match exec` line, also after an earlier one matched, so the probe of
//! gateway k names the earlier ones with `--unless`: when one of them answers, ssh is already
//! going there and the probe says no without asking gateway k at all (a gateway that drops
//! packets then costs nothing while an earlier one is up). Every address of every name is
//! asked at once, and name resolution counts against the same deadline.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::render::Gateway;

/// The most bytes read while looking for the banner line (RFC 4253 allows lines before it).
const MAX_PREAMBLE: usize = 8 << 10;

/// Whether `address` answers within `timeout` while none of `unless` does. All are asked at
/// once: an earlier gateway that answers makes it no at once; one that is silent costs no
/// more than the one timeout.
pub fn answers_unless(address: &str, unless: &[String], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel::<(bool, bool)>();
    let target = ask(address, deadline, true, &tx);
    let earlier = unless
        .iter()
        .filter(|u| ask(u, deadline, false, &tx))
        .count();
    drop(tx);
    if !target {
        return false;
    }
    let (mut earlier_left, mut target_ok) = (earlier, None);
    loop {
        // Decided: an earlier one answered, or every earlier one said no and the target did.
        if earlier_left == 0 {
            if let Some(ok) = target_ok {
                return ok;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((false, true)) => return false,
            Ok((false, false)) => earlier_left -= 1,
            Ok((true, ok)) => target_ok = Some(ok),
            // The deadline: whatever earlier one is still silent did not answer in time.
            Err(_) => return target_ok.unwrap_or(false),
        }
    }
}

/// Whether some address of `address` sends an SSH banner within `timeout` in all.
#[cfg(test)]
pub fn answers(address: &str, timeout: Duration) -> bool {
    answers_unless(address, &[], timeout)
}

/// Starts asking every address of `name` (the lookup too) on threads of their own; sends
/// `(is_target, answered)` once. False, sending nothing, when `name` is no gateway address.
fn ask(name: &str, deadline: Instant, is_target: bool, tx: &mpsc::Sender<(bool, bool)>) -> bool {
    let Ok(gw) = Gateway::parse(name) else {
        return false;
    };
    let tx = tx.clone();
    std::thread::spawn(move || {
        let addrs: Vec<SocketAddr> = match (gw.host(), gw.port()).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(_) => Vec::new(),
        };
        let (atx, arx) = mpsc::channel::<bool>();
        for a in &addrs {
            let atx = atx.clone();
            let a = *a;
            std::thread::spawn(move || {
                let _ = atx.send(banner_from(a, deadline));
            });
        }
        drop(atx);
        let ok = arx.iter().take(addrs.len()).any(|ok| ok);
        let _ = tx.send((is_target, ok));
    });
    true
}

fn banner_from(addr: SocketAddr, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let Ok(mut s) = TcpStream::connect_timeout(&addr, left) else {
        return false;
    };
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if is_banner(&seen) {
            return true;
        }
        if seen.len() > MAX_PREAMBLE {
            return false;
        }
    }
}

/// Whether `seen` holds a line that starts `SSH-` (the identification string).
fn is_banner(seen: &[u8]) -> bool {
    seen.split(|b| *b == b'\n')
        .any(|line| line.starts_with(b"SSH-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::TcpListener;

    fn serve(reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(reply);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(2));
                    drop(s);
                });
            }
        });
        addr.to_string()
    }

    fn nobody() -> String {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_ssh_banner_answers_and_silence_or_another_protocol_does_not() {
        let t = Duration::from_millis(500);
        assert!(answers(&serve(b"SSH-2.0-postern\r\n"), t));
        assert!(answers(&serve(b"hello\r\nSSH-2.0-x\r\n"), t));
        assert!(!answers(&serve(b"HTTP/1.1 400 Bad Request\r\n\r\n"), t));
        // Accepted but silent (a stopped process, a load balancer without a backend).
        assert!(!answers(&serve(b""), t));
        assert!(!answers(&nobody(), t));
        for bad in ["", "-oProxyCommand=x:22", "host:0", "a b:22"] {
            assert!(!answers(bad, t), "{bad}");
        }
    }

    #[test]
    fn an_earlier_gateway_that_answers_makes_the_probe_say_no_without_asking() {
        let t = Duration::from_millis(500);
        let (up, silent) = (serve(b"SSH-2.0-a\r\n"), serve(b""));
        let other = serve(b"SSH-2.0-b\r\n");
        // An earlier one up: no, at once, whatever the later one would say.
        assert!(!answers_unless(&silent, std::slice::from_ref(&up), t));
        assert!(!answers_unless(&other, std::slice::from_ref(&up), t));
        assert!(!answers_unless(&other, &[nobody(), up], t));
        // Every earlier one down or silent: the later one's answer, within the one timeout.
        assert!(answers_unless(&other, &[nobody(), silent.clone()], t));
        assert!(answers_unless(&other, &[nobody()], t));
        assert!(!answers_unless(&silent, &[nobody()], t));
    }
}
