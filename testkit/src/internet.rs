//! A stand-in for the internet, for tests and benchmarks of a guest with
//! internet access: a network namespace with a public-looking address,
//! routed from the host, serving HTTP (`GET /hello`, `GET /bytes/N`,
//! `POST` of any size). Needs root and `ip` (iproute2).

use std::process::Command;

/// A stand-in for the internet: a network namespace of its own with a
/// public-looking address, routed from the host, and an HTTP server on
/// every address it has (a private one too). Removed however the test
/// ends.
pub struct Internet;

pub const INTERNET_NS: &str = "zntest-inet";
/// Public (not in `BLOCKED_V4`): the guest may reach it.
pub const INTERNET_IP: &str = "93.184.216.34";
/// The same server's private address: the guest may not.
pub const INTERNET_PRIVATE_IP: &str = "10.250.0.2";
pub const INTERNET_PORT: u16 = 8080;

impl Internet {
    /// Sets the namespace up (root only) and starts its HTTP server.
    pub fn up() -> Internet {
        Internet::down();
        for cmd in [
            format!("netns add {INTERNET_NS}"),
            format!("link add itest0 type veth peer name itest1 netns {INTERNET_NS}"),
            "addr add 10.250.0.1/30 dev itest0".into(),
            "link set itest0 up".into(),
            format!("-n {INTERNET_NS} addr add {INTERNET_PRIVATE_IP}/30 dev itest1"),
            format!("-n {INTERNET_NS} addr add {INTERNET_IP}/32 dev itest1"),
            format!("-n {INTERNET_NS} link set itest1 up"),
            format!("-n {INTERNET_NS} link set lo up"),
            format!("route add {INTERNET_IP}/32 via {INTERNET_PRIVATE_IP}"),
        ] {
            let out = Command::new("ip")
                .args(cmd.split_whitespace())
                .output()
                .expect("ip runs (install iproute2)");
            assert!(
                out.status.success(),
                "ip {cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::spawn(serve_http_in_the_internet);
        Internet
    }

    /// Removes the namespace, its link and route (nothing if absent).
    pub fn down() {
        for cmd in [
            format!("route del {INTERNET_IP}/32"),
            "link del itest0".into(),
            format!("netns del {INTERNET_NS}"),
        ] {
            let _ = Command::new("ip").args(cmd.split_whitespace()).output();
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        Internet::down();
    }
}

/// `GET /hello` answers a line; `GET /bytes/N` sends N bytes; `POST`
/// reads its body and answers how many bytes came.
fn serve_http_in_the_internet() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::fd::AsFd;
    let ns = std::fs::File::open(format!("/run/netns/{INTERNET_NS}")).unwrap();
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let listener = std::net::TcpListener::bind(("0.0.0.0", INTERNET_PORT)).unwrap();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap_or_default();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let body: Vec<u8> = if request.starts_with("POST") {
                let mut got = vec![0u8; length];
                reader.read_exact(&mut got).unwrap_or_default();
                format!("got {length}\n").into_bytes()
            } else if let Some(n) = path.strip_prefix("/bytes/") {
                vec![b'x'; n.parse().unwrap_or(0)]
            } else {
                b"hello from the internet\n".to_vec()
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        });
    }
}
