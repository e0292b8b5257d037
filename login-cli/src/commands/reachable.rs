//! `postern reachable HOST:PORT`: whether an SSH server answers there. The ssh_config of a
//! cluster with several gateways runs it (`Match exec`) so that stock ssh jumps through the
//! first gateway that answers. A TCP connection alone is not enough: a stopped process's
//! socket still accepts, and a load balancer accepts for backends that are gone, so the
//! answer is the server's banner (RFC 4253 4.2: `SSH-`, possibly after other lines).

use std::io::Read as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::render::Gateway;

/// The most bytes read while looking for the banner line (RFC 4253 allows lines before it).
const MAX_PREAMBLE: usize = 8 << 10;

/// Whether some address of `address` sends an SSH banner within `timeout` in all.
pub fn answers(address: &str, timeout: Duration) -> bool {
    let Ok(gw) = Gateway::parse(address) else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    let Ok(addrs) = (gw.host(), gw.port()).to_socket_addrs() else {
        return false;
    };
    addrs.into_iter().any(|a| {
        let left = deadline.saturating_duration_since(Instant::now());
        !left.is_zero() && banner_from(a, left, deadline)
    })
}

fn banner_from(addr: std::net::SocketAddr, left: Duration, deadline: Instant) -> bool {
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
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(reply);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        addr.to_string()
    }

    #[test]
    fn an_ssh_banner_answers_and_silence_or_another_protocol_does_not() {
        let t = Duration::from_millis(500);
        assert!(answers(&serve(b"SSH-2.0-postern\r\n"), t));
        assert!(answers(&serve(b"hello\r\nSSH-2.0-x\r\n"), t));
        assert!(!answers(&serve(b"HTTP/1.1 400 Bad Request\r\n\r\n"), t));
        // Accepted but silent (a stopped process, a load balancer without a backend).
        assert!(!answers(&serve(b""), t));
        // Nobody listens.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!answers(&free.to_string(), t));
        for bad in ["", "-oProxyCommand=x:22", "host:0", "a b:22"] {
            assert!(!answers(bad, t), "{bad}");
        }
    }
}
