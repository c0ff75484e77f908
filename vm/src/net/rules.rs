//! The text of the guest network's kernel configuration: the nftables
//! rulesets (the VM's namespace, the host) and the `tc` shaping. Pure
//! functions, so what the kernel is told is unit-tested here and applied
//! in one `nft -f` / `tc -batch` each.

use std::net::Ipv4Addr;

use super::Subnet;
use crate::spec::GATEWAY;

/// Inside the VM's namespace: the guest's tap and, with internet, the
/// namespace's end of the veth pair.
pub const TAP: &str = "tap0";
pub const UPLINK: &str = "eth0";
/// Host interfaces of VM uplinks all start with this (`zn` + a tag).
pub const HOST_IF_PREFIX: &str = "zn";

/// IPv4 destinations a guest never reaches, even with internet: this
/// network ("0/8"), RFC 1918, CGNAT, loopback, link-local (cloud metadata
/// at 169.254.169.254 included), IETF protocol assignments, benchmarking,
/// multicast and the reserved block up to the broadcast address. Whatever
/// address the host itself has is dropped by the host's own table, by
/// interface rather than by address, so a changing host address is
/// covered too.
pub const BLOCKED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The ruleset of one VM's namespace. Nothing in it answers the guest:
/// input takes only replies to the node's own connections (to the guest's
/// sshd). With `internet`, the guest's packets are forwarded to public
/// IPv4 addresses only and masqueraded behind the namespace's uplink
/// address; IPv6 is off in the namespace (and dropped here as well).
pub fn vm_ruleset(internet: bool) -> String {
    let mut forward = String::new();
    let mut nat = String::new();
    if internet {
        forward = format!(
            "    iifname \"{UPLINK}\" oifname \"{TAP}\" ct state established,related accept\n    \
             iifname \"{TAP}\" oifname \"{UPLINK}\" meta nfproto ipv4 ip daddr != @blocked accept\n"
        );
        nat = format!(
            "table ip zennet_nat {{\n  chain postrouting {{\n    \
             type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"{UPLINK}\" masquerade\n  }}\n}}\n"
        );
    }
    format!(
        "table inet zennet {{\n  set blocked {{\n    type ipv4_addr; flags interval;\n    \
         elements = {{ {blocked} }}\n  }}\n  \
         chain input {{\n    type filter hook input priority filter; policy drop;\n    \
         iif \"lo\" accept\n    ct state established,related accept\n  }}\n  \
         chain forward {{\n    type filter hook forward priority filter; policy drop;\n{forward}  }}\n}}\n{nat}",
        blocked = BLOCKED_V4.join(", "),
    )
}

/// The host's table, shared by every VM with internet on this host (and
/// by every node on it): nothing from a VM uplink reaches the host itself
/// (whatever its addresses), no VM reaches another, nothing from outside
/// enters a VM uplink unasked, and VM traffic leaves masqueraded behind
/// the host. `guard` (the node had to turn IPv4 forwarding on) drops every
/// other forwarded packet, so the host routes for its VMs and nothing else.
pub fn host_ruleset(pool: &Subnet, guard: bool) -> String {
    let p = HOST_IF_PREFIX;
    let guard = if guard {
        format!("    iifname != \"{p}*\" oifname != \"{p}*\" drop comment \"{GUARD_COMMENT}\"\n")
    } else {
        String::new()
    };
    // Deleting first makes the file a replacement, applied atomically.
    format!(
        "table inet zennet {{}}\ndelete table inet zennet\n\
         table ip zennet_nat {{}}\ndelete table ip zennet_nat\n\
         table inet zennet {{\n  set blocked {{\n    type ipv4_addr; flags interval;\n    \
         elements = {{ {blocked} }}\n  }}\n  \
         chain input {{\n    type filter hook input priority filter; policy accept;\n    \
         iifname \"{p}*\" drop\n  }}\n  \
         chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
         iifname \"{p}*\" oifname \"{p}*\" drop\n    \
         oifname \"{p}*\" ct state established,related accept\n    \
         oifname \"{p}*\" drop\n    \
         iifname \"{p}*\" meta nfproto ipv6 drop\n    \
         iifname \"{p}*\" ip daddr @blocked drop\n    \
         iifname \"{p}*\" accept\n{guard}  }}\n}}\n\
         table ip zennet_nat {{\n  chain postrouting {{\n    \
         type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr {pool} oifname != \"{p}*\" masquerade\n  }}\n}}\n",
        blocked = BLOCKED_V4.join(", "),
    )
}

