//! `zennet devnet`: a local network on embedded defaults. For now one mining
//! node on a fresh dev chain (a temporary home unless --home is given) that
//! pays a transfer every few blocks and prints each block with the balances
//! it moved, then checks the totals add up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;
use zennet_chain::{Genesis, SecretKey, Transaction, TxBody};

use crate::commands::Output;
use crate::home::Home;
use crate::node::{NodeHandle, NodeOptions, now_ms};

const TRANSFER: u128 = 1_000;
const BLOCKS_BETWEEN_TRANSFERS: u64 = 3;

pub async fn run(home_dir: Option<PathBuf>, blocks: Option<u64>, out: Output) -> Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("zennet-devnet-")
        .tempdir()?;
    let home = Home::locate(Some(home_dir.unwrap_or_else(|| temp.path().join("home"))))?;
    if !home.is_initialized() {
        home.init(|k| Ok(Genesis::dev(k.address(), now_ms())))?;
    }
    let dir = home.dir().to_path_buf();
    let key = home.key()?;
    let recipient = SecretKey::generate().address();
    let handle = NodeHandle::start(
        home,
        NodeOptions {
            mine: true,
            api: None,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: vec![],
            provide: false,
            report: !out.json,
        },
    )
    .await?;
    if !out.json {
        println!(
            "devnet: home {} api http://{} funded {} recipient {}",
            dir.display(),
            handle.api_addr,
            key.address(),
            recipient
        );
    }
    let node = handle.node.clone();
    let start_height = node.chain().tip().header.height;
    let recipient_start = node.chain().account(&recipient).balance;
    let mut sent = 0u128;
    let mut next_transfer_at = start_height + 1;
    let interrupted = loop {
        tokio::select! {
            _ = crate::commands::wait_for_signal() => break true,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let height = node.chain().tip().header.height;
        if blocks.is_some_and(|n| height >= start_height + n) {
            break false;
        }
        if height >= next_transfer_at {
            let tx = {
                let chain = node.chain();
                Transaction {
                    chain_id: chain.genesis().chain_id,
                    nonce: chain.next_nonce(&key.address()),
                    fee_per_byte: chain.genesis().economics.min_fee_per_byte,
                    body: TxBody::Transfer {
                        to: recipient,
                        amount: TRANSFER,
                    },
                }
                .sign(&key)
            };
            node.submit_tx(tx)?;
            sent += TRANSFER;
            next_transfer_at = height + BLOCKS_BETWEEN_TRANSFERS;
        }
    };
    // Let the last transfer be mined before checking the totals.
    for _ in 0..120 {
        if node.chain().mempool().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The home's key both funds the transfers and mines.
    let (height, received, balance, pending) = {
        let chain = node.chain();
        (
            chain.tip().header.height,
            chain.account(&recipient).balance - recipient_start,
            chain.account(&key.address()).balance,
            chain.mempool().len(),
        )
    };
    handle.stop().await?;
    let summary = json!({
        "height": height,
        "blocks_mined": height - start_height,
        "recipient": recipient,
        "sent": sent.to_string(),
        "received": received.to_string(),
        "miner": key.address(),
        "miner_balance": balance.to_string(),
        "interrupted": interrupted,
    });
    out.print(&summary, || {
        format!(
            "devnet done: height {height}, {} blocks mined, sent {sent} received {received} by {recipient}",
            height - start_height
        )
    });
    if pending == 0 && received != sent {
        bail!("the recipient received {received} but {sent} was sent");
    }
    Ok(())
}
