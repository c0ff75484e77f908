//! The BitTorrent side against cheating peers, in one process over real
//! sockets on loopback (the stock clients themselves are in the
//! workspace's end-to-end tests):
//!
//! - a BitTorrent seeder that sends corrupt pieces is dropped, never
//!   counted, and the download completes from the Zennet seeder;
//! - a BitTorrent seeder that announces a message over the cap is cut off
//!   on the length prefix (not by the silence timer);
//! - the serving side ignores requests over its queue cap (keeping the
//!   peer) and drops a peer that announces a message over the cap,
//!   asks for a part it does not hold, past the end, or a block too large;
//! - the tracker answers bad announces with a `failure reason`;
//! - a flood of handshakes never gets more sessions than the peer cap,
//!   and the slots come back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zennet_fs::api::{GetRequest, SeederView, TransferState};
use zennet_fs::bittorrent::wire::{self, BLOCK, Block, HANDSHAKE_LEN, Handshake, Msg};
use zennet_fs::{FileId, Fs, Metainfo, PIECE_LEN};

mod common;

use common::{add, await_providers, fs_on, fs_with, node, random_bytes, serve, wait};

/// How a fake BitTorrent seeder answers requests.
#[derive(Clone, Copy)]
enum Fake {
    /// Blocks of the right length, wrong bytes.
    Corrupt,
    /// A length prefix of 2 GiB, then nothing.
    Oversize,
}

/// A stock-looking BitTorrent seeder that cheats: it announces itself to
/// `tracker` as a seeder of `meta` and serves every connection `how`.
async fn fake_seeder(meta: Arc<Metainfo>, tracker: SocketAddr, how: Fake) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = meta.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(fake_session(s, served.clone(), how));
        }
    });
    let enc = |b: &[u8]| {
        percent_encoding::percent_encode(b, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let url = format!(
        "http://{tracker}/announce?info_hash={}&peer_id={}&port={}&left=0&uploaded=0&downloaded=0&compact=1&event=started",
        enc(&meta.id.0),
        enc(b"-XX0001-cheatcheatch"),
        addr.port()
    );
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert!(body.starts_with(b"d8:complete"), "announced: {body:?}");
    addr
}

async fn fake_session(mut s: TcpStream, meta: Arc<Metainfo>, how: Fake) {
    let mut hs = [0u8; HANDSHAKE_LEN];
    if s.read_exact(&mut hs).await.is_err() {
        return;
    }
    let mut out = Handshake::new(meta.id.0, *b"-XX0001-cheatcheatch")
        .encode()
        .to_vec();
    let all = vec![0xffu8; (meta.piece_count() as usize).div_ceil(8)];
    let mut bits = all.clone();
    let spare = bits.len() * 8 - meta.piece_count() as usize;
    *bits.last_mut().unwrap() &= 0xffu8 << spare;
    wire::encode(&Msg::Bitfield(&bits), &mut out);
    wire::encode(&Msg::Unchoke, &mut out);
    if s.write_all(&out).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut replies = Vec::new();
        while let Ok(Some((m, used))) = wire::decode(&buf, wire::max_len(meta.piece_count())) {
            if let Msg::Request(b) = m {
                match how {
                    Fake::Corrupt => {
                        let junk = vec![0x5a; b.length as usize];
                        wire::encode(
                            &Msg::Piece {
                                index: b.index,
                                begin: b.begin,
                                data: &junk,
                            },
                            &mut replies,
                        );
                    }
                    Fake::Oversize => replies.extend_from_slice(&0x8000_0000u32.to_be_bytes()),
                }
            }
            buf.drain(..used);
        }
        if s.write_all(&replies).await.is_err() {
            return;
        }
        if matches!(how, Fake::Oversize) && !replies.is_empty() {
            // Hold the connection open: only the cap may end it.
            tokio::time::sleep(Duration::from_secs(120)).await;
            return;
        }
    }
}