/// Marks the rule that says the node turned forwarding on.
pub const GUARD_COMMENT: &str = "zennet turned ip_forward on";

/// `tc -batch` lines shaping `dev`'s egress to `mbps`. Packets from
/// `exempt` (the namespace's own address on the tap: the node's
/// connections to the guest's sshd, which the tunnel meters and bills
/// itself) go in a class of their own that is not held back.
pub fn shaping(dev: &str, mbps: u32, exempt: Option<Ipv4Addr>) -> String {
    let rate = u64::from(mbps.max(1)) * 1_000_000;
    let quantum = |bits: u64| (bits / 8 / 10).clamp(1514, 200_000);
    let mut lines = vec![
        format!("qdisc replace dev {dev} root handle 1: htb default 20 r2q 10"),
        format!(
            "class replace dev {dev} parent 1: classid 1:20 htb rate {rate}bit ceil {rate}bit quantum {}",
            quantum(rate)
        ),
    ];
    if let Some(src) = exempt {
        let fast: u64 = 10_000_000_000;
        lines.push(format!(
            "class replace dev {dev} parent 1: classid 1:10 htb rate {fast}bit ceil {fast}bit quantum {}",
            quantum(fast)
        ));
        lines.push(format!(
            "filter replace dev {dev} parent 1: protocol ip prio 1 u32 match ip src {src}/32 flowid 1:10"
        ));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Shaping of the guest's download: the tap's egress, the node's own
/// connections exempt.
pub fn download_shaping(mbps: u32) -> String {
    shaping(TAP, mbps, Some(GATEWAY))
}

/// Shaping of the guest's upload: the uplink's egress (only guest traffic
/// leaves by it).
pub fn upload_shaping(mbps: u32) -> String {
    shaping(UPLINK, mbps, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_namespace_forwards_nothing_and_answers_nothing() {
        let r = vm_ruleset(false);
        assert!(
            r.contains("chain input {\n    type filter hook input priority filter; policy drop;")
        );
        assert!(r.contains(
            "chain forward {\n    type filter hook forward priority filter; policy drop;\n  }"
        ));
        assert!(!r.contains("masquerade") && !r.contains(UPLINK));
    }

    #[test]
    fn internet_namespace_forwards_only_public_ipv4_and_masquerades() {
        let r = vm_ruleset(true);
        assert!(r.contains(
            "iifname \"tap0\" oifname \"eth0\" meta nfproto ipv4 ip daddr != @blocked accept"
        ));
        assert!(r.contains("oifname \"eth0\" masquerade"));
        for range in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "224.0.0.0/4",
        ] {
            assert!(r.contains(range), "{range} not blocked");
        }
        // Nothing from the uplink reaches the guest unless it asked.
        assert!(
            r.contains("iifname \"eth0\" oifname \"tap0\" ct state established,related accept")
        );
    }

    #[test]
    fn host_table_replaces_itself_and_guards_forwarding_only_when_asked() {
        let pool: Subnet = "10.213.0.0/16".parse().unwrap();
        let r = host_ruleset(&pool, false);
        assert!(r.starts_with("table inet zennet {}\ndelete table inet zennet\n"));
        assert!(r.contains("iifname \"zn*\" drop"));
        assert!(r.contains("iifname \"zn*\" oifname \"zn*\" drop"));
        assert!(r.contains("ip saddr 10.213.0.0/16 oifname != \"zn*\" masquerade"));
        assert!(!r.contains(GUARD_COMMENT));
        assert!(host_ruleset(&pool, true).contains(GUARD_COMMENT));
    }

    #[test]
    fn shaping_exempts_only_the_named_source() {
        let down = download_shaping(8);
        assert!(down.contains("classid 1:20 htb rate 8000000bit ceil 8000000bit"));
        assert!(down.contains("match ip src 10.0.2.2/32 flowid 1:10"));
        assert!(down.contains("dev tap0"));
        let up = upload_shaping(8);
        assert!(up.contains("dev eth0") && !up.contains("flowid 1:10"));
    }
}
