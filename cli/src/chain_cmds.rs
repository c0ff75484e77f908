//! `zennet chain snapshot export|import FILE` and `zennet chain verify`:
//! they open the home's chain database directly (export and verify also
//! while a node runs — SQLite's WAL lets them read a consistent state;
//! import only while none does). `zennet chain sync` asks the running
//! node instead, and draws its catch-up.

use std::path::Path;

use anyhow::{Context, Result, bail};
use zennet_chain::Chain;

use crate::commands::Output;
use crate::home::Home;
use crate::node::now_ms;

fn open(home: &Home) -> Result<Chain> {
    let genesis = home.genesis()?;
    Chain::open(&home.chain_dir(), genesis).context("cannot open the chain database")
}

pub async fn export(home: &Home, file: &Path, height: Option<u64>, out: Output) -> Result<()> {
    let chain = open(home)?;
    // Written beside the target and renamed: never a half-written file.
    let tmp = file.with_extension("partial");
    let info = tokio::task::block_in_place(|| -> Result<_> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?,
        );
        let info = chain.export_snapshot(height, &mut f);
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        Ok(info)
    })?;
    out.print(&info, || {
        format!(
            "exported the state at height {} ({} entries, state root {}) to {}",
            info.height,
            info.entries,
            info.state_root,
            file.display()
        )
    });
    Ok(())
}

pub async fn import(home: &Home, file: &Path, out: Output) -> Result<()> {
    let _lock = home.lock_node()?;
    let mut chain = open(home)?;
    let info = tokio::task::block_in_place(|| -> Result<_> {
        let mut f = std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        );
        Ok(chain.import_snapshot(&mut f, now_ms())?)
    })?;
    out.print(&info, || {
        format!(
            "imported the state at height {} ({} entries, state root {}); `zennet node run` syncs on from there",
            info.height, info.entries, info.state_root
        )
    });
    Ok(())
}

pub async fn verify(home: &Home, out: Output) -> Result<()> {
    let mut chain = open(home)?;
    let report = tokio::task::block_in_place(|| chain.verify_state())?;
    out.print(&report, || {
        format!(
            "height        {}\nentries       {}\ncomputed root {}\nheader root   {}\ntrie root     {}\nbad nodes     {}",
            report.height,
            report.entries,
            report.computed_root,
            report.header_root,
            report.trie_root.map_or_else(
                || "behind the tip (the tree in use was rebuilt from the rows)".to_string(),
                |r| r.to_string()
            ),
            report.mismatched_nodes
        )
    });
    if report.computed_root == report.header_root && report.mismatched_nodes > 0 {
        // The rows are sound and the tree is derived from them: mend it.
        let nodes = tokio::task::block_in_place(|| chain.rebuild_trie())?;
        eprintln!("the stored trie disagreed with the rows; rewrote it ({nodes} nodes)");
        return Ok(());
    }
    if !report.ok() {
        bail!(
            "the stored state does not match: recomputed root {} vs header {} at height {}",
            report.computed_root,
            report.header_root,
            report.height
        );
    }
    Ok(())
}

/// `zennet chain sync`: waits until the running node has caught up with
/// its peers — no catch-up running, and a comparison with them that ended
/// after this command started found none ahead — with a progress bar
/// meanwhile (one line per phase instead when stderr is not a terminal).
pub async fn sync(home: &Home, timeout: Option<u64>, out: Output) -> Result<()> {
    use std::io::IsTerminal;

    use crate::api::Info;
    use crate::sync::SyncPhase;

    let client = home.client()?;
    let first: Info = client.get("/v1/info").await?;
    if !first.sync.network {
        bail!("this node runs without networking, so there is nothing to sync from");
    }
    let since = first.sync.checked_ms;
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:28} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let lines = !std::io::stderr().is_terminal();
    let mut phase = None;
    loop {
        let info: Info = client.get("/v1/info").await?;
        let s = &info.sync;
        match &s.running {
            Some(run) => {
                if phase != Some(run.phase) && lines {
                    eprintln!(
                        "syncing: {} from height {} toward {}",
                        run.phase, run.from_height, run.target_height
                    );
                }
                phase = Some(run.phase);
                let (pos, len) = match run.phase {
                    SyncPhase::Snapshot => (run.chunks_done, run.chunks_total),
                    _ => (
                        info.height.saturating_sub(run.from_height),
                        run.target_height.saturating_sub(run.from_height),
                    ),
                };
                bar.set_length(len.max(1));
                bar.set_position(pos.min(len));
                bar.set_message(match run.phase {
                    SyncPhase::Snapshot => "state chunks".to_string(),
                    p => format!("{p} (height {})", info.height),
                });
            }
            None if s.checked_ms > since && !s.behind => {
                bar.finish_and_clear();
                out.print(&info, || {
                    format!(
                        "in sync at height {} (tip {}); {} peers answered, the highest at {}",
                        info.height,
                        info.tip,
                        s.peers_answered,
                        s.best_peer_height
                            .map_or_else(|| "-".to_string(), |h| h.to_string())
                    )
                });
                return Ok(());
            }
            None => {}
        }
        if let Some(t) = timeout
            && started.elapsed().as_secs() >= t
        {
            bar.abandon();
            bail!(
                "not in sync after {t} s: height {}, the highest peer at {}; see the node's log",
                info.height,
                s.best_peer_height
                    .map_or_else(|| "-".to_string(), |h| h.to_string())
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
