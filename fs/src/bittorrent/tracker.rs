//! The node's HTTP tracker (BEP 3 announce, BEP 23 compact peers, BEP 7
//! `peers6`) for the files it seeds: the query parser, the swarm book and
//! the bencoded answers. Pure: time is a parameter, no I/O; the route
//! that serves it is `GET /announce` on the node's HTTP listener
//! ([`crate::bittorrent::router`]).
//!
//! - The announcing peer's address is the one its request came from; the
//!   `ip` parameter is ignored, so nobody can list (or make this node
//!   dial, see below) a third party's address.
//! - Answers are always compact (BEP 23 lets a tracker refuse anything
//!   else; every client in use asks for compact).
//! - Bounded: only files seeded here are tracked, at most
//!   [`MAX_PER_SWARM`] peers per file and [`MAX_PER_IP`] per address in
//!   it (the oldest go first), peers silent for two intervals expire, and
//!   a query longer than [`MAX_QUERY`] is refused unread.
//! - A bad request gets a `failure reason` naming what is wrong.
//!
//! The swarm book also decides whom the seeder dials: transmission 3.00
//! drops tracker-supplied peers on 127.x and was seen never to dial a
//! tracker peer at all, though it downloads when the seeder connects to
//! it. So every leecher that announces is reported as one to dial (the
//! node dials it once per announce unless connected already).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::error::TrackerError;

/// Seconds between announces asked of clients.
pub const INTERVAL: Duration = Duration::from_secs(120);
/// Clients must not announce more often than this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Peers kept per file.
pub const MAX_PER_SWARM: usize = 1000;
/// Peers from one IP address per file (several clients behind one NAT,
/// or several on one test machine).
pub const MAX_PER_IP: usize = 16;
/// Peers returned in one answer (a client's `numwant` may lower it).
pub const MAX_NUMWANT: usize = 50;
/// Longest query string read.
pub const MAX_QUERY: usize = 2048;

/// A client's announce, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    /// Bytes the client still needs (`None`: it did not say).
    pub left: Option<u64>,
    pub uploaded: u64,
    pub downloaded: u64,
    pub event: Event,
    pub numwant: usize,
}

impl Announce {
    /// Seeding (nothing left) rather than downloading.
    pub fn is_seeder(&self) -> bool {
        self.left == Some(0) || self.event == Event::Completed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A regular re-announce.
    None,
    Started,
    Completed,
    Stopped,
}

/// Parses an announce's raw query string (`info_hash` and `peer_id` are
/// percent-encoded bytes, so they are decoded here, not as UTF-8).
pub fn parse_announce(query: &str) -> Result<Announce, TrackerError> {
    if query.len() > MAX_QUERY {
        return Err(TrackerError::TooLong(query.len()));
    }
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut left = None;
    let mut uploaded = 0;
    let mut downloaded = 0;
    let mut event = Event::None;
    let mut numwant = MAX_NUMWANT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bytes: Vec<u8> = percent_decode_str(value).collect();
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        let number = |key: &'static str| {
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| TrackerError::BadNumber { key, value: text() })
        };
        match key {
            "info_hash" => {
                if info_hash.is_some() {
                    return Err(TrackerError::Repeated("info_hash"));
                }
                info_hash = Some(
                    <[u8; 20]>::try_from(bytes.as_slice())
                        .map_err(|_| TrackerError::BadInfoHash(bytes.len()))?,
                );
            }
            "peer_id" => {
                peer_id = Some(
                    <[u8; 20]>::try_from(bytes.as_slice())
                        .map_err(|_| TrackerError::BadPeerId(bytes.len()))?,
                );
            }
            "port" => {
                port = Some(
                    std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok())
                        .filter(|p| *p != 0)
                        .ok_or_else(|| TrackerError::BadPort(text()))?,
                );
            }
            "left" => left = Some(number("left")?),
            "uploaded" => uploaded = number("uploaded")?,
            "downloaded" => downloaded = number("downloaded")?,
            "numwant" => numwant = (number("numwant")? as usize).min(MAX_NUMWANT),
            "event" => {
                event = match bytes.as_slice() {
                    b"" | b"empty" => Event::None,
                    b"started" => Event::Started,
                    b"completed" => Event::Completed,
                    b"stopped" => Event::Stopped,
                    _ => return Err(TrackerError::BadEvent(text())),
                }
            }
            // compact (always), ip (never trusted), key, trackerid,
            // no_peer_id, supportcrypto, corrupt, redundant…
            _ => {}
        }
    }
    Ok(Announce {
        info_hash: info_hash.ok_or(TrackerError::Missing("info_hash"))?,
        peer_id: peer_id.ok_or(TrackerError::Missing("peer_id"))?,
        port: port.ok_or(TrackerError::Missing("port"))?,
        left,
        uploaded,
        downloaded,
        event,
        numwant,
    })
}

