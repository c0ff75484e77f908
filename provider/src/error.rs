//! The provider's errors, one variant per failure.

use zennet_chain::{ChainError, Hash};

use crate::contract::Phase;
use crate::market::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("task {task} is already taken ({phase:?})")]
    AlreadyTaken { task: Hash, phase: Phase },
    #[error("task {0} is being accepted (its proof of work is being searched)")]
    BeingAccepted(Hash),
    #[error("no task {0} on chain")]
    NoSuchTask(Hash),
    #[error("task {task}: {reason}")]
    Refused { task: Hash, reason: Rejection },
    #[error("AcceptTask for {task}: {source}")]
    Accept { task: Hash, source: ChainError },
    #[error(
        "the acceptance proof of work for {task} was given up (the node is stopping or the task's acceptance window closed)"
    )]
    PowCancelled { task: Hash },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Pay(#[from] zennet_pay::PayError),
    #[error(transparent)]
    Vm(#[from] zennet_vm::VmError),
}

impl ProviderError {
    /// A refusal of the request itself, as opposed to a failure of the node.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            ProviderError::AlreadyTaken { .. }
                | ProviderError::BeingAccepted(_)
                | ProviderError::Refused { .. }
                | ProviderError::Accept { .. }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ProviderError::NoSuchTask(_))
    }
}
