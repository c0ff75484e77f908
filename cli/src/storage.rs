//! `zennet fs store|replicas|prove`: paid replicas from the CLI, through
//! the node's storage routes (`api/storage.rs`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use zennet_chain::codec::amount_str;
use zennet_fs::FileId;
use zennet_fs::api::{AddRequest, Added, StorageTaskView, StorageView, StoreRequest};

use crate::commands::Output;
use crate::home::Home;

/// `fs store`'s arguments.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// A file id (or magnet link) held here, or a path to add first.
    pub target: String,
    /// Replicas kept at once.
    #[arg(long, default_value_t = 1)]
    pub replicas: u16,
    /// How long they are kept: e.g. 90s, 30m, 12h, 7d.
    #[arg(
        long = "for",
        value_name = "DURATION",
        required_unless_present = "stop"
    )]
    pub duration: Option<String>,
    /// Price offered per GiB-hour, in base units (the most this pays).
    #[arg(long, required_unless_present = "stop")]
    pub max_price: Option<String>,
    /// Mean seconds between challenges (default: [fs.store] challenge_secs).
    #[arg(long)]
    pub challenge_secs: Option<u32>,
    /// Cancel this node's storage tasks of the file instead.
    #[arg(long)]
    pub stop: bool,
}

pub async fn store(home: &Home, args: StoreArgs, out: Output) -> Result<()> {
    if args.stop {
        let file = FileId::parse(&args.target)?;
        let v: serde_json::Value = home
            .client()?
            .post(&format!("/v1/fs/store/{file}/stop"), &serde_json::json!({}))
            .await?;
        out.print(&v, || {
            format!("cancelled the storage of {file}: {}", v["cancelled"])
        });
        return Ok(());
    }
    let duration_secs = parse_duration(args.duration.as_deref().unwrap_or_default())?;
    let price = amount_str::parse_amount(args.max_price.as_deref().unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    let client = home.client()?;
    let id = match FileId::parse(&args.target) {
        Ok(id) if !Path::new(&args.target).exists() => id,
        _ => {
            let path = std::fs::canonicalize(&args.target).with_context(|| {
                format!("{} is neither a file id nor a readable path", args.target)
            })?;
            let req = AddRequest {
                path,
                encrypt: false,
                key: None,
                price_per_mib: None,
            };
            let added: Added = client.post("/v1/fs/files", &req).await?;
            added.id
        }
    };
    let req = StoreRequest {
        id,
        replicas: args.replicas,
        duration_secs,
        price_per_gib_hour: price,
        challenge_secs: args.challenge_secs,
    };
    let task: StorageTaskView = client.post("/v1/fs/store", &req).await?;
    out.print(&task, || {
        format!(
            "storage task {}\nfile   {} ({} bytes)\nroot   {}\nwants  {} replicas at {} per GiB-hour, challenged every ~{} s\nsee    zennet fs replicas {}",
            task.task,
            task.file,
            task.size,
            task.merkle_root,
            task.replicas_wanted,
            task.price_per_gib_hour,
            task.challenge_secs,
            task.file
        )
    });
    Ok(())
}

pub async fn replicas(home: &Home, id: Option<String>, out: Output) -> Result<()> {
    let path = match id {
        Some(i) => format!("/v1/fs/storage?file={}", FileId::parse(&i)?),
        None => "/v1/fs/storage".into(),
    };
    let v: StorageView = home.client()?.get(&path).await?;
    out.print(&v, || render(&v));
    Ok(())
}

pub async fn prove(home: &Home, id: String, out: Output) -> Result<()> {
    let file = FileId::parse(&id)?;
    let v: StorageView = home
        .client()?
        .post(&format!("/v1/fs/prove/{file}"), &serde_json::json!({}))
        .await?;
    out.print(&v, || render(&v));
    Ok(())
}

fn render(v: &StorageView) -> String {
    let mut s = Vec::new();
    for t in &v.tasks {
        s.push(format!(
            "task {} ({}) {} {}: {} of {} replicas holding",
            t.task, t.state, t.file, t.name, t.holding, t.replicas_wanted
        ));
        for r in &t.replicas {
            s.push(format!(
                "  {}  {:<8} passed {:>4}  failed {}  paid {:>12}{}",
                r.node,
                r.state,
                r.passed,
                r.failed,
                r.paid,
                r.failure
                    .as_ref()
                    .map(|f| format!("  ({f})"))
                    .unwrap_or_default()
            ));
        }
    }
    for h in &v.held {
        s.push(format!(
            "holding {} for {} ({}): {} answered, paid {} of {} accrued{}",
            h.file,
            h.owner,
            h.state,
            h.answered,
            h.paid,
            h.accrued,
            h.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    if s.is_empty() {
        return "no storage tasks or held replicas".into();
    }
    s.join("\n")
}

/// `90s`, `30m`, `12h`, `7d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 =
        digits.parse().ok().filter(|n| *n > 0).with_context(|| {
            format!("--for {s:?} is not a duration such as 90s, 30m, 12h or 7d")
        })?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("--for {s:?}: unknown unit {other:?} (s, m, h or d)"),
    };
    n.checked_mul(unit).context("--for is too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("12h").unwrap(), 43_200);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("45").unwrap(), 45);
        for bad in ["", "0s", "h", "5w", "-3s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
