//! Property tests: every transaction kind and every block survives
//! encode → decode unchanged, hashes are stable, JSON round-trips at the API
//! edge, and arbitrary bytes never panic the decoders.

use proptest::prelude::*;
use zennet_chain::crypto::{Address, Hash, PublicKey, Signature};
use zennet_chain::identity::{Identity, Role};
use zennet_chain::task::{
    CoreChoice, ImageChoice, Rates, TaskAcceptance, TaskAnnouncement, VmRequirements,
};
use zennet_chain::{
    Block, FileHash, Header, SignedTx, SignedVoucher, StorageAcceptance, StorageAnnouncement,
    Transaction, TxBody, Voucher,
};

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}
fn address() -> impl Strategy<Value = Address> {
    any::<[u8; 20]>().prop_map(Address)
}
fn signature() -> impl Strategy<Value = Signature> {
    proptest::collection::vec(any::<u8>(), 65).prop_map(|v| Signature::from_slice(&v).unwrap())
}
fn voucher() -> impl Strategy<Value = SignedVoucher> {
    (
        any::<u64>(),
        hash(),
        any::<u64>(),
        any::<u128>(),
        signature(),
    )
        .prop_map(|(c, ch, s, cum, sig)| SignedVoucher {
            voucher: Voucher {
                chain_id: c,
                channel: ch,
                seq: s,
                cumulative: cum,
            },
            signature: sig,
        })
}
fn storage_announcement() -> impl Strategy<Value = StorageAnnouncement> {
    (
        (any::<[u8; 20]>(), any::<u64>(), hash(), any::<u16>()),
        (any::<u128>(), any::<u64>(), any::<u32>()),
        proptest::array::uniform4(any::<u64>()),
    )
        .prop_map(
            |((f, size, root, replicas), (price, ends, every), p)| StorageAnnouncement {
                file: FileHash(f),
                size,
                merkle_root: root,
                replicas,
                price_per_gib_hour: price,
                ends_at_ms: ends,
                challenge_secs: every,
                acceptance_window: p[0],
                acceptance_difficulty: p[1],
                prune_height: p[2],
                pow_nonce: p[3],
            },
        )
}
fn short_string() -> impl Strategy<Value = String> {
    "[a-z0-9.:/-]{0,40}"
}
fn announcement() -> impl Strategy<Value = TaskAnnouncement> {
    (
        proptest::collection::vec(
            (
                short_string(),
                hash(),
                proptest::option::of(any::<[u8; 20]>()),
            )
                .prop_map(|(id, hash, file)| ImageChoice {
                    id,
                    hash,
                    file: file.map(FileHash),
                }),
            0..4,
        ),
        proptest::collection::vec(
            (any::<u16>(), any::<u32>()).prop_map(|(cores, m)| CoreChoice {
                cores,
                min_compute_per_core: m,
            }),
            0..4,
        ),
        any::<[u32; 9]>(),
        (
            short_string(),
            hash(),
            any::<i32>(),
            any::<[u64; 4]>(),
            short_string(),
        ),
        any::<[u128; 5]>(),
    )
        .prop_map(
            |(images, cores, n, (endpoint, fp, payout, p, info), r)| TaskAnnouncement {
                vm: VmRequirements {
                    images,
                    min_bandwidth_mbps: n[0],
                    min_disk_gib: n[1],
                    min_disk_mbps: n[2],
                    persistent_storage_gib: n[3],
                    cores,
                    max_compute_per_core: n[8],
                    memory_mib_per_core: n[4],
                    min_memory_mbps: n[5],
                },
                min_instances: n[6],
                max_instances: n[7],
                endpoint,
                host_key_fingerprint: fp,
                lease_min_secs: n[0] / 2,
                lease_max_secs: n[1] / 3,
                payout_interval_secs: payout,
                rates: Rates {
                    per_compute_unit_second: r[0],
                    per_memory_gib_hour: r[1],
                    per_storage_gib_hour: r[2],
                    per_traffic_gb: r[3],
                    base_per_second: r[4],
                },
                acceptance_window: p[0],
                acceptance_difficulty: p[1],
                prune_height: p[2],
                info,
                pow_nonce: p[3],
            },
        )
}

