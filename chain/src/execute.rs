//! The ledger rules: how each transaction changes the state.
//!
//! Every handler checks all its rules before it writes anything, so a
//! rejected transaction leaves the overlay exactly as it found it.

use crate::channel::Channel;
use crate::crypto::{Address, Hash};
use crate::error::TxError;
use crate::genesis::Genesis;
use crate::identity::Role;
use crate::pow;
use crate::state::{Account, IdentityRecord, Overlay, StateKey, StateValue};
use crate::storage::{
    MAX_REPLACEMENTS, StorageAcceptance, StorageAnnouncement, StorageRecord, StorageReplica,
};
use crate::task::{Acceptance, TaskAcceptance, TaskAnnouncement, TaskRecord};
use crate::tx::{Amount, TxBody, VerifiedTx};

/// Where in the chain a transaction executes.
#[derive(Debug, Clone, Copy)]
pub struct BlockContext {
    pub height: u64,
    pub miner: Address,
    /// The chain's genesis hash, which every signature (vouchers too) is bound to.
    pub genesis_hash: Hash,
}

/// Applies one verified transaction. Returns the fee it pays the miner.
pub fn apply_tx(
    state: &mut Overlay<'_>,
    genesis: &Genesis,
    ctx: &BlockContext,
    vtx: &VerifiedTx,
) -> Result<Amount, TxError> {
    let tx = vtx.tx();
    let sender = vtx.sender;
    if tx.chain_id != genesis.chain_id {
        return Err(TxError::WrongChain {
            expected: genesis.chain_id,
            got: tx.chain_id,
        });
    }
    if vtx.size > genesis.limits.max_tx_bytes as usize {
        return Err(TxError::TooLarge {
            size: vtx.size,
            max: genesis.limits.max_tx_bytes as usize,
        });
    }
    if tx.fee_per_byte < genesis.economics.min_fee_per_byte {
        return Err(TxError::FeeTooLow {
            min: genesis.economics.min_fee_per_byte,
            got: tx.fee_per_byte,
        });
    }
    let account = state.account(&sender);
    if tx.nonce != account.nonce {
        return Err(TxError::BadNonce {
            sender,
            expected: account.nonce,
            got: tx.nonce,
        });
    }
    let fee = (tx.fee_per_byte as Amount)
        .checked_mul(vtx.size as Amount)
        .ok_or(TxError::Overflow)?;
    let needed = fee.checked_add(tx.body.value()).ok_or(TxError::Overflow)?;
    if account.balance < needed {
        return Err(TxError::InsufficientBalance {
            account: sender,
            balance: account.balance,
            needed,
        });
    }

    check_body(state, genesis, ctx, vtx)?;

    // All rules passed: charge the sender, then apply the body.
    state.set_account(
        sender,
        Account {
            balance: account.balance - needed,
            nonce: account.nonce + 1,
        },
    );
    apply_body(state, genesis, ctx, vtx);
    Ok(fee)
}

/// Credits the miner with the block reward and fees, and drops tasks and
/// storage tasks whose prune height has come.
pub fn end_block(state: &mut Overlay<'_>, genesis: &Genesis, ctx: &BlockContext, fees: Amount) {
    credit(state, ctx.miner, genesis.economics.block_reward + fees);
    for id in state.tasks_due(ctx.height) {
        let key = match state.get(&StateKey::Task(id)) {
            Some(_) => StateKey::Task(id),
            None => StateKey::Storage(id),
        };
        state.set(key, None);
    }
}

fn credit(state: &mut Overlay<'_>, to: Address, amount: Amount) {
    let mut a = state.account(&to);
    a.balance = a.balance.saturating_add(amount);
    state.set_account(to, a);
}

