//! The real kernel: each test applies rulesets in a fresh network namespace
//! of its own (a thread that unshared CLONE_NEWNET, so the test process's
//! namespace is untouched) and reads them back with the real `nft -j list
//! ruleset`, run from that thread so it inherits the thread's namespace.
//!
//! Needs root. Skipped (with the reason printed) when not root, or when the
//! kernel has no nf_tables outside CI; in CI (`CI` set) a kernel without
//! nf_tables fails, and so does a missing `nft` everywhere
//! (scripts/install-deps installs Debian's nftables).
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::PathBuf;
use std::process::Command;

use dstack_nftables::*;
use nix::errno::Errno;
use serde_json::{Value, json};

include!("fixtures/dstack_table.rs");

/// The guest's ruleset, with `bridge` as the one non-internal bridge.
fn dstack_table(bridge: &str) -> Table {
    dstack_table_with_bridge(bridge)
}

/// What `nft -j list ruleset` (nft 1.0.6) shows for `dstack_table(bridge)`,
/// handles left out.
fn dstack_listing(bridge: &str) -> Value {
    let chain = |name: &str, kind: &str, prio: i32, policy: &str| {
        json!({"chain": {"family": "ip", "table": "dstack", "name": name, "type": kind,
                         "hook": name, "prio": prio, "policy": policy}})
    };
    let rule = |chain: &str, expr: Value| json!({"rule": {"family": "ip", "table": "dstack", "chain": chain, "expr": expr}});
    let meta = |op: &str, key: &str, right: &str| json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}});
    json!([
        {"table": {"family": "ip", "name": "dstack"}},
        chain("postrouting", "nat", 100, "accept"),
        chain("forward", "filter", 0, "drop"),
        chain("input", "filter", 0, "accept"),
        rule("postrouting", json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.89.0.0", "len": 16}}}},
            meta("!=", "oifname", "dsn*"),
            {"masquerade": null},
        ])),
        rule("forward", json!([
            {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                       "right": ["established", "related"]}},
            {"accept": null},
        ])),
        rule("forward", json!([
            meta("==", "iifname", bridge),
            meta("!=", "oifname", "dsn*"),
            {"accept": null},
        ])),
        rule("input", json!([
            meta("==", "iifname", "eth0"),
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": 9182}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "10.0.2.2"}},
            {"accept": null},
        ])),
        rule("input", json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": 9182}},
            {"drop": null},
        ])),
    ])
}

/// Runs `f` in a thread of its own, in a new, empty network namespace that
/// goes away with the thread. None (after printing why) if the test cannot
/// run here.
fn in_fresh_netns<T: Send>(test: &str, f: impl FnOnce() -> T + Send) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root (a network namespace and CAP_NET_ADMIN)");
        return None;
    }
    nft(); // missing nft fails rather than skips
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only this thread moves: the process's other threads (and so
            // the other tests) keep the namespace they had.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            if let Some(reason) = no_nf_tables() {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test}: the kernel has no nf_tables ({reason}); CI's must"
                );
                eprintln!("SKIP {test}: the kernel has no nf_tables ({reason})");
                return None;
            }
            assert_eq!(list(), json!([]), "a fresh namespace has no ruleset");
            Some(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Why nf_tables cannot be used in this namespace, if it cannot: an empty
/// batch (BEGIN, END) asks the kernel nothing but whether it has nf_tables.
fn no_nf_tables() -> Option<String> {
    match Ruleset::new().apply() {
        Ok(()) => None,
        Err(e) if e.is_unsupported() => Some(e.to_string()),
        Err(e) => panic!("applying an empty ruleset: {e}"),
    }
}

fn nft() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
        .expect(
            "nft is not installed: Debian's nftables package (scripts/install-deps installs it)",
        )
}

/// The calling thread's namespace's ruleset, as `nft -j list ruleset`
/// shows it, without nft's metainfo and the kernel's handles.
fn list() -> Value {
    let out = Command::new(nft())
        .args(["-j", "list", "ruleset"])
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft -j list ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut listing: Value = serde_json::from_slice(&out.stdout).expect("nft's JSON");
    let Value::Array(items) = listing["nftables"].take() else {
        panic!("no nftables array: {listing}");
    };
    let items = items
        .into_iter()
        .filter(|item| item.get("metainfo").is_none())
        .map(|mut item| {
            for object in item.as_object_mut().unwrap().values_mut() {
                object.as_object_mut().unwrap().remove("handle");
            }
            item
        })
        .collect();
    Value::Array(items)
}

