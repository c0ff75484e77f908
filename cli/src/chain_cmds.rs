//! `zennet chain snapshot export|import FILE` and `zennet chain verify`:
//! they open the home's chain database directly (export and verify also
//! while a node runs — SQLite's WAL lets them read a consistent state;
//! import only while none does).

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
    let chain = open(home)?;
    let report = tokio::task::block_in_place(|| chain.verify_state())?;
    out.print(&report, || {
        format!(
            "height        {}\nentries       {}\ncomputed root {}\nheader root   {}\ntrie root     {}\nbad nodes     {}",
            report.height,
            report.entries,
            report.computed_root,
            report.header_root,
            report.trie_root,
            report.mismatched_nodes
        )
    });
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