fn check_body(
    state: &Overlay<'_>,
    genesis: &Genesis,
    ctx: &BlockContext,
    vtx: &VerifiedTx,
) -> Result<(), TxError> {
    let sender = vtx.sender;
    match &vtx.tx().body {
        TxBody::Transfer { amount, .. } => {
            if *amount == 0 {
                return Err(TxError::ZeroAmount);
            }
        }
        TxBody::RegisterIdentity { identity } => {
            let role = identity.role;
            if identity.public_key.address().ok() != Some(sender) {
                return Err(TxError::IdentityKeyMismatch(sender));
            }
            if state.identity(&sender, role).is_some() {
                return Err(TxError::IdentityExists(sender, role.name()));
            }
            if !identity.meets(&genesis.pow) {
                return Err(TxError::IdentityPow {
                    role: role.name(),
                    difficulty: role.difficulty(&genesis.pow),
                });
            }
        }
        TxBody::AnnounceTask { announcement } => {
            check_announcement(state, genesis, ctx, sender, announcement)?;
        }
        TxBody::AcceptTask { acceptance } => {
            check_acceptance(state, ctx, sender, acceptance)?;
        }
        TxBody::CancelTask { task } => {
            let t = state.task(task).ok_or(TxError::UnknownTask(*task))?;
            if t.publisher != sender {
                return Err(TxError::NotAllowed {
                    expected: t.publisher,
                    got: sender,
                });
            }
            if t.cancelled_at.is_some() {
                return Err(TxError::TaskCancelled(*task));
            }
        }
        TxBody::ChannelOpen {
            payee,
            deposit,
            expiry_height,
        } => {
            if *payee == sender {
                return Err(TxError::BadChannel(
                    "payer and payee are the same account".into(),
                ));
            }
            if *deposit == 0 {
                return Err(TxError::ZeroAmount);
            }
            if *expiry_height <= ctx.height {
                return Err(TxError::BadChannel(format!(
                    "expiry height {expiry_height} is not after the current height {}",
                    ctx.height
                )));
            }
        }
        TxBody::ChannelTopUp {
            channel,
            amount,
            expiry_height,
        } => {
            let c = payer_channel(state, channel, sender)?;
            if c.settle_at.is_some() {
                return Err(TxError::AlreadySettling(*channel));
            }
            if ctx.height >= c.expiry_height {
                return Err(TxError::ChannelExpired {
                    channel: *channel,
                    what: "expiry",
                    height: c.expiry_height,
                });
            }
            if *expiry_height < c.expiry_height {
                return Err(TxError::BadChannel(format!(
                    "expiry may only move later (now {}, asked {expiry_height})",
                    c.expiry_height
                )));
            }
            if *amount == 0 && *expiry_height == c.expiry_height {
                return Err(TxError::BadChannel("top-up changes nothing".into()));
            }
            c.deposit.checked_add(*amount).ok_or(TxError::Overflow)?;
        }
        TxBody::ChannelClaim { voucher } => {
            let c = payee_channel(state, &voucher.voucher.channel, sender)?;
            c.check_voucher(voucher, genesis.chain_id, &ctx.genesis_hash, ctx.height)?;
        }
        TxBody::ChannelClose { channel, voucher } => {
            let c = payee_channel(state, channel, sender)?;
            if let Some(v) = voucher {
                c.check_voucher(v, genesis.chain_id, &ctx.genesis_hash, ctx.height)?;
            }
        }
        TxBody::ChannelSettle { channel } => {
            let c = payer_channel(state, channel, sender)?;
            if c.settle_at.is_some() {
                return Err(TxError::AlreadySettling(*channel));
            }
        }
        TxBody::ChannelReclaim { channel } => {
            let c = payer_channel(state, channel, sender)?;
            let from = reclaimable_from(&c);
            if ctx.height < from {
                return Err(TxError::ReclaimTooEarly {
                    channel: *channel,
                    height: from,
                });
            }
        }
        TxBody::AnnounceStorage { announcement } => {
            check_storage_announcement(state, genesis, ctx, sender, announcement)?;
        }
        TxBody::AcceptStorage { acceptance } => {
            check_storage_acceptance(state, ctx, sender, acceptance)?;
        }
        TxBody::ReleaseStorage { task, node } => {
            let s = owned_storage(state, task, sender)?;
            if !s.holds(node) {
                return Err(TxError::NotAReplica {
                    task: *task,
                    node: *node,
                });
            }
        }
        TxBody::CancelStorage { task } => {
            let s = owned_storage(state, task, sender)?;
            if s.cancelled_at.is_some() {
                return Err(TxError::StorageCancelled(*task));
            }
        }
    }
    Ok(())
}

