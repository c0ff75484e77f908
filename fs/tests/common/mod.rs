//! What the in-process file-network tests share: libp2p nodes on
//! loopback, a file service on each, waiting for transfers and providers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zennet_chain::testkit::TestChain;
use zennet_chain::{Hash, SecretKey};
use zennet_fs::api::{TransferState, TransferView};
use zennet_fs::payment::NoPayments;
use zennet_fs::{FileId, Fs, FsConfig};
use zennet_net::{Multiaddr, NetConfig, NetHandle, Network};

pub const CHAIN_ID: u64 = 98765;

pub struct Node {
    pub net: NetHandle,
    pub key: SecretKey,
    pub addr: Multiaddr,
}

pub async fn node(bootstrap: &[Multiaddr]) -> Node {
    node_keyed(SecretKey::generate(), bootstrap).await
}

/// A node on loopback with `key`, its network events drained.
pub async fn node_keyed(key: SecretKey, bootstrap: &[Multiaddr]) -> Node {
    let (net, mut events) = Network::start(NetConfig {
        secret: key.clone(),
        genesis: Hash([7; 32]),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: bootstrap.to_vec(),
        max_peers: 50,
    })
    .await
    .unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let addr = net.listen_addrs().await.unwrap().remove(0);
    Node { net, key, addr }
}

pub fn fs_on(n: &Node, dir: &Path) -> Arc<Fs> {
    fs_with(n, dir, |_| {})
}

/// A file service with its config changed by `tune`.
pub fn fs_with(n: &Node, dir: &Path, tune: impl FnOnce(&mut FsConfig)) -> Arc<Fs> {
    let mut config = FsConfig::new(dir.to_path_buf(), CHAIN_ID, zennet_chain::Hash::ZERO);
    config.window = 8;
    tune(&mut config);
    Fs::start(
        config,
        n.net.clone(),
        n.key.clone(),
        Arc::new(NoPayments),
        Arc::new(NoPayments),
    )
    .unwrap()
}

/// Serves `fs` as a node does: files and the tracker on an HTTP listener
/// (with each client's address), stock BitTorrent peers on another, both
/// on loopback. Returns the HTTP address.
pub async fn serve(fs: &Arc<Fs>) -> SocketAddr {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    fs.set_http_addr(Some(addr.to_string()));
    let router = zennet_fs::http::router(fs.clone())
        .merge(zennet_fs::bittorrent::router(fs.clone()))
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(http, router).await.unwrap() });
    let bt = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    zennet_fs::bittorrent::listen(fs, bt).unwrap();
    addr
}

/// Adds `path` to `fs` (free, seeded).
pub async fn add(fs: &Arc<Fs>, path: &Path) -> FileId {
    fs.add(zennet_fs::api::AddRequest {
        path: path.to_path_buf(),
        encrypt: false,
        key: None,
        price_per_mib: None,
    })
    .await
    .unwrap()
    .id
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).unwrap();
    v
}

pub async fn wait(fs: &Fs, id: FileId) -> TransferView {
    for _ in 0..600 {
        let v = fs.transfer(&id).unwrap();
        if !matches!(v.state, TransferState::Finding | TransferState::Downloading) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("transfer did not end");
}

/// Waits until `n` providers of `id` are found (records spread over Kademlia).
pub async fn await_providers(net: &NetHandle, id: FileId, n: usize) {
    for _ in 0..100 {
        if net.providers(&id.0).await.unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("fewer than {n} providers of {id}");
}

/// Mines a block every 100 ms, as a dev chain would, until the test ends.
pub fn miner(chain: &Arc<TestChain>) -> tokio::task::JoinHandle<()> {
    let chain = chain.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            chain.mine();
        }
    })
}
