//! The dashboard's pages: each gathers what it shows from the node's
//! services (the same calls and views the JSON API makes, so the numbers
//! are the API's) into a template's fields, and its actions call the same
//! service methods the API's POST routes do.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use zennet_chain::{Amount, Hash};

use super::{ActionForm, Csrf, done};
use crate::node::Node;

/// A rendered template (a template that fails shows its error, escaped).
pub fn html(t: &impl Template) -> Html<String> {
    Html(
        t.render().unwrap_or_else(|e| {
            format!("<p>page error: {}</p>", e.to_string().replace('<', "&lt;"))
        }),
    )
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message<'a> {
    pub title: &'a str,
    pub message: &'a str,
}

/// A page for a service this node does not run.
#[derive(Template)]
#[template(path = "off.html")]
struct Off {
    page: &'static str,
    height: u64,
    what: &'static str,
    how: &'static str,
}

fn height(node: &Node) -> u64 {
    node.chain().tip().header.height
}

/// `0x1234…abcd` for a long hex id.
fn short(s: &str) -> String {
    if s.len() > 14 {
        format!("{}…{}", &s[..8], &s[s.len() - 4..])
    } else {
        s.to_string()
    }
}

/// `/ui/`: the provider page on a provider, else the publisher's, else the chain.
pub async fn home(State(node): State<Arc<Node>>) -> Redirect {
    let to = if node.provider().is_some() {
        "/ui/provider"
    } else if node.publisher().is_some() {
        "/ui/publisher"
    } else {
        "/ui/chain"
    };
    Redirect::to(to)
}

#[derive(Template)]
#[template(path = "provider.html")]
struct ProviderPage {
    page: &'static str,
    height: u64,
    csrf: String,
    machine_cores: u32,
    machine_memory_mib: u64,
    machine_disk_gib: u64,
    compute_per_core: u32,
    free_cores: u32,
    free_memory_mib: u64,
    free_disk_gib: u64,
    earned: Amount,
    claimed: Amount,
    chart: String,
    history: String,
    prices: zennet_provider::prices::PriceSuggestion,
    contracts: Vec<ContractLine>,
    vms: Vec<VmLine>,
    tasks: Vec<TaskLine>,
}

struct ContractLine {
    task: String,
    task_short: String,
    vm: String,
    phase: String,
    accrued: Amount,
    paid: Amount,
    claimed: Amount,
    unpaid: Amount,
    pause: String,
    expires: String,
}

struct VmLine {
    id: String,
    image: String,
    state: String,
    cores: u32,
    memory_mib: u64,
    cpu_secs: String,
    cpu_now: String,
    traffic: u64,
    live: bool,
}

struct TaskLine {
    task: String,
    task_short: String,
    publisher_short: String,
    verdict: String,
    taken: bool,
}

