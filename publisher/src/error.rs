//! The publisher's errors, one variant per failure.

use zennet_chain::{ChainError, Hash};

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("image {id} has no hash in the task file and is not built here: {source}")]
    ImageNotBuilt {
        id: String,
        source: zennet_images::ImageError,
    },
    #[error("image {id}: its manifest hash does not parse: {source}")]
    BadImageHash { id: String, source: ChainError },
    #[error(transparent)]
    TaskFile(#[from] crate::taskfile::TaskFileError),
    #[error(transparent)]
    Lan(#[from] crate::lan::LanError),
    #[error(
        "the announcement is {size} bytes; the network limit is {limit} (shorten info or drop choices)"
    )]
    TooLarge { size: usize, limit: u32 },
    #[error("the chain refused {what}: {source}")]
    Chain {
        what: &'static str,
        source: ChainError,
    },
    #[error("the proof of work search was cancelled")]
    PowCancelled,
    #[error("task {0} was not announced by this node")]
    NotOurTask(Hash),
    #[error("no VM {0} (see `zennet vm list`)")]
    NoSuchVm(String),
    #[error("{count} VMs start with {prefix}; give more digits")]
    AmbiguousVm { count: usize, prefix: String },
    #[error("VM {0} is not connected; it stops when its node reconnects or its lease ends")]
    NotConnected(Hash),
    #[error("the node sent no Join within 30 s")]
    NoJoin,
    #[error("web_port in the task file must be 1-65535")]
    BadWebPort,
    #[error("no app {0} on this node (see `zennet app list`)")]
    NoSuchApp(String),
    #[error("the node's first frame was not Join")]
    NotJoin,
    #[error("the node named no task on its private-network link within 30 s")]
    NoLanTask,
    #[error("node {node} has no running contract for task {task}")]
    NoContract {
        task: Hash,
        node: zennet_chain::Address,
    },
    #[error("task {0} is not one of this publisher's live tasks")]
    NotLiveTask(Hash),
    #[error("no acceptance of task {0} names this SSH key")]
    NoAcceptance(Hash),
    #[error("node {node} already has a session open for task {task}")]
    DuplicateSession {
        task: Hash,
        node: zennet_chain::Address,
    },
    #[error("unexpected frame from the node: {0}")]
    UnexpectedFrame(String),
    #[error("channel {0} is not open on chain")]
    ChannelNotOpen(Hash),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Key(#[from] zennet_tunnel::keys::KeyError),
    #[error(transparent)]
    Wire(#[from] zennet_proto::WireError),
    #[error(transparent)]
    Pay(#[from] zennet_pay::PayError),
    #[error("SSH server: {0}")]
    Io(#[from] std::io::Error),
}

impl PublisherError {
    /// A refusal of the request itself (the caller can fix it).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            PublisherError::ImageNotBuilt { .. }
                | PublisherError::BadImageHash { .. }
                | PublisherError::TaskFile(_)
                | PublisherError::TooLarge { .. }
                | PublisherError::Chain { .. }
                | PublisherError::AmbiguousVm { .. }
                | PublisherError::NotConnected(_)
                | PublisherError::BadWebPort
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            PublisherError::NotOurTask(_)
                | PublisherError::NoSuchVm(_)
                | PublisherError::NoSuchApp(_)
        )
    }
}