fn apply_body(state: &mut Overlay<'_>, genesis: &Genesis, ctx: &BlockContext, vtx: &VerifiedTx) {
    let sender = vtx.sender;
    match &vtx.tx().body {
        TxBody::Transfer { to, amount } => credit(state, *to, *amount),
        TxBody::RegisterIdentity { identity } => state.set(
            StateKey::Identity(sender, identity.role),
            Some(StateValue::Identity(IdentityRecord {
                identity: identity.clone(),
                registered_at: ctx.height,
            })),
        ),
        TxBody::AnnounceTask { announcement } => state.set_task(TaskRecord {
            id: vtx.hash,
            publisher: sender,
            announcement: announcement.clone(),
            announced_at: ctx.height,
            cancelled_at: None,
            acceptances: vec![],
        }),
        TxBody::AcceptTask { acceptance } => {
            let mut t = state.task(&acceptance.task).expect("checked");
            t.acceptances.push(Acceptance {
                node: sender,
                tx: vtx.hash,
                height: ctx.height,
                image: acceptance.image,
                cores: acceptance.cores,
                ssh_key_fingerprint: acceptance.ssh_key_fingerprint,
                compute_score: acceptance.compute_score,
            });
            state.set_task(t);
        }
        TxBody::CancelTask { task } => {
            let mut t = state.task(task).expect("checked");
            t.cancelled_at = Some(ctx.height);
            state.set_task(t);
        }
        TxBody::ChannelOpen {
            payee,
            deposit,
            expiry_height,
        } => state.set_channel(Channel {
            id: vtx.hash,
            payer: sender,
            payee: *payee,
            deposit: *deposit,
            claimed: 0,
            last_seq: 0,
            expiry_height: *expiry_height,
            settle_at: None,
        }),
        TxBody::ChannelTopUp {
            channel,
            amount,
            expiry_height,
        } => {
            let mut c = state.channel(channel).expect("checked");
            c.deposit += amount;
            c.expiry_height = *expiry_height;
            state.set_channel(c);
        }
        TxBody::ChannelClaim { voucher } => {
            let mut c = state.channel(&voucher.voucher.channel).expect("checked");
            pay_voucher(
                state,
                &mut c,
                voucher.voucher.seq,
                voucher.voucher.cumulative,
            );
            state.set_channel(c);
        }
        TxBody::ChannelClose { channel, voucher } => {
            let mut c = state.channel(channel).expect("checked");
            if let Some(v) = voucher {
                pay_voucher(state, &mut c, v.voucher.seq, v.voucher.cumulative);
            }
            close(state, &c);
        }
        TxBody::ChannelSettle { channel } => {
            let mut c = state.channel(channel).expect("checked");
            c.settle_at = Some(ctx.height + genesis.economics.channel_challenge_period);
            state.set_channel(c);
        }
        TxBody::ChannelReclaim { channel } => {
            let c = state.channel(channel).expect("checked");
            close(state, &c);
        }
        TxBody::AnnounceStorage { announcement } => state.set_storage(StorageRecord {
            id: vtx.hash,
            owner: sender,
            announcement: announcement.clone(),
            announced_at: ctx.height,
            cancelled_at: None,
            replicas: vec![],
        }),
        TxBody::AcceptStorage { acceptance } => {
            let mut s = state.storage(&acceptance.task).expect("checked");
            let identity = state.identity(&sender, Role::Node).expect("checked");
            s.replicas.push(StorageReplica {
                node: sender,
                public_key: identity.identity.public_key,
                tx: vtx.hash,
                accepted_at: ctx.height,
                released_at: None,
            });
            state.set_storage(s);
        }
        TxBody::ReleaseStorage { task, node } => {
            let mut s = state.storage(task).expect("checked");
            for r in s.replicas.iter_mut().filter(|r| r.node == *node) {
                r.released_at = Some(ctx.height);
            }
            state.set_storage(s);
        }
        TxBody::CancelStorage { task } => {
            let mut s = state.storage(task).expect("checked");
            s.cancelled_at = Some(ctx.height);
            state.set_storage(s);
        }
    }
}

