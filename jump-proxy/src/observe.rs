//! The file-transfer observers the relay trusts instead of a cast (legacy scp's rcp protocol,
//! the sftp subsystem) behind one interface, so that one rule in `relay.rs` decides when a
//! channel stops being a file transfer and is recorded from that byte on.

use crate::scp::{ScpObserver, ScpOp};
use crate::sftp::{FileOp, SftpObserver};

/// What the server wrote to its standard error ends either observation: neither scp nor
/// sftp-server writes there, a shell (its prompt, `bash -i >&2`) does.
pub const STDERR: &str = "the server wrote to standard error";

/// The observer of one channel.
pub enum Observer {
    /// An exec of `scp -t|-f PATH` in the form stock `scp -O` sends.
    Scp(ScpObserver),
    /// The `sftp` subsystem.
    Sftp(SftpObserver),
}

/// One event of an observer.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// From the scp observer.
    Scp(ScpOp),
    /// From the SFTP observer.
    Sftp(FileOp),
}

impl Op {
    /// The observer could not follow: the channel must be recorded from these bytes on.
    pub fn gave_up(&self) -> bool {
        matches!(
            self,
            Op::Scp(ScpOp::GaveUp { .. }) | Op::Sftp(FileOp::GaveUp { .. })
        )
    }
}

fn scp(ops: Vec<ScpOp>) -> Vec<Op> {
    ops.into_iter().map(Op::Scp).collect()
}

fn sftp(ops: Vec<FileOp>) -> Vec<Op> {
    ops.into_iter().map(Op::Sftp).collect()
}

impl Observer {
    /// Bytes from the client to the server.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<Op> {
        match self {
            Observer::Scp(o) => scp(o.client_bytes(data)),
            Observer::Sftp(o) => sftp(o.client_bytes(data)),
        }
    }

    /// Bytes from the server: its standard output, or (`stderr`) any extended data.
    pub fn server_bytes(&mut self, data: &[u8], stderr: bool) -> Vec<Op> {
        match (self, stderr) {
            (Observer::Scp(o), false) => scp(o.server_bytes(data)),
            (Observer::Scp(o), true) => scp(o.give_up_now(STDERR)),
            (Observer::Sftp(o), false) => sftp(o.server_bytes(data)),
            (Observer::Sftp(o), true) => sftp(o.give_up_now(STDERR)),
        }
    }

    /// The channel ended.
    pub fn finish(&mut self) -> Vec<Op> {
        match self {
            Observer::Scp(o) => scp(o.finish()),
            Observer::Sftp(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scp::ScpCommand;

    fn scp_upload() -> Observer {
        match ScpCommand::parse("scp -t /tmp") {
            Some(Ok(c)) => Observer::Scp(ScpObserver::new(c)),
            other => panic!("{other:?}"),
        }
    }

    /// The SFTP handshake, as OpenSSH's sftp and sftp-server send it.
    fn sftp_started() -> Observer {
        let mut o = Observer::Sftp(SftpObserver::default());
        assert_eq!(o.client_bytes(&[0, 0, 0, 5, 1, 0, 0, 0, 3]), []);
        assert_eq!(o.server_bytes(&[0, 0, 0, 5, 2, 0, 0, 0, 3], false), []);
        o
    }

    fn gave_up(ops: &[Op]) -> usize {
        ops.iter().filter(|o| o.gave_up()).count()
    }

    /// Each way a trusted file transfer stops being one makes its observer give up once, in
    /// the call that saw it, so the relay records those very bytes.
    #[test]
    fn hostile_input_makes_either_observer_give_up_once() {
        type Make = fn() -> Observer;
        type Feed = fn(&mut Observer) -> Vec<Op>;
        let cases: [(&str, Make, Feed); 8] = [
            ("sftp: a shell command", sftp_started, |o| {
                o.client_bytes(b"echo MARKER-$((6*7))\n")
            }),
            ("sftp: an absurd length", sftp_started, |o| {
                o.client_bytes(&[0x7f, 0xff, 0xff, 0xff, 3])
            }),
            ("sftp: a shell's prompt on stdout", sftp_started, |o| {
                o.server_bytes(b"$ ", false)
            }),
            ("sftp: a shell's prompt on stderr", sftp_started, |o| {
                o.server_bytes(b"$ ", true)
            }),
            ("sftp: empty stderr data", sftp_started, |o| {
                o.server_bytes(b"", true)
            }),
            ("scp: text instead of a record", scp_upload, |o| {
                o.client_bytes(b"echo hi\n")
            }),
            ("scp: text instead of a response", scp_upload, |o| {
                o.server_bytes(b"bash$ ", false)
            }),
            ("scp: anything on stderr", scp_upload, |o| {
                o.server_bytes(b"\x00", true)
            }),
        ];
        for (case, make, feed) in cases {
            let mut o = make();
            assert_eq!(gave_up(&feed(&mut o)), 1, "{case}");
            assert_eq!(gave_up(&feed(&mut o)), 0, "{case}: twice");
            assert_eq!(gave_up(&o.server_bytes(b"more", true)), 0, "{case}");
        }
    }

    #[test]
    fn a_normal_start_gives_up_on_nothing() {
        let mut o = scp_upload();
        assert_eq!(o.server_bytes(&[0], false), []);
        let o = sftp_started();
        assert!(matches!(o, Observer::Sftp(_)));
    }
}
