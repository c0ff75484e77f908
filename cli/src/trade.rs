//! Market commands: `task …` and `vm …` (publisher side), `agent
//! tasks|contracts|accept|reject|prices` (provider side). All go through the
//! running node's API.

use std::path::Path;

use anyhow::{Context, Result, bail};
use zennet_chain::Hash;
use zennet_provider::{ContractView as Contract, TaskVerdict};
use zennet_publisher::{TaskView, VmView};

use crate::api::{AnnounceTask, PublisherInfo, SetPaying, Submitted};
use crate::commands::Output;
use crate::home::Home;

pub async fn task_announce(home: &Home, file: &Path, out: Output) -> Result<()> {
    let toml = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read task file {}", file.display()))?;
    // Parse here too, so a bad file fails before the node is asked.
    zennet_publisher::taskfile::TaskFile::parse(&toml)?;
    let client = home.client()?;
    let s: Submitted = client
        .post("/v1/publisher/tasks", &AnnounceTask { toml })
        .await?;
    out.print(&s, || format!("task {} announced", s.hash));
    Ok(())
}

pub async fn task_list(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let tasks: Vec<TaskView> = client.get("/v1/publisher/tasks").await?;
    out.print(&tasks, || {
        tasks
            .iter()
            .map(|t| {
                let state = match &t.record {
                    None => "pruned".to_string(),
                    Some(r) if r.cancelled_at.is_some() => "cancelled".into(),
                    Some(r) => format!(
                        "{}/{} accepted",
                        r.acceptances.len(),
                        r.announcement.max_instances
                    ),
                };
                format!(
                    "{} {state} paying={} storage_paid={}",
                    t.id, t.paying, t.storage_paid
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn task_show(home: &Home, id: &str, out: Output) -> Result<()> {
    let client = home.client()?;
    let task: zennet_chain::TaskRecord = client.get(&format!("/v1/tasks/{id}")).await?;
    out.print(&task, || {
        serde_json::to_string_pretty(&task).expect("serialisable")
    });
    Ok(())
}

pub async fn task_cancel(home: &Home, id: &str, out: Output) -> Result<()> {
    let client = home.client()?;
    let s: Submitted = client
        .post(&format!("/v1/publisher/tasks/{id}/cancel"), &())
        .await?;
    out.print(&s, || format!("cancel submitted in {}", s.hash));
    Ok(())
}

pub async fn task_pay(
    home: &Home,
    id: &str,
    paying: Option<bool>,
    storage: Option<bool>,
    out: Output,
) -> Result<()> {
    let client = home.client()?;
    let row: zennet_publisher::store::TaskRow = client
        .post(
            &format!("/v1/publisher/tasks/{id}/pay"),
            &SetPaying { paying, storage },
        )
        .await?;
    out.print(&row, || {
        format!(
            "task {} paying={} storage_paid={}",
            row.task, row.paying, row.storage_paid
        )
    });
    Ok(())
}

pub async fn vm_list(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let vms: Vec<VmView> = client.get("/v1/publisher/vms").await?;
    out.print(&vms, || {
        vms.iter()
            .map(|v| {
                format!(
                    "{} task {} node {} {:?}{} port {} paid {} of {} reported",
                    short(&v.id),
                    short(&v.task),
                    v.node,
                    v.phase,
                    if v.connected { "" } else { " (not connected)" },
                    v.ssh_port.map_or("-".into(), |p| p.to_string()),
                    v.paid,
                    v.reported
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn app_list(home: &Home, out: Output) -> Result<()> {
    let list: crate::apps::AppsList = home.client()?.get("/v1/publisher/apps").await?;
    out.print(&list, || {
        if list.apps.is_empty() {
            return "no apps: give a task file web_port = PORT to serve its VMs' HTTP".into();
        }
        list.apps
            .iter()
            .map(|a| {
                format!(
                    "{} -> port {} of {} running VM(s) of task {}",
                    a.url,
                    a.app.web_port,
                    a.app.vms.len(),
                    short(&a.app.task)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn vm_stop(home: &Home, id: &str, out: Output) -> Result<()> {
    let client = home.client()?;
    let vm: VmView = client
        .post(&format!("/v1/publisher/vms/{id}/stop"), &())
        .await?;
    out.print(&vm, || format!("VM {} is being stopped", vm.id));
    Ok(())
}

/// `vm ssh ID [-- CMD]`: the stock OpenSSH client through the tunnel,
/// pinned to the host key the VM announced.
pub async fn vm_ssh(home: &Home, id: &str, command: &[String]) -> Result<()> {
    run_ssh(home, id, &[], command).await
}

/// `vm forward ID L:R... [-R R:L]...`: OpenSSH's -L and -R through the
/// tunnel, both ends on loopback, until interrupted.
pub async fn vm_forward(home: &Home, id: &str, local: &[String], reverse: &[String]) -> Result<()> {
    if local.is_empty() && reverse.is_empty() {
        bail!("give a forward, e.g. `zennet vm forward {id} 8080:80` or `--reverse 9000:5432`");
    }
    let mut options = vec![
        "-N".to_string(),
        "-o".into(),
        "ExitOnForwardFailure=yes".into(),
    ];
    for f in local {
        let (here, vm) = port_pair(f, "LOCAL:VM")?;
        options.extend(["-L".into(), format!("127.0.0.1:{here}:127.0.0.1:{vm}")]);
    }
    for f in reverse {
        let (vm, here) = port_pair(f, "VM:LOCAL")?;
        options.extend(["-R".into(), format!("127.0.0.1:{vm}:127.0.0.1:{here}")]);
    }
    run_ssh(home, id, &options, &[]).await
}

/// `A:B` as two ports (1-65535).
fn port_pair(s: &str, shape: &str) -> Result<(u16, u16)> {
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    match s.split_once(':') {
        Some((a, b)) => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!("forward {s:?}: ports are 1-65535, as {shape}"),
        },
        None => bail!("forward {s:?} is not {shape} (two ports, e.g. 8080:80)"),
    }
}

async fn run_ssh(home: &Home, id: &str, options: &[String], command: &[String]) -> Result<()> {
    let status = ssh_command(home, id, options, command)
        .await?
        .status()
        .context("cannot run ssh")?;
    std::process::exit(status.code().unwrap_or(255));
}

/// `vm exec ID -- CMD`: runs CMD in the VM, prints its output, exits with
/// its status.
pub async fn vm_exec(home: &Home, id: &str, command: &[String]) -> Result<()> {
    if command.is_empty() {
        bail!("give the command after --, e.g. `zennet vm exec {id} -- uname -a`");
    }
    vm_ssh(home, id, command).await
}

pub(crate) async fn ssh_command(
    home: &Home,
    id: &str,
    options: &[String],
    command: &[String],
) -> Result<std::process::Command> {
    let client = home.client()?;
    let info: PublisherInfo = client.get("/v1/publisher").await?;
    let vm: VmView = client.get(&format!("/v1/publisher/vms/{id}")).await?;
    let Some(port) = vm.ssh_port.filter(|_| vm.connected) else {
        bail!(
            "VM {} is not reachable now (its node is not connected)",
            vm.id
        );
    };
    // One file per VM: execs into several VMs may run at once.
    let known_hosts = home
        .dir()
        .join("publisher")
        .join(format!("known_hosts-{}", short(&vm.id)));
    let mut cmd = ssh_to_vm(
        Path::new(&info.vm_key),
        &known_hosts,
        vm.host_key.as_deref(),
        port,
        options,
    )?;
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    Ok(cmd)
}

/// OpenSSH into a VM through its tunnel port on this host, logging in with
/// `key`, pinned to the VM's `host_key` (written to `known_hosts`; without
/// one yet, the first key seen is kept), `options` before the destination.
pub(crate) fn ssh_to_vm(
    key: &Path,
    known_hosts: &Path,
    host_key: Option<&str>,
    port: u16,
    options: &[String],
) -> Result<std::process::Command> {
    if let Some(host_key) = host_key {
        crate::home::write_atomic(
            known_hosts,
            format!("[127.0.0.1]:{port} {host_key}\n").as_bytes(),
            0o600,
        )?;
    }
    let mut cmd = std::process::Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ])
    .arg("-i")
    .arg(key)
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
    .args([
        "-o",
        if host_key.is_some() {
            "StrictHostKeyChecking=yes"
        } else {
            "StrictHostKeyChecking=accept-new"
        },
    ])
    .args(options)
    .args(["-p", &port.to_string(), "root@127.0.0.1"]);
    Ok(cmd)
}

pub async fn agent_tasks(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let tasks: Vec<TaskVerdict> = client.get("/v1/agent/tasks").await?;
    out.print(&tasks, || {
        tasks
            .iter()
            .map(|t| {
                let c = t
                    .contract
                    .as_ref()
                    .map_or(String::new(), |c| format!(" [{:?}]", c.phase));
                format!("{} from {}: {}{c}", t.task, t.publisher, t.verdict)
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// Suggested `[market]` minimums, printed as the TOML to paste.
pub async fn agent_prices(home: &Home, out: Output) -> Result<()> {
    let p: zennet_provider::prices::PriceSuggestion =
        home.client()?.get("/v1/agent/prices").await?;
    out.print(&p, || {
        let basis = match p.basis.as_str() {
            "accepted" => format!(
                "the {} acceptances of {} tasks announced in the last {} blocks",
                p.acceptances_seen, p.tasks_seen, p.window_blocks
            ),
            "announced" => format!(
                "{} tasks announced in the last {} blocks (none accepted yet)",
                p.tasks_seen, p.window_blocks
            ),
            _ => format!("no task announced in the last {} blocks", p.window_blocks),
        };
        format!(
            "[market]\nmin_per_compute_unit_second = \"{}\"\nmin_per_memory_gib_hour = \"{}\"\nmin_per_storage_gib_hour = \"{}\"\nmin_base_per_second = \"{}\"\n# from {basis}: the lower quartile of each rate\n# at these minimums this machine would take {} open task(s) now: up to {} base units a day at full use",
            p.min_per_compute_unit_second,
            p.min_per_memory_gib_hour,
            p.min_per_storage_gib_hour,
            p.min_base_per_second,
            p.would_take,
            p.income_per_day
        )
    });
    Ok(())
}

pub async fn agent_contracts(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let contracts: Vec<Contract> = client.get("/v1/agent/contracts").await?;
    out.print(&contracts, || {
        contracts
            .iter()
            .map(|c| {
                format!(
                    "{} {:?} vm {} accrued {} paid {}{}",
                    short(&c.task),
                    c.phase,
                    c.vm.as_deref().unwrap_or("-"),
                    c.accrued,
                    c.paid,
                    c.end_reason
                        .as_ref()
                        .map_or(String::new(), |r| format!(" ({r})"))
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn agent_accept(home: &Home, id: &str, out: Output) -> Result<()> {
    let client = home.client()?;
    let c: Contract = client
        .post(&format!("/v1/agent/tasks/{id}/accept"), &())
        .await?;
    out.print(&c, || {
        format!("accepted task {} in {}", c.task, c.acceptance_tx)
    });
    Ok(())
}

pub async fn agent_reject(home: &Home, id: &str, out: Output) -> Result<()> {
    let client = home.client()?;
    let s: Submitted = client
        .post(&format!("/v1/agent/tasks/{id}/reject"), &())
        .await?;
    out.print(&s, || format!("task {} will not be accepted", s.hash));
    Ok(())
}

pub(crate) fn short(h: &Hash) -> String {
    h.to_string()[..14].to_string()
}