fn body() -> impl Strategy<Value = TxBody> {
    prop_oneof![
        (address(), any::<u128>()).prop_map(|(to, amount)| TxBody::Transfer { to, amount }),
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 33),
            any::<u64>()
        )
            .prop_map(|(p, k, nonce)| {
                TxBody::RegisterIdentity {
                    identity: Identity {
                        role: if p { Role::Publisher } else { Role::Node },
                        public_key: PublicKey::from_slice(&k).unwrap(),
                        nonce,
                    },
                }
            }),
        announcement().prop_map(|announcement| TxBody::AnnounceTask { announcement }),
        (
            hash(),
            hash(),
            any::<u16>(),
            hash(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(t, i, c, f, s, n)| {
                TxBody::AcceptTask {
                    acceptance: TaskAcceptance {
                        task: t,
                        image: i,
                        cores: c,
                        ssh_key_fingerprint: f,
                        compute_score: s,
                        pow_nonce: n,
                    },
                }
            }),
        hash().prop_map(|task| TxBody::CancelTask { task }),
        (address(), any::<u128>(), any::<u64>()).prop_map(|(payee, deposit, expiry_height)| {
            TxBody::ChannelOpen {
                payee,
                deposit,
                expiry_height,
            }
        }),
        (hash(), any::<u128>(), any::<u64>()).prop_map(|(channel, amount, expiry_height)| {
            TxBody::ChannelTopUp {
                channel,
                amount,
                expiry_height,
            }
        }),
        voucher().prop_map(|voucher| TxBody::ChannelClaim { voucher }),
        (hash(), proptest::option::of(voucher()))
            .prop_map(|(channel, voucher)| TxBody::ChannelClose { channel, voucher }),
        hash().prop_map(|channel| TxBody::ChannelSettle { channel }),
        hash().prop_map(|channel| TxBody::ChannelReclaim { channel }),
        storage_announcement().prop_map(|announcement| TxBody::AnnounceStorage { announcement }),
        (hash(), any::<u64>()).prop_map(|(task, pow_nonce)| TxBody::AcceptStorage {
            acceptance: StorageAcceptance { task, pow_nonce }
        }),
        (hash(), address()).prop_map(|(task, node)| TxBody::ReleaseStorage { task, node }),
        hash().prop_map(|task| TxBody::CancelStorage { task }),
    ]
}

fn signed_tx() -> impl Strategy<Value = SignedTx> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        body(),
        signature(),
    )
        .prop_map(|(c, n, f, body, signature)| SignedTx {
            tx: Transaction {
                chain_id: c,
                nonce: n,
                fee_per_byte: f,
                body,
            },
            signature,
        })
}

fn block() -> impl Strategy<Value = Block> {
    (
        (
            hash(),
            any::<u64>(),
            any::<u64>(),
            hash(),
            hash(),
            any::<u64>(),
            address(),
        ),
        proptest::collection::vec(any::<u8>(), 0..32),
        hash(),
        any::<u64>(),
        proptest::collection::vec(signed_tx(), 0..4),
    )
        .prop_map(
            |(
                (parent, height, ts, tx_root, state_root, difficulty, miner),
                extra,
                mix,
                nonce,
                txs,
            )| Block {
                header: Header {
                    parent,
                    height,
                    timestamp_ms: ts,
                    tx_root,
                    state_root,
                    difficulty,
                    miner,
                    extra,
                    mix_digest: mix,
                    nonce,
                },
                txs,
            },
        )
}

proptest! {
    #[test]
    fn transactions_round_trip(tx in signed_tx()) {
        let bytes = tx.encode();
        let back = SignedTx::decode(&bytes, usize::MAX).unwrap();
        prop_assert_eq!(&back, &tx);
        prop_assert_eq!(back.hash(), tx.hash());
        prop_assert_eq!(back.encode(), bytes);
        let json = serde_json::to_string(&tx).unwrap();
        let from_json: SignedTx = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(from_json, tx);
    }

    #[test]
    fn blocks_round_trip(b in block()) {
        let bytes = b.encode();
        let back = Block::decode(&bytes, usize::MAX).unwrap();
        prop_assert_eq!(back.hash(), b.hash());
        prop_assert_eq!(&back, &b);
        let json = serde_json::to_string(&b).unwrap();
        let from_json: Block = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(from_json, b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedTx::decode(&bytes, 4096);
        let _ = Block::decode(&bytes, 1 << 20);
    }

    #[test]
    fn truncated_encodings_are_rejected(tx in signed_tx(), cut in 1usize..64) {
        let bytes = tx.encode();
        let cut = cut.min(bytes.len());
        prop_assert!(SignedTx::decode(&bytes[..bytes.len() - cut], usize::MAX).is_err());
    }
}
