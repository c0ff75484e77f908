//! The part protocol over real libp2p swarms on loopback, in one process:
//! several seeders and a downloader, and the cheating sides — a seeder
//! whose stored parts are corrupt, one that lies about the metainfo, one
//! that offers a bitfield of the wrong length, and a peer that sends a
//! frame over the cap.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use zennet_fs::api::{AddRequest, GetRequest, TransferState};
use zennet_fs::wire::{self, Frame, Offer};
use zennet_fs::{FileId, Fs, PIECE_LEN};
use zennet_net::content::stream_protocol;

mod common;

use common::{CHAIN_ID, Node, add, await_providers, fs_on, node, random_bytes, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_seeders_one_corrupt_and_the_download_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(PIECE_LEN as usize * 24 + 12345);
    let src = dir.path().join("data.bin");
    std::fs::write(&src, &data).unwrap();

    let boot = node(&[]).await;
    let mut seeders = Vec::new();
    let mut id = None;
    for i in 0..3 {
        let n = node(std::slice::from_ref(&boot.addr)).await;
        let fs = fs_on(&n, &dir.path().join(format!("seed{i}")));
        let added = fs
            .add(AddRequest {
                path: src.clone(),
                encrypt: false,
                key: None,
                price_per_mib: None,
            })
            .await
            .unwrap();
        id = Some(added.id);
        seeders.push((n, fs));
    }
    let id = id.unwrap();
    // Seeder 0 serves corrupt bytes: its stored parts are flipped on disk.
    let parts = seeders[0].1.store().dir().join("parts");
    for sub in std::fs::read_dir(&parts).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            b[100] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        }
    }
    let d = node(std::slice::from_ref(&boot.addr)).await;
    let fs = fs_on(&d, &dir.path().join("down"));
    await_providers(&d.net, id, 3).await;
    fs.get(GetRequest::new(id, dir.path().join("out.bin")))
        .unwrap();
    let v = wait(&fs, id).await;
    assert_eq!(v.state, TransferState::Done, "{:?}", v.error);
    assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), data);
    let bad = seeders[0].0.net.local_peer_id.to_string();
    let bad_view = v.seeders.iter().find(|s| s.peer == bad).unwrap();
    assert!(
        bad_view.state.contains("corrupt") && bad_view.parts == 0,
        "{bad_view:?}"
    );
    for s in v.seeders.iter().filter(|s| s.peer != bad) {
        assert!(s.parts > 0, "every honest seeder served: {s:?}");
    }
    assert_eq!(v.fetched_parts, 25);
    assert_eq!(v.resumed_parts, 0);
}

