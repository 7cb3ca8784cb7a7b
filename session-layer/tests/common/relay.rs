//! A TCP relay to a test server (PostgreSQL or Redis) that can hold bytes without closing anything (a
//! partition nobody notices), drop every current connection (a crash), or delay one way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// TCP relay: freeze (hold bytes), kill current connections (generation), add one-way latency.
pub struct Relay {
    pub port: u16,
    target: u16,
    pub frozen: watch::Sender<bool>,
    pub generation: watch::Sender<u64>,
    pub delay_ms: Arc<AtomicU64>,
    pub accepted: Arc<AtomicUsize>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(false);
        let (generation, _) = watch::channel(0u64);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (frozen_rx, gen_rx) = (frozen.subscribe(), generation.subscribe());
        let (delay, acc) = (delay_ms.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let mut gen_rx = gen_rx.clone();
                let my_gen = *gen_rx.borrow_and_update();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    tokio::spawn(pump(
                        from,
                        to,
                        frozen_rx.clone(),
                        gen_rx.clone(),
                        my_gen,
                        delay.clone(),
                    ));
                }
            }
        });
        Self {
            port,
            target: target_port,
            frozen,
            generation,
            delay_ms,
            accepted,
        }
    }
    /// `url` (of the relayed server) through this relay.
    pub fn url(&self, url: &str) -> String {
        url.replace(&format!(":{}/", self.target), &format!(":{}/", self.port))
    }

    /// Drops every connection it carries now (new ones pass).
    pub fn kill(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn pump(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    mut to: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut frozen: watch::Receiver<bool>,
    generation: watch::Receiver<u64>,
    my_gen: u64,
    delay_ms: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut g1 = generation.clone();
    let reader = async move {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let _ = tx.send((Instant::now(), buffer[..n].to_vec()));
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            let d = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
            tokio::time::sleep_until((at + d).into()).await;
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = g1.wait_for(|g| *g != my_gen) => {}
        () = async { tokio::join!(reader, writer); } => {}
    }
    drop(generation);
}