/// A Zennet seeder of a 24-part file (slowed to 1 MiB/s, so BitTorrent
/// peers are asked too), a downloader with a BitTorrent listener, and a
/// fake BitTorrent seeder found through the seeder's tracker. Returns
/// the download's view of the fake seeder and how long it took.
async fn download_beside(how: Fake) -> (SeederView, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(PIECE_LEN as usize * 24);
    std::fs::write(dir.path().join("f.bin"), &data).unwrap();
    let boot = node(&[]).await;
    let s = node(std::slice::from_ref(&boot.addr)).await;
    let seeder = fs_with(&s, &dir.path().join("s"), |c| c.upload_limit = 1 << 20);
    let tracker = serve(&seeder).await;
    let id = add(&seeder, &dir.path().join("f.bin")).await;
    let meta = seeder.store().file(&id).unwrap().meta;
    let fake = fake_seeder(meta, tracker, how).await;

    let d = node(std::slice::from_ref(&boot.addr)).await;
    let fs = fs_on(&d, &dir.path().join("d"));
    serve(&fs).await;
    await_providers(&d.net, id, 1).await;
    let mut req = GetRequest::new(id, dir.path().join("out"));
    req.protocols = vec!["zennet".into(), "bittorrent".into()];
    let start = Instant::now();
    fs.get(req).unwrap();
    let v = wait(&fs, id).await;
    let took = start.elapsed();
    assert_eq!(v.state, TransferState::Done, "{:?}", v.error);
    assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), data);
    let zennet: u32 = v
        .seeders
        .iter()
        .filter(|s| s.protocol == "zennet")
        .map(|s| s.parts)
        .sum();
    assert_eq!(
        zennet, 24,
        "every part from the Zennet seeder: {:?}",
        v.seeders
    );
    let view = v
        .seeders
        .iter()
        .find(|s| s.peer == fake.to_string())
        .unwrap_or_else(|| panic!("the fake seeder was found: {:?}", v.seeders))
        .clone();
    (view, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bittorrent_seeder_sending_corrupt_pieces_is_dropped_and_the_download_completes() {
    let (fake, _) = download_beside(Fake::Corrupt).await;
    assert_eq!(fake.protocol, "bittorrent");
    assert!(fake.state.contains("corrupt"), "{fake:?}");
    assert_eq!((fake.parts, fake.paid), (0, 0), "nothing counted or paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bittorrent_seeder_announcing_a_message_over_the_cap_is_cut_off() {
    let (fake, took) = download_beside(Fake::Oversize).await;
    assert!(fake.state.contains("over the"), "{fake:?}");
    // Cut off on the prefix, not by the 30 s silence timer.
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

/// A peer of `addr` for `file`, handshake done, our bitfield and unchoke read.
async fn peer(addr: SocketAddr, meta: &Metainfo) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&Handshake::new(meta.id.0, *b"-XX0001-probeprobepr").encode())
        .await
        .unwrap();
    let mut hs = [0u8; HANDSHAKE_LEN];
    s.read_exact(&mut hs).await.unwrap();
    assert_eq!(Handshake::decode(&hs).unwrap().info_hash, meta.id.0);
    let mut head = vec![0u8; 4 + 1 + (meta.piece_count() as usize).div_ceil(8) + 5];
    s.read_exact(&mut head).await.unwrap();
    s
}

/// Sends `bytes` and expects the seeder to close the connection soon.
async fn cut_off(fs: &Fs, mut s: TcpStream, bytes: &[u8], reason: &str) {
    s.write_all(bytes).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was closed");
    // The reason is recorded as the session unwinds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = fs.status().unwrap().bittorrent.unwrap();
        let last = view.last_drop.unwrap_or_default();
        if last.contains(reason) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dropped for {last:?}, not {reason:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(index: u32, begin: u32, length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(
        &Msg::Request(Block {
            index,
            begin,
            length,
        }),
        &mut out,
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeder_drops_peers_that_break_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), random_bytes(PIECE_LEN as usize * 3)).unwrap();
    let n = node(&[]).await;
    let fs = fs_on(&n, &dir.path().join("s"));
    let http = serve(&fs).await;
    let id = add(&fs, &dir.path().join("f")).await;
    let meta = fs.store().file(&id).unwrap().meta;
    let bt = fs.bittorrent().listen_addr().unwrap();

    // A well-behaved request is served.
    let mut s = peer(bt, &meta).await;
    s.write_all(&request(1, BLOCK, BLOCK)).await.unwrap();
    let mut piece = vec![0u8; 13 + BLOCK as usize];
    s.read_exact(&mut piece).await.unwrap();
    let part = std::fs::read(dir.path().join("f")).unwrap();
    let at = PIECE_LEN as usize + BLOCK as usize;
    assert_eq!(&piece[13..], &part[at..at + BLOCK as usize]);
    drop(s);

    // A pipeline deeper than the queue (transmission's): the requests over
    // the cap are ignored, the peer is kept and served up to the cap.
    let mut s = peer(bt, &meta).await;
    let mut flood = Vec::new();
    for _ in 0..3000 {
        flood.extend_from_slice(&request(0, 0, BLOCK));
    }
    s.write_all(&flood).await.unwrap();
    let mut served = 0;
    while let Ok(got) = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut piece)).await
    {
        got.unwrap();
        assert_eq!(&piece[13..], &part[..BLOCK as usize]);
        served += 1;
    }
    assert!((2048..=3000).contains(&served), "served {served}");
    s.write_all(&request(1, BLOCK, BLOCK)).await.unwrap();
    s.read_exact(&mut piece).await.unwrap();
    assert_eq!(&piece[13..], &part[at..at + BLOCK as usize]);
    drop(s);

    // A length prefix over the cap: cut off without the body.
    let s = peer(bt, &meta).await;
    cut_off(&fs, s, &(1u32 << 30).to_be_bytes(), "over the").await;
    // Past the end, a block too large, one across the part's end.
    let s = peer(bt, &meta).await;
    cut_off(&fs, s, &request(999, 0, BLOCK), "asked for part 999").await;
    let s = peer(bt, &meta).await;
    cut_off(&fs, s, &request(0, 0, 2 * BLOCK), "blocks of at most").await;
    let s = peer(bt, &meta).await;
    cut_off(
        &fs,
        s,
        &request(0, PIECE_LEN as u32 - 8, BLOCK),
        "asked for",
    )
    .await;
    // An extension message this node never negotiated.
    let s = peer(bt, &meta).await;
    cut_off(&fs, s, &[0, 0, 0, 2, 20, 0], "not negotiated").await;

    // A part this node does not hold: a second seeder has parts 0 and 2 only.
    let partial = fs_on(&node(&[]).await, &dir.path().join("p"));
    partial.store().insert_metainfo(&meta).unwrap();
    for i in [0u32, 2] {
        let bytes = fs.store().read_part(&id, i).unwrap();
        partial.store().put_part(&id, i, &bytes).unwrap();
    }
    partial.seed(&id, true, Some(0)).unwrap();
    serve(&partial).await;
    let pbt = partial.bittorrent().listen_addr().unwrap();
    let s = peer(pbt, &meta).await;
    cut_off(&partial, s, &request(1, 0, BLOCK), "not held here").await;

    // A file not served here: no handshake back.
    let mut s = TcpStream::connect(bt).await.unwrap();
    s.write_all(&Handshake::new([7; 20], [8; 20]).encode())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed without a handshake");
    let _ = http;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_announces_get_a_failure_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), random_bytes(1000)).unwrap();
    let n = node(&[]).await;
    let fs = fs_on(&n, &dir.path().join("s"));
    let http = serve(&fs).await;
    let id = add(&fs, &dir.path().join("f")).await;
    let enc = |b: &[u8]| {
        percent_encoding::percent_encode(b, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let ask = |query: String| async move {
        let url = format!("http://{http}/announce?{query}");
        let resp = reqwest::get(&url).await.unwrap();
        assert!(resp.status().is_success(), "failures are 200 with a reason");
        String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned()
    };
    let peer = enc(b"-XX0001-abcdefghijkl");
    for (query, reason) in [
        (
            format!("info_hash={}&peer_id={peer}&port=6881", enc(&id.0[..19])),
            "info_hash is 19 bytes",
        ),
        (
            format!("info_hash={}&peer_id={peer}&port=0", enc(&id.0)),
            "port \"0\" is not a port number",
        ),
        (
            format!("info_hash={}&peer_id={peer}&port=99999", enc(&id.0)),
            "port \"99999\"",
        ),
        (
            format!("info_hash={}&peer_id={peer}", enc(&id.0)),
            "port is missing",
        ),
        (
            format!("info_hash={}&peer_id={peer}&port=6881", enc(&[3; 20])),
            "is not seeded here",
        ),
    ] {
        let body = ask(query.clone()).await;
        assert!(
            body.starts_with("d14:failure reason") && body.contains(reason),
            "{query} -> {body}"
        );
    }
    let ok = ask(format!(
        "info_hash={}&peer_id={peer}&port=6881&left=0",
        enc(&id.0)
    ))
    .await;
    assert!(ok.contains("8:intervali"), "{ok}");
    let _ = FileId(id.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_stays_within_the_peer_cap() {
    const CAP: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), random_bytes(1000)).unwrap();
    let n = node(&[]).await;
    let fs = fs_with(&n, &dir.path().join("s"), |c| c.bt_max_peers = CAP);
    serve(&fs).await;
    let id = add(&fs, &dir.path().join("f")).await;
    let bt = fs.bittorrent().listen_addr().unwrap();
    let hs = Handshake::new(id.0, *b"-XX0001-floodfloodfl").encode();
    let tries = (0..40).map(|_| async move {
        let mut s = TcpStream::connect(bt).await.ok()?;
        s.write_all(&hs).await.ok()?;
        let mut back = [0u8; HANDSHAKE_LEN];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
            .await
            .ok()?
            .ok()?;
        Some(s)
    });
    let held: Vec<TcpStream> = futures::future::join_all(tries)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        !held.is_empty() && held.len() <= CAP,
        "{} sessions",
        held.len()
    );
    let view = fs.status().unwrap().bittorrent.unwrap();
    assert!(view.peers <= CAP, "{view:?}");
    assert!(view.refused_over_cap >= (40 - CAP) as u64, "{view:?}");
    // The slots come back when the peers leave.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs.status().unwrap().bittorrent.unwrap().peers > 0 {
        assert!(Instant::now() < deadline, "slots were not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = TcpStream::connect(bt).await.unwrap();
    s.write_all(&hs).await.unwrap();
    let mut back = [0u8; HANDSHAKE_LEN];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(Handshake::decode(&back).unwrap().info_hash, id.0);
}
