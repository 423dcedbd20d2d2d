//! A long-lived, paced, checksummed TCP flow between two pods, watched while
//! routers restart under it: the receiver counts bytes as they arrive, so a
//! test can measure the longest stall, and either end failing (a reset, a
//! timeout) is the test's failure, with the byte count at which it came.

use super::{Pod, in_netns, read_hashed};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long either end waits on a silent peer before it calls the flow
/// broken: longer than any outage a test makes.
const PATIENCE: Duration = Duration::from_secs(90);

/// A running flow (see the module docs).
pub struct Flow {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Result<(u64, [u8; 32]), String>>,
    receiver: JoinHandle<Result<(u64, [u8; 32]), String>>,
}

/// How a flow ended.
#[derive(Debug)]
pub struct FlowEnd {
    /// Bytes written by the sender, and their BLAKE2s.
    pub sent: (u64, [u8; 32]),
    /// Bytes read by the receiver, and their BLAKE2s.
    pub received: (u64, [u8; 32]),
}

impl Flow {
    /// Starts a flow from `from` to `to` on `port`, paced at about
    /// `bytes_per_second`, bounded by `max_time` whatever happens.
    pub fn start(
        from: &Pod,
        to: &Pod,
        port: u16,
        bytes_per_second: u64,
        max_time: Duration,
    ) -> Self {
        use blake2::{Blake2s256, Digest};
        let listen = SocketAddr::from((to.addr, port));
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let counter = received.clone();
        let receiver = in_netns(&to.ns.name, move || {
            let listener = TcpListener::bind(listen).map_err(|e| e.to_string())?;
            let _ = ready_tx.send(());
            let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(PATIENCE))
                .map_err(|e| e.to_string())?;
            read_hashed(&mut stream, &counter)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listener ready");
        let stopping = stop.clone();
        let sender = in_netns(&from.ns.name, move || {
            let start = Instant::now();
            let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            stream
                .set_write_timeout(Some(PATIENCE))
                .map_err(|e| e.to_string())?;
            let mut hasher = Blake2s256::new();
            let mut block = vec![0u8; 16 * 1024];
            let mut sent = 0u64;
            let mut seed = 7u64;
            while !stopping.load(Ordering::Relaxed) && start.elapsed() < max_time {
                // Pacing: never ahead of the rate.
                let due = Duration::from_secs_f64(sent as f64 / bytes_per_second as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                    continue;
                }
                for (i, b) in block.iter_mut().enumerate() {
                    *b = (seed as u8).wrapping_add(i as u8);
                }
                seed += 1;
                stream
                    .write_all(&block)
                    .map_err(|e| format!("sender: {e} after {sent} bytes"))?;
                hasher.update(&block);
                sent += block.len() as u64;
            }
            stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            Ok((sent, <[u8; 32]>::from(hasher.finalize())))
        });
        Self {
            received,
            stop,
            sender,
            receiver,
        }
    }

    /// Bytes the receiver has read so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Watches the flow until `done` is set, sampling every 20 ms: the
    /// longest time in it during which no byte arrived.
    pub fn longest_stall(&self, done: &AtomicBool) -> Duration {
        let (mut last, mut since, mut worst) = (self.received(), Instant::now(), Duration::ZERO);
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.received();
            if now != last {
                last = now;
                since = Instant::now();
            }
            worst = worst.max(since.elapsed());
        }
        worst
    }

    /// Stops sending and waits for both ends; an end that failed is the
    /// error, as it said it.
    pub fn finish(self) -> Result<FlowEnd, String> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().map_err(|_| "sender panicked")??;
        let received = self.receiver.join().map_err(|_| "receiver panicked")??;
        Ok(FlowEnd { sent, received })
    }
}