#[test]
fn applies_the_guest_ruleset_and_replaces_it_atomically() {
    in_fresh_netns("applies_the_guest_ruleset", || {
        Ruleset::new()
            .replace_table(dstack_table("dsn1"))
            .apply()
            .unwrap();
        assert_eq!(list(), dstack_listing("dsn1"));

        // Again: still one table, each chain and rule once.
        Ruleset::new()
            .replace_table(dstack_table("dsn1"))
            .apply()
            .unwrap();
        assert_eq!(list(), dstack_listing("dsn1"));

        // A changed ruleset replaces the old one rather than adding to it.
        Ruleset::new()
            .replace_table(dstack_table("dsn7"))
            .apply()
            .unwrap();
        assert_eq!(list(), dstack_listing("dsn7"));
    });
}

#[test]
fn a_refused_rule_leaves_the_previous_ruleset() {
    in_fresh_netns("a_refused_rule_leaves_the_previous_ruleset", || {
        Ruleset::new()
            .replace_table(dstack_table("dsn1"))
            .apply()
            .unwrap();

        // Masquerade belongs in a nat chain: the kernel refuses it in the
        // filter chain. The batch also replaces the table with another
        // bridge and adds a second table: none of it may stick.
        let mut table = dstack_table("dsn2");
        table.chains[2]
            .rules
            .push(Rule::new([], Statement::Masquerade));
        let err = Ruleset::new()
            .replace_table(Table::new(Family::Inet, "other"))
            .replace_table(table)
            .apply()
            .unwrap_err();
        eprintln!("refused as expected: {err}");
        let NftError::Rejected { request, errno, .. } = &err else {
            panic!("expected a refused request, got {err:?}");
        };
        assert_eq!(request, "add rule ip dstack input masquerade", "{err}");
        assert_eq!(*errno, Errno::EOPNOTSUPP as i32, "{err}");

        assert_eq!(list(), dstack_listing("dsn1"));
    });
}

#[test]
fn a_refused_chain_is_named() {
    in_fresh_netns("a_refused_chain_is_named", || {
        // nat chains hook prerouting, input, output and postrouting only.
        let table = Table::new(Family::Ip, "t").chain(Chain::base(
            "c",
            BaseChain {
                kind: ChainType::Nat,
                hook: Hook::Forward,
                priority: 0,
                policy: Policy::Accept,
            },
        ));
        let err = Ruleset::new().replace_table(table).apply().unwrap_err();
        eprintln!("refused as expected: {err}");
        let NftError::Rejected { request, errno, .. } = &err else {
            panic!("expected a refused request, got {err:?}");
        };
        assert_eq!(
            request,
            "add chain ip t c { type nat hook forward priority 0; policy accept; }"
        );
        assert_eq!(*errno, Errno::EOPNOTSUPP as i32, "{err}");
        assert_eq!(list(), json!([]));
    });
}

#[test]
fn a_large_ruleset_is_acked_in_full() {
    in_fresh_netns("a_large_ruleset_is_acked_in_full", || {
        // Past the default socket buffers (~200 KiB) both ways: a ~300 KiB
        // batch, and ~2000 acks queued before the first is read.
        let mut chain = Chain::regular("many");
        for i in 0..2000 {
            chain = chain.rule(Rule::new(
                [Match::Iifname(
                    CmpOp::Eq,
                    IfName::exact(&format!("dsn{i}")).unwrap(),
                )],
                Statement::Accept,
            ));
        }
        let ruleset = Ruleset::new().replace_table(Table::new(Family::Ip, "big").chain(chain));
        assert!(ruleset.to_batch(0).len() > 256 * 1024);
        ruleset.apply().unwrap();
        let listing = list();
        let rules = listing
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item.get("rule").is_some())
            .count();
        assert_eq!(rules, 2000);
    });
}
