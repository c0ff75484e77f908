//! What a build reports while it runs, so a front end can show progress
//! (`zennet image build` draws it with indicatif). The library only calls
//! back; it draws nothing.

/// One report from [`crate::build_with_progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step starts: "resolving packages", "writing disk root", ...
    Step(String),
    /// `done` of `total` bytes of a download (`name`) have arrived.
    Download { name: String, done: u64, total: u64 },
}

/// A progress callback that ignores everything.
pub(crate) fn ignore(_: Progress) {}