/// A fake seeder: answers hellos with `offer` (signed by its key) and
/// get-meta with `meta`.
async fn fake_seeder(n: &Node, meta: Vec<u8>, have: Vec<u8>, file: FileId) {
    let mut incoming = n
        .net
        .streams()
        .accept(stream_protocol(wire::PROTOCOL))
        .unwrap();
    let key = n.key.clone();
    n.net.provide(&file.0);
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            let (meta, have, key) = (meta.clone(), have.clone(), key.clone());
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                while let Ok(f) = wire::read(&mut rd).await {
                    let reply = match f {
                        Frame::Hello { file } => Frame::Offer(
                            Offer {
                                file,
                                price_per_mib: 0,
                                credit_parts: 64,
                                protocols: vec!["zennet".into()],
                                have: have.clone(),
                                signature: zennet_chain::Signature([0; 65]),
                            }
                            .sign(
                                &key,
                                CHAIN_ID,
                                &zennet_chain::Hash::ZERO,
                            ),
                        ),
                        Frame::GetMeta => Frame::Meta(meta.clone()),
                        _ => break,
                    };
                    wire::write(&mut wr, &reply).await.unwrap();
                    wire::flush(&mut wr).await.unwrap();
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_metainfo_and_wrong_bitfields_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("real"),
        random_bytes(PIECE_LEN as usize * 3),
    )
    .unwrap();
    std::fs::write(dir.path().join("other"), random_bytes(100)).unwrap();
    let scratch = zennet_fs::Store::open(&dir.path().join("scratch"), 1 << 30).unwrap();
    let real = scratch.add_path(&dir.path().join("real"), None, 0).unwrap();
    let other = scratch
        .add_path(&dir.path().join("other"), None, 0)
        .unwrap();

    let boot = node(&[]).await;
    // One liar sends another file's metainfo for this id.
    let liar = node(std::slice::from_ref(&boot.addr)).await;
    fake_seeder(&liar, other.bytes.clone(), vec![0xe0], real.id).await;
    let d = node(std::slice::from_ref(&boot.addr)).await;
    let fs = fs_on(&d, &dir.path().join("down"));
    await_providers(&d.net, real.id, 1).await;
    let get = |fs: &Arc<Fs>| {
        fs.get(GetRequest::new(real.id, dir.path().join("out")))
            .unwrap()
    };
    get(&fs);
    let v = wait(&fs, real.id).await;
    let err = v.error.unwrap();
    assert!(err.contains("does not match its id"), "{err}");
    assert!(fs.store().file(&real.id).is_none(), "no metainfo stored");
    assert!(!dir.path().join("out").exists());

    // On another network, a seeder sends the right metainfo but a bitfield
    // of the wrong length.
    let boot2 = node(&[]).await;
    let short = node(std::slice::from_ref(&boot2.addr)).await;
    fake_seeder(&short, real.bytes.clone(), vec![0xe0, 0], real.id).await;
    let d2 = node(std::slice::from_ref(&boot2.addr)).await;
    let fs2 = fs_on(&d2, &dir.path().join("down2"));
    await_providers(&d2.net, real.id, 1).await;
    get(&fs2);
    let err = wait(&fs2, real.id).await.error.unwrap();
    assert!(err.contains("2 bytes for 3 parts"), "{err}");
    assert!(fs2.store().file(&real.id).is_none(), "nothing stored");
    assert!(!dir.path().join("out").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_cap_ends_the_session_unread() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), random_bytes(1000)).unwrap();
    let boot = node(&[]).await;
    let s = node(std::slice::from_ref(&boot.addr)).await;
    let fs = fs_on(&s, &dir.path().join("s"));
    let added = fs
        .add(AddRequest {
            path: dir.path().join("f"),
            encrypt: false,
            key: None,
            price_per_mib: None,
        })
        .await
        .unwrap();
    let attacker = node(std::slice::from_ref(&s.addr)).await;
    let stream = attacker
        .net
        .streams()
        .open_stream(s.net.local_peer_id, stream_protocol(wire::PROTOCOL))
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.split();
    wire::write(&mut wr, &Frame::Hello { file: added.id })
        .await
        .unwrap();
    wire::flush(&mut wr).await.unwrap();
    assert!(matches!(
        wire::read(&mut rd).await.unwrap(),
        Frame::Offer(_)
    ));
    // A "get" claiming 1 GiB of body: the seeder reads 5 bytes and hangs up.
    let mut head = (1u32 << 30).to_be_bytes().to_vec();
    head.push(6);
    wr.write_all(&head).await.unwrap();
    wr.flush().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), wire::read(&mut rd))
        .await
        .expect("the seeder answers or closes at once");
    assert!(
        matches!(end, Err(_) | Ok(Frame::Refused { .. })),
        "got {end:?}"
    );
}

/// A download capped by `max_length` (a provider fetching a task's image)
/// refuses a longer file once the metainfo says so: no part is fetched,
/// nothing is written, and the same file uncapped downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_length_cap_is_refused_before_any_part() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(PIECE_LEN as usize * 4 + 1);
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    let boot = node(&[]).await;
    let s = node(std::slice::from_ref(&boot.addr)).await;
    let seeder = fs_on(&s, &dir.path().join("seed"));
    let id = add(&seeder, &src).await;
    let d = node(std::slice::from_ref(&boot.addr)).await;
    let fs = fs_on(&d, &dir.path().join("down"));
    await_providers(&d.net, id, 1).await;

    let out = dir.path().join("out.bin");
    let mut req = GetRequest::new(id, out.clone());
    req.max_length = Some(data.len() as u64 - 1);
    fs.get(req).unwrap();
    let v = wait(&fs, id).await;
    assert_eq!(v.state, TransferState::Failed);
    let why = v.error.unwrap_or_default();
    assert!(
        why.contains("more than the") && why.contains("nothing was fetched"),
        "{why}"
    );
    assert_eq!(v.fetched_parts, 0);
    assert!(!out.exists());
    assert_eq!(fs.store().usage().unwrap().parts, 0, "no part stored");

    let mut req = GetRequest::new(id, out.clone());
    req.max_length = Some(data.len() as u64);
    fs.get(req).unwrap();
    assert_eq!(wait(&fs, id).await.state, TransferState::Done);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}
