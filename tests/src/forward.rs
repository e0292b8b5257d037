//! A TCP forwarder on loopback that a test stops and starts: one `posternd` reached through
//! two URLs is two CA instances to a client, and stopping the forwarder of one is that
//! instance dying (its port refuses connections, its open connections are cut). It counts
//! the connections it accepted, so that a test can tell which instance a client went to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::util::free_port;

/// A forwarder from `127.0.0.1:port` to a target address.
pub struct Forwarder {
    /// Its port on 127.0.0.1.
    pub port: u16,
    targets: Vec<SocketAddr>,
    accepted: Arc<AtomicUsize>,
    running: Option<JoinSet<()>>,
    rt: tokio::runtime::Runtime,
}

impl Forwarder {
    /// A running forwarder to `target` (`HOST:PORT`) on a free port.
    pub fn start(target: &str) -> Forwarder {
        Forwarder::start_many(&[target])
    }

    /// A load balancer: a running forwarder that sends each connection to the next of
    /// `targets` in turn, and to the one after when that one refuses.
    pub fn start_many(targets: &[&str]) -> Forwarder {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut f = Forwarder {
            port: free_port(),
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            accepted: Arc::default(),
            running: None,
            rt,
        };
        f.resume();
        f
    }

    /// A forwarder to the address of `url` (`https://HOST:PORT`).
    pub fn to_url(url: &str) -> Forwarder {
        Forwarder::start(url.trim_start_matches("https://").trim_end_matches('/'))
    }

    /// `https://127.0.0.1:PORT`, the URL through it.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops listening and cuts every connection: the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut set) = self.running.take() {
            set.abort_all();
            // Waits until every task is gone, so that the listener and the sockets are closed.
            self.rt
                .block_on(async { while set.join_next().await.is_some() {} });
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        if self.running.is_some() {
            return;
        }
        let listener = self
            .rt
            .block_on(TcpListener::bind(("127.0.0.1", self.port)))
            .unwrap();
        let (targets, accepted) = (self.targets.clone(), self.accepted.clone());
        let mut set = JoinSet::new();
        set.spawn_on(
            async move {
                // The connections are this task's, so that aborting it cuts them too.
                let mut conns = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let n = accepted.fetch_add(1, Ordering::SeqCst);
                    let targets = targets.clone();
                    conns.spawn(async move {
                        let mut server = None;
                        for i in 0..targets.len() {
                            let t = targets[(n + i) % targets.len()];
                            if let Ok(s) = TcpStream::connect(t).await {
                                server = Some(s);
                                break;
                            }
                        }
                        let Some(server) = server else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            },
            self.rt.handle(),
        );
        self.running = Some(set);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}
