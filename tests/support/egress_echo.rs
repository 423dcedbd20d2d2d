//! A pod's UDP round trip to a host outside the cluster, for the egress
//! tests of either family (tests/egress.rs, tests/masquerade6.rs): what
//! source the outside saw, and whether its answer came back.

use super::{Netns, in_netns};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A host outside the cluster, joined to `node` by a veth (`link` on the
/// node, eth0 there) on a `/prefix` holding `node_side` and `outside`
/// (IPv6 ones without DAD, usable at once), with no route to the pod
/// ranges. The veth goes with the namespaces.
pub fn outside_host(
    node: &Netns,
    link: &str,
    (node_side, outside_addr): (IpAddr, IpAddr),
    prefix: u8,
) -> Netns {
    let outside = Netns::new("outside");
    let veth = format!(
        "link add {link} type veth peer name eth0 netns {}",
        outside.name
    );
    node.ip(&veth.split_whitespace().collect::<Vec<_>>());
    for (ns, dev, addr) in [(node, link, node_side), (&outside, "eth0", outside_addr)] {
        let cidr = format!("{addr}/{prefix}");
        let mut args = vec!["addr", "add", &cidr, "dev", dev];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        ns.ip(&args);
        ns.ip(&["link", "set", dev, "up"]);
    }
    outside
}

/// A UDP socket at `at` in the namespace `outside`, read with a 300 ms
/// timeout (as [`udp_echo_exchange`] polls it).
pub fn outside_socket(outside: &Netns, at: SocketAddr) -> UdpSocket {
    let socket = in_netns(&outside.name, move || {
        UdpSocket::bind(at).expect("bind outside")
    })
    .join()
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
}

/// Sends `payload` from `from` (an address in the namespace `pod_ns`) to
/// `outside`'s address (a socket with a short read timeout), which echoes
/// the source it saw back to each datagram, for at most 3 s. Returns the
/// sources the outside saw with this payload and the reply the pod got.
pub fn udp_echo_exchange(
    pod_ns: &str,
    from: IpAddr,
    outside: &UdpSocket,
    payload: &'static str,
) -> (Vec<SocketAddr>, Option<String>) {
    let to = outside.local_addr().expect("the outside socket's address");
    let sender = in_netns(pod_ns, move || {
        let socket = UdpSocket::bind((from, 0)).expect("bind in pod");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 128];
        for _ in 0..10 {
            let _ = socket.send_to(payload.as_bytes(), to);
            if let Ok(n) = socket.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 128];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !sender.is_finished() {
        if let Ok((n, peer)) = outside.recv_from(&mut buf)
            && &buf[..n] == payload.as_bytes()
        {
            seen.push(peer);
            // Fails where the outside has no route back (an unrewritten
            // pod source): the pod then gets no reply.
            let _ = outside.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    }
    (seen, sender.join().unwrap())
}