fn check_storage_announcement(
    state: &Overlay<'_>,
    genesis: &Genesis,
    ctx: &BlockContext,
    sender: Address,
    a: &StorageAnnouncement,
) -> Result<(), TxError> {
    a.check_fields()?;
    check_window(genesis, ctx, a.acceptance_window, a.prune_height).map_err(TxError::BadStorage)?;
    check_publisher(
        state,
        genesis,
        sender,
        &a.pow_hash(&sender),
        TxError::StoragePow,
    )
}

/// An announcement's acceptance window and prune height against the
/// network's limits (the reason, for the caller's error variant).
fn check_window(
    genesis: &Genesis,
    ctx: &BlockContext,
    acceptance_window: u64,
    prune_height: u64,
) -> Result<(), String> {
    if acceptance_window > genesis.limits.max_acceptance_window {
        return Err(format!(
            "acceptance_window {acceptance_window} exceeds the network limit {}",
            genesis.limits.max_acceptance_window
        ));
    }
    let earliest = ctx.height + acceptance_window;
    let latest = ctx.height + genesis.limits.max_prune_horizon;
    if prune_height < earliest || prune_height > latest {
        return Err(format!(
            "prune_height {prune_height} must lie between {earliest} (end of the acceptance window) and {latest}"
        ));
    }
    Ok(())
}

/// The announcer holds a publisher identity and its announcement carries
/// the network's least proof of work (`too_little_pow` names the kind).
fn check_publisher(
    state: &Overlay<'_>,
    genesis: &Genesis,
    sender: Address,
    pow_hash: &Hash,
    too_little_pow: fn(u64) -> TxError,
) -> Result<(), TxError> {
    if state.identity(&sender, Role::Publisher).is_none() {
        return Err(TxError::NoIdentity(sender, Role::Publisher.name()));
    }
    let difficulty = genesis.pow.min_announcement_difficulty;
    if !pow::meets(pow_hash, difficulty) {
        return Err(too_little_pow(difficulty));
    }
    Ok(())
}

fn check_storage_acceptance(
    state: &Overlay<'_>,
    ctx: &BlockContext,
    sender: Address,
    a: &StorageAcceptance,
) -> Result<(), TxError> {
    let s = state
        .storage(&a.task)
        .ok_or(TxError::UnknownStorage(a.task))?;
    if s.cancelled_at.is_some() {
        return Err(TxError::StorageCancelled(a.task));
    }
    if ctx.height > s.accept_until() {
        return Err(TxError::StorageClosed {
            task: a.task,
            closed_at: s.accept_until(),
        });
    }
    if s.owner == sender {
        return Err(TxError::OwnStorage(a.task));
    }
    if s.replica(&sender).is_some() {
        return Err(TxError::AlreadyReplica {
            task: a.task,
            node: sender,
        });
    }
    if s.active().count() >= s.announcement.replicas as usize {
        return Err(TxError::StorageFull(a.task));
    }
    let max = s.announcement.replicas as usize + MAX_REPLACEMENTS;
    if s.replicas.len() >= max {
        return Err(TxError::StorageExhausted { task: a.task, max });
    }
    if state.identity(&sender, Role::Node).is_none() {
        return Err(TxError::NoIdentity(sender, Role::Node.name()));
    }
    let difficulty = s.announcement.acceptance_difficulty;
    if !pow::meets(&a.pow_hash(&sender), difficulty) {
        return Err(TxError::StorageAcceptancePow(difficulty));
    }
    Ok(())
}

/// The storage task `id`, which only its owner may change.
fn owned_storage(
    state: &Overlay<'_>,
    id: &Hash,
    sender: Address,
) -> Result<StorageRecord, TxError> {
    let s = state.storage(id).ok_or(TxError::UnknownStorage(*id))?;
    if s.owner != sender {
        return Err(TxError::NotAllowed {
            expected: s.owner,
            got: sender,
        });
    }
    Ok(s)
}

