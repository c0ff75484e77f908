//! The payee's voucher check: one pure function, one error variant per
//! rule, so callers and tests match on the rule that failed.
//!
//! The chain checks a voucher against what was *claimed* when it is
//! submitted; the payee checks it, when it arrives, against the voucher it
//! already *holds* (which may be far above what was claimed).

use zennet_chain::{Address, Amount, Channel, Hash, SignedVoucher};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoucherRejected {
    #[error("voucher is for chain {got}, this is chain {want}")]
    WrongChain { got: u64, want: u64 },
    #[error("voucher is for channel {got}, not {want}")]
    WrongChannel { got: Hash, want: Hash },
    #[error("voucher seq {seq} is not above the held seq {held}")]
    StaleSeq { seq: u64, held: u64 },
    #[error("voucher cumulative {got} went down from the held {held}")]
    CumulativeDown { got: Amount, held: Amount },
    #[error("voucher cumulative {cumulative} exceeds the deposit {deposit}")]
    OverDeposit { cumulative: Amount, deposit: Amount },
    #[error("voucher is not signed by the payer {payer}")]
    NotPayer { payer: Address },
}

/// Checks `v` against `channel` on chain and the voucher `held`: this chain
/// and channel, seq above and cumulative not below the held one, within the
/// deposit, signed by the payer. `Ok(false)`: the held voucher again
/// (nothing new).
pub fn check_voucher(
    held: Option<&SignedVoucher>,
    v: &SignedVoucher,
    channel: &Channel,
    chain_id: u64,
) -> Result<bool, VoucherRejected> {
    let vv = &v.voucher;
    if vv.chain_id != chain_id {
        return Err(VoucherRejected::WrongChain {
            got: vv.chain_id,
            want: chain_id,
        });
    }
    if vv.channel != channel.id {
        return Err(VoucherRejected::WrongChannel {
            got: vv.channel,
            want: channel.id,
        });
    }
    if let Some(h) = held {
        let (seq, cumulative) = (h.voucher.seq, h.voucher.cumulative);
        if vv.seq <= seq {
            return if vv.seq == seq && vv.cumulative == cumulative && v.signature == h.signature {
                Ok(false)
            } else {
                Err(VoucherRejected::StaleSeq {
                    seq: vv.seq,
                    held: seq,
                })
            };
        }
        if vv.cumulative < cumulative {
            return Err(VoucherRejected::CumulativeDown {
                got: vv.cumulative,
                held: cumulative,
            });
        }
    }
    if vv.cumulative > channel.deposit {
        return Err(VoucherRejected::OverDeposit {
            cumulative: vv.cumulative,
            deposit: channel.deposit,
        });
    }
    match v.signer() {
        Ok(s) if s == channel.payer => Ok(true),
        _ => Err(VoucherRejected::NotPayer {
            payer: channel.payer,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::{SecretKey, Voucher};

    fn voucher(key: &SecretKey, channel: Hash, seq: u64, cumulative: Amount) -> SignedVoucher {
        Voucher {
            chain_id: 7,
            channel,
            seq,
            cumulative,
        }
        .sign(key)
    }

    #[test]
    fn payee_checks_every_voucher_rule() {
        let payer = SecretKey::generate();
        let ch = Channel {
            id: Hash([1; 32]),
            payer: payer.address(),
            payee: SecretKey::generate().address(),
            deposit: 1000,
            claimed: 0,
            last_seq: 0,
            expiry_height: 100,
            settle_at: None,
        };
        let first = voucher(&payer, ch.id, 1, 100);
        assert_eq!(check_voucher(None, &first, &ch, 7), Ok(true));
        let held = Some(&first);
        assert_eq!(
            check_voucher(held, &first, &ch, 7),
            Ok(false),
            "a repeat is not new"
        );
        assert_eq!(
            check_voucher(held, &voucher(&payer, ch.id, 2, 150), &ch, 7),
            Ok(true)
        );
        let stranger = SecretKey::generate();
        let bad = [
            (voucher(&payer, ch.id, 2, 150), 8, "chain"),
            (voucher(&payer, Hash([2; 32]), 2, 150), 7, "channel"),
            (voucher(&payer, ch.id, 1, 150), 7, "seq"),
            (
                voucher(&stranger, ch.id, 1, 100),
                7,
                "seq (a forged repeat)",
            ),
            (voucher(&payer, ch.id, 3, 50), 7, "down"),
            (voucher(&payer, ch.id, 3, 1001), 7, "deposit"),
            (voucher(&stranger, ch.id, 3, 200), 7, "payer"),
        ];
        for (v, chain_id, why) in bad {
            let err = check_voucher(held, &v, &ch, chain_id).unwrap_err();
            let matched = match why {
                "chain" => matches!(err, VoucherRejected::WrongChain { got: 7, want: 8 }),
                "channel" => matches!(err, VoucherRejected::WrongChannel { .. }),
                "seq" | "seq (a forged repeat)" => {
                    matches!(err, VoucherRejected::StaleSeq { seq: 1, held: 1 })
                }
                "down" => matches!(err, VoucherRejected::CumulativeDown { got: 50, held: 100 }),
                "deposit" => matches!(err, VoucherRejected::OverDeposit { .. }),
                _ => matches!(err, VoucherRejected::NotPayer { .. }),
            };
            assert!(matched, "{why}: {err}");
        }
    }
}
