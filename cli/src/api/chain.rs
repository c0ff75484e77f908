//! Chain and node routes: info, genesis, peers, blocks, transactions,
//! accounts, identities, tasks and channels as the chain holds them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::identity::Role;
use zennet_chain::state::IdentityRecord;
use zennet_chain::{
    Address, Amount, Channel, Hash, Header, SignedTx, StoredBlock, StoredTx, TaskRecord,
    Transaction,
};

use super::{ApiError, ApiResult, bad_request, not_found, parse};
use crate::node::Node;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub chain_id: u64,
    pub genesis_hash: Hash,
    pub height: u64,
    pub tip: Hash,
    pub state_root: Hash,
    pub difficulty: u64,
    pub total_difficulty: String,
    pub timestamp_ms: u64,
    pub mempool: usize,
    pub mining: bool,
    /// Catching up with peers, and when they were last compared with us.
    #[serde(default)]
    pub sync: crate::sync::SyncStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    pub address: Address,
    #[serde(with = "amount_str")]
    pub balance: Amount,
    pub nonce: u64,
    /// Nonce for the next transaction, counting pending ones.
    pub next_nonce: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitTx {
    /// The signed transaction, borsh-encoded, as 0x-hex.
    pub raw: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub hash: Hash,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxView {
    pub hash: Hash,
    /// `pending`, `mined`, or `pruned` (mined, body dropped after its prune height).
    pub status: String,
    pub block: Option<Hash>,
    pub height: Option<u64>,
    pub index: Option<u32>,
    pub sender: Option<Address>,
    pub kind: Option<String>,
    pub tx: Option<Transaction>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockView {
    pub hash: Hash,
    pub header: Header,
    pub txs: Vec<TxView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentitiesView {
    pub address: Address,
    pub publisher: Option<IdentityRecord>,
    pub node: Option<IdentityRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub peer_id: String,
    /// The node's chain address (its p2p key is its chain key).
    pub address: Address,
    /// Multiaddrs ending in /p2p/PEER_ID, ready for `--bootstrap`.
    pub listen: Vec<String>,
    pub peers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub address: Option<Address>,
    pub remote_addr: String,
}

pub(super) fn routes() -> Vec<super::Route> {
    vec![
        ("/v1/info", get(info)),
        ("/v1/genesis", get(genesis)),
        ("/v1/node", get(node_info)),
        ("/v1/peers", get(peers)),
        ("/v1/blocks/{id}", get(block)),
        ("/v1/txs", post(submit)),
        ("/v1/txs/{hash}", get(tx)),
        ("/v1/accounts/{address}", get(account)),
        ("/v1/identities/{address}", get(identities)),
        ("/v1/tasks", get(tasks)),
        ("/v1/tasks/{id}", get(task)),
        ("/v1/channels/{id}", get(channel)),
    ]
}

async fn info(State(node): State<Arc<Node>>) -> ApiResult<Info> {
    let chain = node.chain();
    let tip = chain.tip();
    Ok(Json(Info {
        chain_id: chain.genesis().chain_id,
        genesis_hash: chain.genesis_hash(),
        height: tip.header.height,
        tip: tip.hash,
        state_root: tip.header.state_root,
        difficulty: tip.header.difficulty,
        total_difficulty: tip.total_difficulty.to_string(),
        timestamp_ms: tip.header.timestamp_ms,
        mempool: chain.mempool().len(),
        mining: node.is_mining(),
        sync: node.sync_status(),
    }))
}

fn net(node: &Node) -> Result<&zennet_net::NetHandle, ApiError> {
    node.net()
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "networking is off".into()))
}

fn net_error(e: zennet_net::NetError) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn node_info(State(node): State<Arc<Node>>) -> ApiResult<NodeInfo> {
    let net = net(&node)?;
    let listen = net.listen_addrs().await.map_err(net_error)?;
    let peers = net.peers().await.map_err(net_error)?;
    Ok(Json(NodeInfo {
        peer_id: net.local_peer_id.to_string(),
        address: zennet_net::peer_address(&net.local_peer_id).expect("our own key is secp256k1"),
        listen: listen.iter().map(ToString::to_string).collect(),
        peers: peers.len(),
    }))
}

async fn peers(State(node): State<Arc<Node>>) -> ApiResult<Vec<PeerView>> {
    let peers = net(&node)?.peers().await.map_err(net_error)?;
    Ok(Json(
        peers
            .into_iter()
            .map(|p| PeerView {
                peer_id: p.peer_id,
                address: p.address,
                remote_addr: p.remote_addr,
            })
            .collect(),
    ))
}

async fn genesis(State(node): State<Arc<Node>>) -> String {
    node.chain().genesis().to_toml()
}

async fn block(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult<BlockView> {
    let chain = node.chain();
    let stored = if let Ok(height) = id.parse::<u64>() {
        chain.block_by_height(height)?
    } else {
        chain.block_by_hash(&parse::<Hash>(&id)?)?
    };
    let stored = stored.ok_or_else(|| not_found(format!("no block {id}")))?;
    Ok(Json(block_view(stored, &chain.genesis_hash())))
}

pub fn block_view(stored: StoredBlock, genesis: &Hash) -> BlockView {
    let hash = stored.header.hash();
    let height = stored.header.height;
    let txs = stored
        .txs
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            StoredTx::Full { hash: h, tx } => TxView {
                hash: h,
                status: "mined".into(),
                block: Some(hash),
                height: Some(height),
                index: Some(i as u32),
                sender: sender_of(&tx, genesis),
                kind: Some(tx.tx.body.kind().into()),
                tx: Some(tx.tx.clone()),
            },
            StoredTx::Pruned { hash: h } => TxView {
                hash: h,
                status: "pruned".into(),
                block: Some(hash),
                height: Some(height),
                index: Some(i as u32),
                sender: None,
                kind: None,
                tx: None,
            },
        })
        .collect();
    BlockView {
        hash,
        header: stored.header,
        txs,
    }
}

