//! Traffic helpers: checksummed transfers between pods, packet captures
//! and the counters of a status report.

use super::*;

/// The stream both ends of a transfer agree on: a marker that a capture can
/// look for, and a cheap generator.
pub const PLAINTEXT_MARKER: &[u8] = b"WEFT-PLAINTEXT-MARKER-";

fn fill(block: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    block[..PLAINTEXT_MARKER.len()].copy_from_slice(PLAINTEXT_MARKER);
}

/// Result of a checksummed transfer.
#[derive(Debug)]
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    pub sent_sum: [u8; 32],
    pub received_sum: [u8; 32],
    pub elapsed: Duration,
}

/// Sends `bytes` (or as much as fits in `max_time`, if given) from pod
/// `from` to pod `to` over TCP, hashing both ends with BLAKE2s.
pub fn transfer(from: &Pod, to: &Pod, bytes: u64, max_time: Option<Duration>) -> Transfer {
    transfer_between(&from.ns, &to.ns, to.addr.into(), bytes, max_time)
}

/// [`transfer`] from namespace `from` to `to_addr` in namespace `to`, of
/// either family.
pub fn transfer_between(
    from: &Netns,
    to: &Netns,
    to_addr: std::net::IpAddr,
    bytes: u64,
    max_time: Option<Duration>,
) -> Transfer {
    use blake2::{Blake2s256, Digest};
    let port = 5201 + (COUNTER.fetch_add(1, Ordering::Relaxed) % 100) as u16;
    let listen = SocketAddr::from((to_addr, port));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&to.name, move || {
        let listener = TcpListener::bind(listen).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        read_hashed(&mut stream, &std::sync::atomic::AtomicU64::new(0))
            .unwrap_or_else(|e| panic!("{e}"))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    let client = in_netns(&from.name, move || {
        let start = Instant::now();
        let mut stream =
            TcpStream::connect_timeout(&listen, Duration::from_secs(5)).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut hasher = Blake2s256::new();
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let mut seed = 1u64;
        while sent < bytes && max_time.is_none_or(|t| start.elapsed() < t) {
            fill(&mut block, seed);
            seed += 1;
            let n = block.len().min((bytes - sent) as usize);
            stream.write_all(&block[..n]).expect("send");
            hasher.update(&block[..n]);
            sent += n as u64;
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        (sent, <[u8; 32]>::from(hasher.finalize()), start)
    });
    let (sent, sent_sum, start) = client.join().expect("sender thread");
    let (received, received_sum) = server.join().expect("receiver thread");
    Transfer {
        sent,
        received,
        sent_sum,
        received_sum,
        elapsed: start.elapsed(),
    }
}

/// Reads `stream` to its end, hashing with BLAKE2s and counting into
/// `progress` as bytes arrive: (bytes, hash), or what failed and when.
pub fn read_hashed(
    stream: &mut TcpStream,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<(u64, [u8; 32]), String> {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((total, <[u8; 32]>::from(hasher.finalize()))),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
                progress.store(total, Ordering::Relaxed);
            }
            Err(e) => return Err(format!("receiver: {e} after {total} bytes")),
        }
    }
}

/// A bounded tcpdump in a namespace writing a pcap file. In immediate
/// mode: libpcap's TPACKET_V3 ring otherwise hands packets over in blocks
/// up to a second late, and a packet still in an unfinished block when the
/// capture is stopped is never written, so a check for "no such packet"
/// could pass on packets of its last second.
pub struct Capture {
    child: Child,
    pub path: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str, filter: &str, path: PathBuf, max_packets: u32) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "timeout",
                "120",
                "tcpdump",
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-i",
                iface,
                "-c",
            ])
            .arg(max_packets.to_string())
            .arg("-w")
            .arg(&path)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(700));
        Self { child, path }
    }

    /// Stops the capture and returns the UDP payloads (Ethernet/IPv4 only).
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let data = fs::read(&self.path).unwrap_or_default();
        udp_payloads(&data)
    }
}

/// The frames of a pcap file (classic format, little-endian headers).
pub fn pcap_frames(pcap: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    if pcap.len() < 24 {
        return frames;
    }
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let start = at + 16;
        let end = start + incl;
        if end > pcap.len() {
            break;
        }
        frames.push(&pcap[start..end]);
        at = end;
    }
    frames
}

/// Parses a pcap (link type Ethernet) into UDP payloads.
pub fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for frame in pcap_frames(pcap) {
        if frame.len() > 14 + 20 + 8 && frame[12..14] == [0x08, 0x00] && frame[14 + 9] == 17 {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let udp = 14 + ihl;
            if frame.len() >= udp + 8 {
                out.push(frame[udp + 8..].to_vec());
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Status numbers by key path, for readable asserts.
pub fn counters(status: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    if let Some(d) = status["dataplane"]["dropped"].as_object() {
        for (k, v) in d {
            map.insert(format!("dropped.{k}"), v.as_u64().unwrap_or(0));
        }
    }
    for key in ["packets_in", "packets_out", "bytes_in", "bytes_out"] {
        map.insert(key.into(), status["dataplane"][key].as_u64().unwrap_or(0));
    }
    map
}

/// The nearest-rank `p` quantile (0.0..=1.0) of samples sorted ascending,
/// as every latency figure the tests print is taken.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