fn check_announcement(
    state: &Overlay<'_>,
    genesis: &Genesis,
    ctx: &BlockContext,
    sender: Address,
    a: &TaskAnnouncement,
) -> Result<(), TxError> {
    let max = genesis.limits.max_announcement_bytes as usize;
    let size = a.encoded_len();
    if size > max {
        return Err(TxError::AnnouncementTooLarge { size, max });
    }
    a.check_fields()?;
    check_window(genesis, ctx, a.acceptance_window, a.prune_height)
        .map_err(TxError::BadAnnouncement)?;
    check_publisher(
        state,
        genesis,
        sender,
        &a.pow_hash(&sender),
        TxError::TaskPow,
    )
}

fn check_acceptance(
    state: &Overlay<'_>,
    ctx: &BlockContext,
    sender: Address,
    a: &TaskAcceptance,
) -> Result<(), TxError> {
    let task = state.task(&a.task).ok_or(TxError::UnknownTask(a.task))?;
    if task.cancelled_at.is_some() {
        return Err(TxError::TaskCancelled(a.task));
    }
    if ctx.height > task.accept_until() {
        return Err(TxError::TaskExpired {
            task: a.task,
            expired_at: task.accept_until(),
        });
    }
    if task.acceptances.len() >= task.announcement.max_instances as usize {
        return Err(TxError::TaskFull(a.task));
    }
    if task.acceptances.iter().any(|x| x.node == sender) {
        return Err(TxError::AlreadyAccepted {
            task: a.task,
            node: sender,
        });
    }
    let vm = &task.announcement.vm;
    if !vm.images.iter().any(|i| i.hash == a.image) {
        return Err(TxError::BadAcceptance(format!(
            "image {} is not one the task offers",
            a.image
        )));
    }
    let Some(choice) = vm.cores.iter().find(|c| c.cores == a.cores) else {
        return Err(TxError::BadAcceptance(format!(
            "{} cores is not one of the task's core choices",
            a.cores
        )));
    };
    if a.compute_score < choice.min_compute_per_core {
        return Err(TxError::BadAcceptance(format!(
            "compute score {} is below the task's minimum {} per core",
            a.compute_score, choice.min_compute_per_core
        )));
    }
    if a.compute_score > vm.max_compute_per_core {
        return Err(TxError::BadAcceptance(format!(
            "compute score {} is above the task's maximum {} per core",
            a.compute_score, vm.max_compute_per_core
        )));
    }
    if state.identity(&sender, Role::Node).is_none() {
        return Err(TxError::NoIdentity(sender, Role::Node.name()));
    }
    let difficulty = task.announcement.acceptance_difficulty;
    if !pow::meets(&a.pow_hash(&sender), difficulty) {
        return Err(TxError::AcceptancePow(difficulty));
    }
    Ok(())
}

/// The first height at which the payer may reclaim: the end of the challenge
/// period if settling, otherwise the expiry.
pub fn reclaimable_from(c: &Channel) -> u64 {
    c.settle_at
        .map_or(c.expiry_height, |s| s.min(c.expiry_height))
}

fn payer_channel(state: &Overlay<'_>, id: &Hash, sender: Address) -> Result<Channel, TxError> {
    let c = state.channel(id).ok_or(TxError::UnknownChannel(*id))?;
    if c.payer != sender {
        return Err(TxError::NotAllowed {
            expected: c.payer,
            got: sender,
        });
    }
    Ok(c)
}

fn payee_channel(state: &Overlay<'_>, id: &Hash, sender: Address) -> Result<Channel, TxError> {
    let c = state.channel(id).ok_or(TxError::UnknownChannel(*id))?;
    if c.payee != sender {
        return Err(TxError::NotAllowed {
            expected: c.payee,
            got: sender,
        });
    }
    Ok(c)
}

fn pay_voucher(state: &mut Overlay<'_>, c: &mut Channel, seq: u64, cumulative: Amount) {
    credit(state, c.payee, cumulative - c.claimed);
    c.claimed = cumulative;
    c.last_seq = seq;
}

fn close(state: &mut Overlay<'_>, c: &Channel) {
    credit(state, c.payer, c.remaining());
    state.set(StateKey::Channel(c.id), None);
}