/// The files a scrape (BEP 48) asks about: one or more `info_hash`es,
/// at most [`MAX_NUMWANT`].
pub fn parse_scrape(query: &str) -> Result<Vec<[u8; 20]>, TrackerError> {
    if query.len() > MAX_QUERY {
        return Err(TrackerError::TooLong(query.len()));
    }
    let mut hashes = Vec::new();
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("info_hash=") else {
            continue;
        };
        let bytes: Vec<u8> = percent_decode_str(value).collect();
        hashes.push(
            <[u8; 20]>::try_from(bytes.as_slice())
                .map_err(|_| TrackerError::BadInfoHash(bytes.len()))?,
        );
    }
    if hashes.is_empty() {
        return Err(TrackerError::Missing("info_hash"));
    }
    hashes.truncate(MAX_NUMWANT);
    Ok(hashes)
}

/// `d5:filesd20:…d8:completei…e10:downloadedi0e10:incompletei…eeee`.
pub fn encode_scrape(files: &[([u8; 20], usize, usize)]) -> Vec<u8> {
    use serde_bencode::value::Value;
    let int = |n: usize| Value::Int(n as i64);
    let files = files
        .iter()
        .map(|(hash, complete, incomplete)| {
            let stats = [
                (b"complete".to_vec(), int(*complete)),
                (b"downloaded".to_vec(), int(0)),
                (b"incomplete".to_vec(), int(*incomplete)),
            ];
            (hash.to_vec(), Value::Dict(stats.into_iter().collect()))
        })
        .collect();
    let top = Value::Dict(
        [(b"files".to_vec(), Value::Dict(files))]
            .into_iter()
            .collect(),
    );
    serde_bencode::to_bytes(&top).expect("plain values encode")
}

/// What an announce yields: the answer's peers and counts, and whether
/// the seeder should dial the announcing peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub peers: Vec<SocketAddr>,
    pub complete: usize,
    pub incomplete: usize,
    /// A leecher to connect to (see the module docs).
    pub dial: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    seeder: bool,
    seen: Duration,
}

/// The peers of every tracked file.
#[derive(Debug, Default)]
pub struct Swarms {
    swarms: HashMap<[u8; 20], HashMap<[u8; 20], Peer>>,
}

impl Swarms {
    /// Records `a` from `ip` at `now` and answers it. `own` (this node's
    /// BitTorrent address, when it serves the file) is listed first.
    pub fn announce(
        &mut self,
        a: &Announce,
        ip: IpAddr,
        own: Option<SocketAddr>,
        now: Duration,
    ) -> Outcome {
        let swarm = self.swarms.entry(a.info_hash).or_default();
        swarm.retain(|_, p| now.saturating_sub(p.seen) <= 2 * INTERVAL);
        let addr = SocketAddr::new(ip, a.port);
        if a.event == Event::Stopped {
            swarm.remove(&a.peer_id);
        } else {
            if !swarm.contains_key(&a.peer_id) {
                // Room per address and per file: the oldest go first.
                let same_ip: Vec<([u8; 20], Duration)> = swarm
                    .iter()
                    .filter(|(_, p)| p.addr.ip() == ip)
                    .map(|(id, p)| (*id, p.seen))
                    .collect();
                if same_ip.len() >= MAX_PER_IP {
                    evict_oldest(swarm, &same_ip);
                }
                if swarm.len() >= MAX_PER_SWARM {
                    let all: Vec<_> = swarm.iter().map(|(id, p)| (*id, p.seen)).collect();
                    evict_oldest(swarm, &all);
                }
            }
            swarm.insert(
                a.peer_id,
                Peer {
                    addr,
                    seeder: a.is_seeder(),
                    seen: now,
                },
            );
        }
        let complete = swarm.values().filter(|p| p.seeder).count();
        let incomplete = swarm.len() - complete;
        let mut peers: Vec<SocketAddr> = own.into_iter().collect();
        // A seeder needs only leechers; a leecher needs everyone.
        let mut others: Vec<&Peer> = swarm
            .iter()
            .filter(|(id, p)| **id != a.peer_id && !(a.is_seeder() && p.seeder))
            .map(|(_, p)| p)
            .collect();
        others.sort_by_key(|p| std::cmp::Reverse(p.seen));
        peers.extend(
            others
                .into_iter()
                .map(|p| p.addr)
                .filter(|addr| Some(*addr) != own),
        );
        peers.truncate(a.numwant);
        let dial = (a.event != Event::Stopped && !a.is_seeder()).then_some(addr);
        Outcome {
            peers,
            complete: complete + usize::from(own.is_some()),
            incomplete,
            dial,
        }
    }

