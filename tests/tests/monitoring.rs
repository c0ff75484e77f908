//! What an operator's monitoring reads, checked with Prometheus' own
//! tools: a real node's `/metrics` (behind the API token) parses with
//! `promtool check metrics` and says what the JSON API says; the shipped
//! alert rules pass `promtool check rules` and their unit tests; the
//! Grafana dashboard asks only for series a node exports. The market
//! test (`market.rs`) checks contract and VM series and the webhook on a
//! real paused VM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use zennet_tests::{TestHome, homes_on_one_chain, promtool, wait_until};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

/// `GET /metrics` with `token`: the status and body.
fn scrape(home: &TestHome, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::blocking::Client::new().get(format!("{}/metrics", home.api()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

/// The value of the unlabelled `series` in Prometheus text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn a_node_serves_metrics_promtool_reads_and_only_with_its_token() {
    let mut home = homes_on_one_chain(1).remove(0);
    home.start_node(&["--mine"]);
    wait_until(Duration::from_secs(30), "height 3", || home.height() >= 3);

    // A local process (or a guest) without the token reads nothing.
    for token in [None, Some("0".repeat(64).as_str())] {
        let (status, body) = scrape(&home, token);
        assert_eq!(status, 401, "{body}");
        assert!(!body.contains("zennet_"), "{body}");
    }

    let token = home.api_token();
    let (status, text) = scrape(&home, Some(&token));
    assert_eq!(status, 200);
    promtool(&["check", "metrics"], &text);
    let info: Value = home.json(&["chain", "info"]);
    let height = value(&text, "zennet_chain_height").unwrap();
    let api_height = info["height"].as_u64().unwrap() as f64;
    // Mining goes on between the two reads.
    assert!(
        (api_height - 2.0..=api_height).contains(&height),
        "metrics {height}, API {api_height}"
    );
    assert_eq!(value(&text, "zennet_chain_mining"), Some(1.0));
    assert_eq!(value(&text, "zennet_chain_peers"), Some(0.0));
    let free = value(&text, "zennet_home_disk_free_bytes").unwrap();
    let size = value(&text, "zennet_home_disk_size_bytes").unwrap();
    assert!(free > 0.0 && free <= size, "{free} of {size}");
    assert_eq!(
        value(&text, "zennet_fs_files"),
        Some(0.0),
        "the file network is on in every node"
    );
    home.stop_node();
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let rules = dir.join("zennet.rules.yml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    let tests = dir.join("zennet.rules.test.yml");
    promtool(&["test", "rules", tests.to_str().unwrap()], "");

    // The example scrape config is valid once its token file exists.
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("api_token");
    std::fs::write(&token, "t").unwrap();
    let config = std::fs::read_to_string(dir.join("prometheus.yml"))
        .unwrap()
        .replace("/var/lib/zennet/api_token", token.to_str().unwrap());
    std::fs::copy(&rules, tmp.path().join("zennet.rules.yml")).unwrap();
    let path = tmp.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    promtool(&["check", "config", path.to_str().unwrap()], "");
}

/// Every metric an expression of the dashboard or the rules names is one
/// the node exports (a renamed metric would leave a panel empty and an
/// alert silent).
#[test]
fn the_dashboard_and_rules_ask_only_for_exported_series() {
    let exported = exported_names();
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/zennet-node.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 12, "{} panels' queries", exprs.len());
    let rules = std::fs::read_to_string(deploy().join("prometheus/zennet.rules.yml")).unwrap();
    exprs.push(rules);
    let mut asked = BTreeSet::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("zennet_") {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| exported.contains(*b))
                    .unwrap_or(word);
                asked.insert(base.to_string());
            }
        }
    }
    let missing: Vec<_> = asked.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}

/// The metric names the node's code defines (`"name"` literals in the
/// metrics module and the provider's live stats), with the prefix.
fn exported_names() -> BTreeSet<String> {
    let root = deploy().parent().unwrap().to_path_buf();
    let mut names = BTreeSet::new();
    for f in ["cli/src/observe/metrics.rs", "provider/src/stats.rs"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let is_name = !piece.is_empty()
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && piece.contains('_');
            if is_name {
                names.insert(format!("zennet_{piece}"));
            }
        }
    }
    assert!(names.contains("zennet_contract_unpaid"), "{names:?}");
    names
}