pub async fn provider(State(node): State<Arc<Node>>, Extension(csrf): Extension<Csrf>) -> Response {
    let Some(p) = node.provider() else {
        return off(
            &node,
            "Provider",
            "This node is not a provider: run it with `zennet node run --provide`.",
        );
    };
    let result: Result<ProviderPage, zennet_provider::ProviderError> = async {
        let (machine, free) = p.capacity()?;
        let height = p.height();
        let mut contracts = Vec::new();
        let (mut earned, mut claimed_total) = (0, 0);
        let mut bars = Vec::new();
        for c in p.contracts()? {
            let ch = c.channel.and_then(|id| p.channel(&id));
            let claimed = super::history::settled(ch.as_ref(), &c);
            earned += c.paid;
            claimed_total += claimed;
            bars.push((
                short(&c.task.to_string()),
                claimed,
                c.paid.saturating_sub(claimed),
            ));
            if !c.phase.active() {
                continue;
            }
            contracts.push(ContractLine {
                task: c.task.to_string(),
                task_short: short(&c.task.to_string()),
                vm: c.vm.clone().unwrap_or_default(),
                phase: format!("{:?}", c.phase).to_lowercase(),
                accrued: c.accrued,
                paid: c.paid,
                claimed,
                unpaid: c.accrued.saturating_sub(c.paid),
                pause: match (c.phase, c.pause_at_ms) {
                    (zennet_provider::Phase::Paused, _) => "paused".into(),
                    (_, Some(at)) => {
                        format!("in {} s", at.saturating_sub(crate::node::now_ms()) / 1000)
                    }
                    (_, None) => "paid up".into(),
                },
                expires: ch.map_or("—".into(), |ch| {
                    format!("{} blocks", ch.expiry_height.saturating_sub(height))
                }),
            });
        }
        let tasks = p
            .tasks()?
            .into_iter()
            .map(|t| TaskLine {
                task: t.task.to_string(),
                task_short: short(&t.task.to_string()),
                publisher_short: short(&t.publisher.to_string()),
                verdict: t.verdict,
                taken: t.contract.is_some(),
            })
            .collect();
        Ok(ProviderPage {
            page: "provider",
            height,
            csrf: csrf.0.clone(),
            machine_cores: machine.cores,
            machine_memory_mib: machine.memory_mib,
            machine_disk_gib: machine.disk_gib,
            compute_per_core: machine.compute_per_core,
            free_cores: free.cores,
            free_memory_mib: free.memory_mib,
            free_disk_gib: free.disk_gib,
            earned,
            claimed: claimed_total,
            chart: earnings_chart(&bars),
            history: {
                // The stored samples, and now (the totals just summed).
                let mut points = node.earnings().points();
                points.push(super::history::Point {
                    at_ms: crate::node::now_ms(),
                    vouchered: earned,
                    settled: claimed_total,
                });
                super::history::chart(&points)
            },
            prices: p.prices(),
            contracts,
            vms: Vec::new(),
            tasks,
        })
    }
    .await;
    let mut page = match result {
        Ok(p) => p,
        Err(e) => return done("/ui/provider", Err(e.to_string())),
    };
    if let Some(vms) = node.vms() {
        match vms.list().await {
            Ok(list) => {
                page.vms = list
                    .into_iter()
                    .map(|v| VmLine {
                        live: matches!(
                            v.state,
                            zennet_vm::VmState::Running | zennet_vm::VmState::Paused
                        ),
                        state: format!("{:?}", v.state).to_lowercase(),
                        cpu_secs: format!("{:.1}", v.usage.cpu_ns as f64 / 1e9),
                        cpu_now: format!("{:.0}%", v.cpu_cores_now * 100.0),
                        memory_mib: v.usage.memory_bytes >> 20,
                        traffic: v.usage.traffic_bytes,
                        cores: v.cores,
                        image: v.image,
                        id: v.id,
                    })
                    .collect()
            }
            Err(e) => return done("/ui/provider", Err(e.to_string())),
        }
    }
    html(&page).into_response()
}

/// Horizontal bars per contract: settled (claimed on chain) then pending
/// (vouchered, not yet claimed), as inline SVG (no script, no assets).
fn earnings_chart(bars: &[(String, Amount, Amount)]) -> String {
    let max = bars.iter().map(|(_, s, p)| s + p).max().unwrap_or(0);
    if max == 0 {
        return r#"<p class="muted">Nothing earned yet.</p>"#.into();
    }
    let (row, label_w, bar_w) = (22u32, 130u32, 520f64);
    let mut svg = format!(
        r#"<svg id="earnings" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" role="img" aria-label="earnings by contract">"#,
        label_w + bar_w as u32 + 160,
        row * bars.len() as u32 + 24
    );
    for (i, (label, settled, pending)) in bars.iter().enumerate() {
        let y = i as u32 * row;
        let ws = bar_w * *settled as f64 / max as f64;
        let wp = bar_w * *pending as f64 / max as f64;
        svg += &format!(
            r##"<text x="0" y="{ty}" font-size="12" font-family="monospace">{label}</text><rect x="{label_w}" y="{y}" width="{ws:.1}" height="16" fill="#1e7b34"><title>settled {settled}</title></rect><rect x="{xp:.1}" y="{y}" width="{wp:.1}" height="16" fill="#e0a100"><title>pending {pending}</title></rect><text x="{xt:.1}" y="{ty}" font-size="12">{settled} + {pending}</text>"##,
            ty = y + 12,
            xp = f64::from(label_w) + ws,
            xt = f64::from(label_w) + ws + wp + 6.0,
        );
    }
    let y = row * bars.len() as u32 + 14;
    svg += &format!(
        r##"<rect x="{label_w}" y="{r}" width="10" height="10" fill="#1e7b34"/><text x="{a}" y="{y}" font-size="12">settled on chain</text><rect x="{b}" y="{r}" width="10" height="10" fill="#e0a100"/><text x="{c}" y="{y}" font-size="12">pending vouchers</text></svg>"##,
        r = y - 9,
        a = label_w + 14,
        b = label_w + 130,
        c = label_w + 144,
    );
    svg
}

