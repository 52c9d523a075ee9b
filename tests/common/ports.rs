//! Ports for the processes tests and benches start (benches include this file too).

/// A port on loopback that nothing listens on now (for a process a test or bench starts next).
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 by default),
/// one after another from a start that depends on the process: a port `bind(0)` hands out lies
/// in that range, where any outgoing connection (an etcd member dialling its peers, a client)
/// may take it as its local port before the process the port is for binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    if low < 11024 {
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let band = 10000; // ports [low - band, low)
    let start = std::process::id() * 7919 % band;
    for _ in 0..band {
        let port = (low - band + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % band) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}