fn sender_of(tx: &SignedTx, genesis: &zennet_chain::Hash) -> Option<Address> {
    zennet_chain::crypto::recover_address(&tx.tx.signing_hash(genesis), &tx.signature).ok()
}

async fn submit(State(node): State<Arc<Node>>, Json(req): Json<SubmitTx>) -> ApiResult<Submitted> {
    let raw = req.raw.strip_prefix("0x").unwrap_or(&req.raw);
    let bytes = hex::decode(raw).map_err(|_| bad_request("raw transaction is not hex"))?;
    let max = node.chain().genesis().limits.max_tx_bytes as usize;
    let tx = SignedTx::decode(&bytes, max)?;
    let hash = node.submit_tx(tx)?;
    Ok(Json(Submitted { hash }))
}

async fn tx(State(node): State<Arc<Node>>, Path(hash): Path<String>) -> ApiResult<TxView> {
    let hash: Hash = parse(&hash)?;
    let info = node
        .chain()
        .tx_info(&hash)?
        .ok_or_else(|| not_found(format!("no transaction {hash}")))?;
    let status = match (&info.pending, &info.tx) {
        (true, _) => "pending",
        (false, Some(_)) => "mined",
        (false, None) => "pruned",
    };
    Ok(Json(TxView {
        hash,
        status: status.into(),
        block: info.location.map(|l| l.block),
        height: info.location.map(|l| l.height),
        index: info.location.map(|l| l.index),
        sender: info.sender,
        kind: info.tx.as_ref().map(|t| t.tx.body.kind().to_string()),
        tx: info.tx.map(|t| t.tx),
    }))
}

async fn account(
    State(node): State<Arc<Node>>,
    Path(address): Path<String>,
) -> ApiResult<AccountView> {
    let address: Address = parse(&address)?;
    let chain = node.chain();
    let a = chain.account(&address);
    Ok(Json(AccountView {
        address,
        balance: a.balance,
        nonce: a.nonce,
        next_nonce: chain.next_nonce(&address),
    }))
}

async fn identities(
    State(node): State<Arc<Node>>,
    Path(address): Path<String>,
) -> ApiResult<IdentitiesView> {
    let address: Address = parse(&address)?;
    let chain = node.chain();
    Ok(Json(IdentitiesView {
        address,
        publisher: chain.identity(&address, Role::Publisher),
        node: chain.identity(&address, Role::Node),
    }))
}

async fn tasks(State(node): State<Arc<Node>>) -> ApiResult<Vec<TaskRecord>> {
    Ok(Json(node.chain().state().tasks().cloned().collect()))
}

async fn task(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult<TaskRecord> {
    let id: Hash = parse(&id)?;
    node.chain()
        .task(&id)
        .map(Json)
        .ok_or_else(|| not_found(format!("no open task {id}")))
}

async fn channel(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult<Channel> {
    let id: Hash = parse(&id)?;
    node.chain()
        .channel(&id)
        .map(Json)
        .ok_or_else(|| not_found(format!("no open channel {id}")))
}