#[derive(Template)]
#[template(path = "publisher.html")]
struct PublisherPage {
    page: &'static str,
    height: u64,
    csrf: String,
    tasks: Vec<PublisherTask>,
    vms: Vec<PublisherVm>,
}

struct PublisherTask {
    id: String,
    id_short: String,
    paying: bool,
    cancelled: bool,
    wanted: u32,
    running: usize,
    spent: Amount,
    deposit_left: Amount,
    runway: String,
}

struct PublisherVm {
    id: String,
    id_short: String,
    node_short: String,
    phase: String,
    connected: bool,
    paid: Amount,
    reported: Amount,
    ended: bool,
}

pub async fn publisher(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
) -> Response {
    let Some(p) = node.publisher() else {
        return off(
            &node,
            "Publisher",
            "This node is not a publisher: run it with `zennet node run --publish`.",
        );
    };
    let (tasks, vms) = match (p.tasks(), p.vms()) {
        (Ok(t), Ok(v)) => (t, v),
        (Err(e), _) | (_, Err(e)) => return done("/ui/publisher", Err(e.to_string())),
    };
    let chain = node.chain();
    let lines = tasks
        .iter()
        .map(|t| {
            let mine: Vec<_> = vms.iter().filter(|v| v.task == t.id).collect();
            let spent: Amount = mine.iter().map(|v| v.paid).sum();
            // What the channels of the VMs still running hold beyond what
            // is vouchered, and the rate vouchers have been going at.
            let live: Vec<_> = mine.iter().filter(|v| !v.ended).collect();
            let deposit_left: Amount = live
                .iter()
                .filter_map(|v| Some(chain.channel(&v.channel?)?.deposit.saturating_sub(v.paid)))
                .sum();
            let per_sec: f64 = live
                .iter()
                .filter(|v| v.usage.wall_ms > 0)
                .map(|v| v.paid as f64 / (v.usage.wall_ms as f64 / 1000.0))
                .sum();
            PublisherTask {
                id: t.id.to_string(),
                id_short: short(&t.id.to_string()),
                paying: t.paying,
                cancelled: t.record.as_ref().is_none_or(|r| r.cancelled_at.is_some()),
                wanted: t
                    .record
                    .as_ref()
                    .map_or(0, |r| r.announcement.max_instances),
                running: live.iter().filter(|v| v.connected).count(),
                spent,
                deposit_left,
                runway: runway(deposit_left, per_sec),
            }
        })
        .collect();
    drop(chain);
    let page = PublisherPage {
        page: "publisher",
        height: height(&node),
        csrf: csrf.0,
        tasks: lines,
        vms: vms
            .iter()
            .map(|v| PublisherVm {
                id: v.id.to_string(),
                id_short: short(&v.id.to_string()),
                node_short: short(&v.node.to_string()),
                phase: format!("{:?}", v.phase).to_lowercase(),
                connected: v.connected,
                paid: v.paid,
                reported: v.reported,
                ended: v.ended,
            })
            .collect(),
    };
    html(&page).into_response()
}

/// How long `left` lasts at `per_sec`.
fn runway(left: Amount, per_sec: f64) -> String {
    if per_sec <= 0.0 {
        return "—".into();
    }
    let secs = (left as f64 / per_sec) as u64;
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m {}s", s / 60, s % 60),
    }
}

#[derive(Template)]
#[template(path = "chain.html")]
struct ChainPage {
    page: &'static str,
    height: u64,
    tip: Hash,
    difficulty: u64,
    mempool: usize,
    mining: bool,
    /// The catch-up, as one line ("idle" when none runs).
    sync: String,
    peers: Vec<PeerLine>,
    blocks: Vec<BlockLine>,
}

struct PeerLine {
    peer_id: String,
    address: String,
    remote: String,
}

struct BlockLine {
    height: u64,
    hash: Hash,
    txs: usize,
    time: String,
}

