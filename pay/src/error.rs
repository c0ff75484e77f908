//! What can go wrong on either side of a channel, one variant per failure.

use zennet_chain::{Address, ChainError, Hash};

use crate::check::VoucherRejected;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("channel {0} is not open on chain (not mined yet, closed, or reclaimed)")]
    NotOnChain(Hash),
    #[error("channel {channel} is from {payer} to {payee}, not from {expected_payer} to this node")]
    WrongParties {
        channel: Hash,
        payer: Address,
        payee: Address,
        expected_payer: Address,
    },
    #[error("channel {0} is not one this node pays from or is paid through")]
    Unknown(Hash),
    #[error("voucher refused: {0}")]
    Voucher(#[from] VoucherRejected),
    #[error("the chain refused {what} for channel {channel}: {source}")]
    Submit {
        what: &'static str,
        channel: Hash,
        source: Box<ChainError>,
    },
    #[error("the chain refused to open a channel to {payee}: {source}")]
    Open {
        payee: Address,
        source: Box<ChainError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}