    /// Seeders and leechers of a file, as last announced.
    pub fn counts(&self, info_hash: &[u8; 20], now: Duration) -> (usize, usize) {
        self.swarms.get(info_hash).map_or((0, 0), |s| {
            let live: Vec<&Peer> = s
                .values()
                .filter(|p| now.saturating_sub(p.seen) <= 2 * INTERVAL)
                .collect();
            let seeders = live.iter().filter(|p| p.seeder).count();
            (seeders, live.len() - seeders)
        })
    }

    /// The peers recorded for a file (newest first), for this node's own
    /// downloads.
    pub fn peers(&self, info_hash: &[u8; 20], now: Duration) -> Vec<SocketAddr> {
        let mut v: Vec<&Peer> = self
            .swarms
            .get(info_hash)
            .map(|s| {
                s.values()
                    .filter(|p| now.saturating_sub(p.seen) <= 2 * INTERVAL)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|p| std::cmp::Reverse(p.seen));
        v.into_iter().map(|p| p.addr).collect()
    }

    /// Forgets a file no longer seeded.
    pub fn forget(&mut self, info_hash: &[u8; 20]) {
        self.swarms.remove(info_hash);
    }
}

fn evict_oldest(swarm: &mut HashMap<[u8; 20], Peer>, among: &[([u8; 20], Duration)]) {
    if let Some((id, _)) = among.iter().min_by_key(|(_, seen)| *seen) {
        swarm.remove(id);
    }
}

#[derive(Serialize)]
struct Answer {
    complete: usize,
    incomplete: usize,
    interval: u64,
    #[serde(rename = "min interval")]
    min_interval: u64,
    #[serde(with = "serde_bytes")]
    peers: Vec<u8>,
    #[serde(with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    peers6: Vec<u8>,
}

#[derive(Serialize)]
struct Failure<'a> {
    #[serde(rename = "failure reason")]
    reason: &'a str,
}

/// The bencoded answer: IPv4 peers in `peers` (6 bytes each, BEP 23),
/// IPv6 ones in `peers6` (18 bytes each, BEP 7).
pub fn encode_answer(o: &Outcome) -> Vec<u8> {
    let (mut peers, mut peers6) = (Vec::new(), Vec::new());
    for p in &o.peers {
        let port = p.port().to_be_bytes();
        let out = match p.ip() {
            IpAddr::V4(ip) => {
                peers.extend_from_slice(&ip.octets());
                &mut peers
            }
            IpAddr::V6(ip) => {
                peers6.extend_from_slice(&ip.octets());
                &mut peers6
            }
        };
        out.extend_from_slice(&port);
    }
    serde_bencode::to_bytes(&Answer {
        complete: o.complete,
        incomplete: o.incomplete,
        interval: INTERVAL.as_secs(),
        min_interval: MIN_INTERVAL.as_secs(),
        peers,
        peers6,
    })
    .expect("plain fields encode")
}

/// `d14:failure reason…e`.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    serde_bencode::to_bytes(&Failure { reason }).expect("a string encodes")
}

/// A tracker's answer to this node's own announce (the client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub interval: Duration,
    pub peers: Vec<SocketAddr>,
}