pub async fn chain(State(node): State<Arc<Node>>) -> Response {
    let peers = match node.net() {
        Some(net) => net.peers().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let page = {
        let chain = node.chain();
        let tip = chain.tip();
        let top = tip.header.height;
        let blocks = (top.saturating_sub(9)..=top)
            .rev()
            .filter_map(|h| chain.block_by_height(h).ok().flatten())
            .map(|b| BlockLine {
                height: b.header.height,
                hash: b.header.hash(),
                txs: b.txs.len(),
                time: utc(b.header.timestamp_ms),
            })
            .collect();
        ChainPage {
            page: "chain",
            height: top,
            tip: tip.hash,
            difficulty: tip.header.difficulty,
            mempool: chain.mempool().len(),
            mining: node.is_mining(),
            sync: node.sync_status().summary(top),
            peers: peers
                .into_iter()
                .map(|p| PeerLine {
                    peer_id: p.peer_id,
                    address: p.address.map(|a| a.to_string()).unwrap_or_default(),
                    remote: p.remote_addr,
                })
                .collect(),
            blocks,
        }
    };
    html(&page).into_response()
}

/// `HH:MM:SS` of a Unix time in ms (the date is the same for recent blocks).
fn utc(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

#[derive(Template)]
#[template(path = "files.html")]
struct FilesPage {
    page: &'static str,
    height: u64,
    files: Vec<zennet_fs::api::FileView>,
    seeding: usize,
    used_mib: u64,
    max_mib: u64,
    earned: Amount,
    spent: Amount,
    accounts: Vec<zennet_fs::api::AccountView>,
}

pub async fn files(State(node): State<Arc<Node>>) -> Response {
    let Some(fs) = node.fs() else {
        return off(&node, "Files", "The file network is off on this node.");
    };
    let status = match fs.status() {
        Ok(s) => s,
        Err(e) => return done("/ui/files", Err(e.to_string())),
    };
    let page = FilesPage {
        page: "files",
        height: height(&node),
        files: fs.list(),
        seeding: status.seeding,
        used_mib: status.used_bytes >> 20,
        max_mib: status.max_bytes >> 20,
        earned: status.earned,
        spent: status.spent,
        accounts: status.accounts,
    };
    html(&page).into_response()
}

fn off(node: &Node, what: &'static str, how: &'static str) -> Response {
    let page = Off {
        page: match what {
            "Provider" => "provider",
            "Publisher" => "publisher",
            _ => "files",
        },
        height: height(node),
        what,
        how,
    };
    html(&page).into_response()
}

/// The check every action makes first: the form carries the session's
/// CSRF token.
fn fresh(form: &ActionForm, csrf: &Csrf) -> Result<(), String> {
    match form.valid(csrf) {
        true => Ok(()),
        false => Err("this form is stale or not from the dashboard; reload the page".into()),
    }
}

/// [`fresh`], and the hash id the action is about.
fn checked(form: &ActionForm, csrf: &Csrf, id: &str) -> Result<Hash, String> {
    fresh(form, csrf)?;
    id.parse::<Hash>().map_err(|e| format!("{id}: {e}"))
}

fn provider_of(node: &Node) -> Result<&Arc<zennet_provider::Provider>, String> {
    node.provider()
        .ok_or_else(|| "this node is not a provider".into())
}

fn publisher_of(node: &Node) -> Result<&Arc<zennet_publisher::Publisher>, String> {
    node.publisher()
        .ok_or_else(|| "this node is not a publisher".into())
}

pub async fn accept(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let r = async {
        let task = checked(&form, &csrf, &id)?;
        let p = provider_of(&node)?;
        p.accept(&task).await.map(|_| ()).map_err(|e| e.to_string())
    };
    done("/ui/provider", r.await)
}

pub async fn reject(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let r = checked(&form, &csrf, &id).and_then(|task| {
        let p = provider_of(&node)?;
        p.reject(&task).map_err(|e| e.to_string())
    });
    done("/ui/provider", r)
}

pub async fn stop_vm(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let r = async {
        fresh(&form, &csrf)?;
        let vms = node.vms().ok_or("this node is not a provider")?;
        vms.stop(&id).await.map(|_| ()).map_err(|e| e.to_string())
    };
    done("/ui/provider", r.await)
}

pub async fn cancel(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let r = checked(&form, &csrf, &id).and_then(|task| {
        let p = publisher_of(&node)?;
        p.cancel(&task).map(|_| ()).map_err(|e| e.to_string())
    });
    done("/ui/publisher", r)
}

pub async fn stop_paying(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let r = checked(&form, &csrf, &id).and_then(|task| {
        let p = publisher_of(&node)?;
        p.set_paying(&task, Some(false), None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    done("/ui/publisher", r)
}

pub async fn stop_publisher_vm(
    State(node): State<Arc<Node>>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let r = checked(&form, &csrf, &id).and_then(|_| {
        let p = publisher_of(&node)?;
        p.stop_vm(&id).map(|_| ()).map_err(|e| e.to_string())
    });
    done("/ui/publisher", r)
}