/// Parses a tracker's answer: compact `peers` (and `peers6`), or the
/// original list of dicts; a `failure reason` is an error.
pub fn parse_answer(bytes: &[u8]) -> Result<Answered, TrackerError> {
    use serde_bencode::value::Value;
    let bad = |why: &str| TrackerError::BadAnswer(why.to_string());
    if bytes.len() > 1 << 20 {
        return Err(bad("over 1 MiB"));
    }
    let Ok(Value::Dict(d)) = serde_bencode::from_bytes::<Value>(bytes) else {
        return Err(bad("not a bencoded dictionary"));
    };
    if let Some(Value::Bytes(r)) = d.get(b"failure reason".as_slice()) {
        return Err(TrackerError::Failure(
            String::from_utf8_lossy(r).into_owned(),
        ));
    }
    let interval = match d.get(b"interval".as_slice()) {
        Some(Value::Int(i)) if *i > 0 => Duration::from_secs(*i as u64),
        _ => INTERVAL,
    };
    let mut peers = Vec::new();
    match d.get(b"peers".as_slice()) {
        Some(Value::Bytes(b)) => {
            if !b.len().is_multiple_of(6) {
                return Err(bad("compact peers are not a multiple of 6 bytes"));
            }
            for c in b.chunks_exact(6) {
                let ip: [u8; 4] = c[..4].try_into().expect("4 bytes");
                let port = u16::from_be_bytes([c[4], c[5]]);
                peers.push(SocketAddr::new(IpAddr::from(ip), port));
            }
        }
        Some(Value::List(list)) => {
            for p in list {
                let Value::Dict(p) = p else { continue };
                let ip = match p.get(b"ip".as_slice()) {
                    Some(Value::Bytes(ip)) => {
                        std::str::from_utf8(ip).ok().and_then(|s| s.parse().ok())
                    }
                    _ => None,
                };
                let port = match p.get(b"port".as_slice()) {
                    Some(Value::Int(port)) => u16::try_from(*port).ok(),
                    _ => None,
                };
                if let (Some(ip), Some(port)) = (ip, port) {
                    peers.push(SocketAddr::new(ip, port));
                }
            }
        }
        None => {}
        Some(_) => return Err(bad("peers is neither a string nor a list")),
    }
    if let Some(Value::Bytes(b)) = d.get(b"peers6".as_slice()) {
        for c in b.chunks_exact(18) {
            let ip: [u8; 16] = c[..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([c[16], c[17]]);
            peers.push(SocketAddr::new(IpAddr::from(ip), port));
        }
    }
    peers.retain(|p| p.port() != 0);
    Ok(Answered { interval, peers })
}

/// The query string of this node's own announce (`info_hash` and
/// `peer_id` percent-encoded byte by byte).
pub fn announce_query(a: &Announce) -> String {
    let enc = |b: &[u8]| {
        percent_encoding::percent_encode(b, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut q = format!(
        "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&compact=1&numwant={}",
        enc(&a.info_hash),
        enc(&a.peer_id),
        a.port,
        a.uploaded,
        a.downloaded,
        a.numwant
    );
    if let Some(left) = a.left {
        q.push_str(&format!("&left={left}"));
    }
    match a.event {
        Event::None => {}
        Event::Started => q.push_str("&event=started"),
        Event::Completed => q.push_str("&event=completed"),
        Event::Stopped => q.push_str("&event=stopped"),
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn q(info: &[u8], peer: &[u8], rest: &str) -> String {
        let enc = |b: &[u8]| {
            percent_encoding::percent_encode(b, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!("info_hash={}&peer_id={}&{rest}", enc(info), enc(peer))
    }

    fn announce(peer: u8, port: u16, left: u64, event: &str) -> Announce {
        parse_announce(&q(
            &[9; 20],
            &[peer; 20],
            &format!("port={port}&left={left}&uploaded=0&downloaded=0&compact=1&event={event}"),
        ))
        .unwrap()
    }

    #[test]
    fn a_client_announce_parses_and_round_trips() {
        // transmission's order and fields, binary ids included.
        let a = parse_announce(&q(
            &[0, 0xff, b'&', b'=', 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            b"-TR3000-abcdefghijkl",
            "port=51413&uploaded=0&downloaded=0&left=33554432&numwant=80&key=1a2b&compact=1&supportcrypto=1&event=started",
        ))
        .unwrap();
        assert_eq!(a.port, 51413);
        assert_eq!(a.left, Some(32 << 20));
        assert_eq!(a.event, Event::Started);
        assert_eq!(a.numwant, MAX_NUMWANT);
        assert_eq!(parse_announce(&announce_query(&a)).unwrap(), a);
    }

    #[test]
    fn bad_requests_get_a_reason() {
        let cases: [(String, &str); 8] = [
            (q(&[1; 19], &[2; 20], "port=1"), "info_hash"),
            (q(&[1; 20], &[2; 21], "port=1"), "peer_id"),
            (q(&[1; 20], &[2; 20], "port=0"), "port"),
            (q(&[1; 20], &[2; 20], "port=70000"), "port"),
            (q(&[1; 20], &[2; 20], ""), "port"),
            (q(&[1; 20], &[2; 20], "port=1&left=-5"), "left"),
            (q(&[1; 20], &[2; 20], "port=1&event=paused"), "event"),
            ("port=1".to_string(), "info_hash"),
        ];
        for (query, word) in cases {
            let e = parse_announce(&query).unwrap_err();
            assert!(e.to_string().contains(word), "{query}: {e}");
        }
        let long = "a".repeat(MAX_QUERY + 1);
        assert!(matches!(
            parse_announce(&long),
            Err(TrackerError::TooLong(_))
        ));
        let failure = encode_failure("info_hash is 19 bytes");
        assert_eq!(failure, b"d14:failure reason21:info_hash is 19 bytese");
        assert!(matches!(
            parse_answer(&failure),
            Err(TrackerError::Failure(r)) if r == "info_hash is 19 bytes"
        ));
    }

    #[test]
    fn leechers_are_dialled_seeders_are_not_and_answers_are_compact() {
        let mut s = Swarms::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let own: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let seeder = announce(1, 7000, 0, "started");
        let o = s.announce(&seeder, lo, Some(own), S);
        assert_eq!(o.dial, None, "a seeder is not dialled");
        assert_eq!(o.peers, vec![own]);
        let leecher = announce(2, 7001, 100, "started");
        let o = s.announce(&leecher, lo, Some(own), 2 * S);
        assert_eq!(o.dial, Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(
            o.peers,
            vec![own, "127.0.0.1:7000".parse().unwrap()],
            "our seeder first, then the others"
        );
        assert_eq!((o.complete, o.incomplete), (2, 1));
        let bytes = encode_answer(&o);
        let back = parse_answer(&bytes).unwrap();
        assert_eq!(back.peers, o.peers);
        assert_eq!(back.interval, INTERVAL);
        // A stopped peer leaves; silent ones expire.
        s.announce(&announce(2, 7001, 100, "stopped"), lo, None, 3 * S);
        assert_eq!(s.counts(&[9; 20], 3 * S), (1, 0));
        assert_eq!(s.counts(&[9; 20], 2 * INTERVAL + 2 * S), (0, 0));
    }

    #[test]
    fn a_scrape_names_its_files() {
        let q = |h: &[u8]| {
            format!(
                "info_hash={}",
                percent_encoding::percent_encode(h, percent_encoding::NON_ALPHANUMERIC)
            )
        };
        let both = format!("{}&{}", q(&[1; 20]), q(&[2; 20]));
        assert_eq!(parse_scrape(&both).unwrap(), vec![[1; 20], [2; 20]]);
        assert!(parse_scrape("").is_err());
        assert!(parse_scrape(&q(&[1; 3])).is_err());
        let out = encode_scrape(&[([b'a'; 20], 2, 1)]);
        let expected = [
            b"d5:filesd20:".to_vec(),
            vec![b'a'; 20],
            b"d8:completei2e10:downloadedi0e10:incompletei1eeee".to_vec(),
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn one_address_cannot_fill_a_swarm() {
        let mut s = Swarms::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for i in 0..100u8 {
            let a = announce(i, 1000 + i as u16, 5, "started");
            s.announce(&a, ip, None, S * i as u32);
        }
        assert_eq!(s.counts(&[9; 20], 100 * S), (0, MAX_PER_IP));
        // The newest stay.
        let kept = s.peers(&[9; 20], 100 * S);
        assert!(kept.contains(&SocketAddr::new(ip, 1099)));
        assert!(!kept.contains(&SocketAddr::new(ip, 1000)));
        // Another address still gets in.
        let other = announce(200, 9, 5, "started");
        s.announce(&other, "10.0.0.10".parse().unwrap(), None, 101 * S);
        assert_eq!(s.counts(&[9; 20], 101 * S), (0, MAX_PER_IP + 1));
    }
}
