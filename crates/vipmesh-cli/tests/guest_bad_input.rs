//! A table of bad inputs through the `vipmesh` command on the guest kernel (issue #13's
//! "bad input refused whole", and the ingress bad inputs of #12).
//!
//! Setup: two LB namespaces with a valid state applied (VIP services, one dual-stack, one
//! without backends, a dnsrr service; two networks), and foreign objects planted beforehand
//! (IPVS services outside our mark ranges, iptables chains and rules in mangle, nat and
//! filter, ip6tables rules, a /32 inside our subnet), a host namespace with a Docker-like
//! foreign nat chain (where a wrongly accepted ingress would land) and a task namespace.
//! Then every bad input goes through `vipmesh apply --state F --drains D` and must:
//!
//! - exit with status 2;
//! - name, on stderr, the file, the field and the value (where there is one; errors from the
//!   JSON parser give the line and column instead of the field, as the README says);
//! - leave the kernel byte-identical: `iptables-save`, `ip6tables-save`, `ipvsadm -Sn`,
//!   `ip -o addr` in the LB namespaces; `iptables-save`, `ip6tables-save`, `ip -o addr` and
//!   `ip -o link` in the host namespace; `iptables-save` and `ip -o addr` in the task
//!   namespace (the save's `#` header lines, which carry a timestamp, left out and chain
//!   counters zeroed); the list of namespaces (`/run/netns`), and the drains file.
//!
//! Each state case is a valid base (checked: it parses) with one fault. Cases the CLI does
//! not refuse as it should are listed in [`KNOWN_DEFECTS`]: the test prints what happened to
//! them and still requires the kernel to be unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vipmesh::model::NodeState;
use vipmesh_testkit::{Requirement, Topology, require, sh_in};

/// Cases the `vipmesh` command does not yet refuse as the table requires (exit 2, field and
/// value named): name and what is wrong. Their kernel must still stay byte-identical.
const KNOWN_DEFECTS: &[(&str, &str)] = &[];

/// Upper bound on one `vipmesh` run. Not a timed assertion: a run that has not exited by
/// then is hanging (a FIFO read, a lock), which is the defect this guards against.
const HANG: Duration = Duration::from_secs(120);

/// The namespaces a state refers to.
#[derive(Debug, Clone)]
struct Names {
    lb_a: String,
    lb_b: String,
    host: String,
    task: String,
    /// Created by an ingress apply; must never appear.
    sandbox: String,
    overlay: String,
}

impl Names {
    fn placeholder() -> Names {
        Names {
            lb_a: "lba".into(),
            lb_b: "lbb".into(),
            host: "host".into(),
            task: "task1".into(),
            sandbox: "sbox".into(),
            overlay: "ovl".into(),
        }
    }
}

/// The state applied before the table: two networks, a dual-stack VIP service with ports and
/// persistence, a VIP service without backends, a dnsrr service.
fn valid_state(n: &Names) -> Value {
    json!({
        "networks": [
            {"id": "neta", "lb_netns": n.lb_a, "lb_interface": "eth0",
             "subnets": [{"subnet": "10.61.0.0/24", "lb_addr": "10.61.0.2"},
                         {"subnet": "fd61::/64", "lb_addr": "fd61::2"}],
             "fwmarks": {"first": 256, "last": 4095},
             "services": [
                {"name": "vote", "mode": {"vip": ["10.61.0.9", "fd61::9"]}, "scheduler": "wrr",
                 "ports": [{"protocol": "tcp", "port": 80}, {"protocol": "udp", "port": 53}],
                 "persistence": {"timeout_secs": 300, "netmask_prefix": 24,
                                 "netmask_prefix_v6": 64},
                 "backends": [{"addr": "10.61.0.10"}, {"addr": "10.61.0.11", "weight": 2},
                              {"addr": "fd61::10"}]},
                {"name": "web", "mode": "dnsrr", "backends": [{"addr": "10.61.0.12"}]},
                {"name": "idle", "mode": {"vip": "10.61.0.20"}}
             ]},
            {"id": "netb", "lb_netns": n.lb_b, "lb_interface": "eth0",
             "subnets": [{"subnet": "10.62.0.0/24", "lb_addr": "10.62.0.2"}],
             "fwmarks": {"first": 4096, "last": 8191},
             "services": [
                {"name": "api", "mode": {"vip": "10.62.0.9"},
                 "backends": [{"addr": "10.62.0.10"}, {"addr": "10.62.0.11"}]}
             ]}
        ],
        "options": {"drain_timeout": 30}
    })
}

/// The valid state plus a valid IPv4 ingress (never applied: each ingress case breaks it).
fn ingress_state(n: &Names) -> Value {
    let mut v = valid_state(n);
    v["ingress"] = json!({
        "node": "node1", "host_netns": n.host,
        "nodes": [{"name": "node1", "underlay": "192.168.77.11", "sandbox_addr": "10.255.0.2"},
                  {"name": "node2", "underlay": "192.168.77.12", "sandbox_addr": "10.255.0.3"}],
        "subnet": "10.255.0.0/16", "gateway": "10.255.0.1", "vni": 4096, "mtu": 1450,
        "sandbox_netns": n.sandbox, "overlay_netns": n.overlay,
        "services": [{"name": "vote",
            "ports": [{"protocol": "tcp", "published": 8080, "target": 80}],
            "tasks": [{"addr": "10.255.1.1", "node": "node1", "netns": n.task},
                      {"addr": "10.255.1.2", "node": "node2"}]}]
    });
    v
}

/// The ingress state, dual-stack.
fn ingress_v6_state(n: &Names) -> Value {
    let mut v = ingress_state(n);
    let i = &mut v["ingress"];
    i["subnet_v6"] = json!("fd55::/64");
    i["gateway_v6"] = json!("fd55::1");
    i["nodes"][0]["sandbox_addr_v6"] = json!("fd55::2");
    i["nodes"][1]["sandbox_addr_v6"] = json!("fd55::3");
    v
}

/// One input of the table.
#[derive(Debug, Clone)]
enum Input {
    /// A state file: `base` (valid) with one fault, `bad`.
    State { base: Value, bad: Value },
    /// A state file with these exact bytes.
    Bytes(Vec<u8>),
    /// `--state` names a directory.
    Dir,
    /// `--state` names a FIFO (nobody writes to it).
    Fifo,
    /// `--state /dev/zero`.
    DevZero,
    /// `--state` names a file that does not exist.
    Missing,
    /// A valid state file the caller cannot read (mode 0600, run as nobody via `setpriv`).
    Unreadable,
    /// The valid state, with a drains file of these bytes.
    Drains(Vec<u8>),
    /// The valid state, `--drains` naming a directory.
    DrainsDir,
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    input: Input,
    /// What stderr must contain (besides the file's name).
    expect: Vec<String>,
}

/// `base` with `f` applied.
fn with(base: &Value, f: impl FnOnce(&mut Value)) -> Input {
    let mut bad = base.clone();
    f(&mut bad);
    Input::State {
        base: base.clone(),
        bad,
    }
}

/// Sets `key` to `val` in the object at JSON pointer `at`.
fn put(v: &mut Value, at: &str, key: &str, val: Value) {
    v.pointer_mut(at)
        .unwrap_or_else(|| panic!("no {at} in the base"))
        .as_object_mut()
        .unwrap_or_else(|| panic!("{at} is not an object"))
        .insert(key.to_string(), val);
}

/// Appends `val` to the array at JSON pointer `at`.
fn push(v: &mut Value, at: &str, val: Value) {
    v.pointer_mut(at)
        .unwrap_or_else(|| panic!("no {at} in the base"))
        .as_array_mut()
        .unwrap_or_else(|| panic!("{at} is not an array"))
        .push(val);
}

fn case(name: &'static str, input: Input, expect: &[&str]) -> Case {
    Case {
        name,
        input,
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

const NET_A: &str = "/networks/0";
const NET_B: &str = "/networks/1";
const VOTE: &str = "/networks/0/services/0";
const IDLE: &str = "/networks/0/services/2";
const ISVC: &str = "/ingress/services/0";

/// The table.
fn cases(n: &Names) -> Vec<Case> {
    let v = valid_state(n);
    let ing = ingress_state(n);
    let ing6 = ingress_v6_state(n);
    let valid_text = serde_json::to_string_pretty(&v).unwrap();
    let mut t = vec![
        // Unknown fields, at every level.
        case(
            "unknown field: top level",
            with(&v, |b| put(b, "", "x_top", json!(1))),
            &["unknown field `x_top`", "line "],
        ),
        case(
            "unknown field: network",
            with(&v, |b| put(b, NET_A, "x_network", json!(1))),
            &["unknown field `x_network`", "line "],
        ),
        case(
            "unknown field: network subnet",
            with(&v, |b| {
                put(b, "/networks/0/subnets/1", "x_subnet", json!(1))
            }),
            &["unknown field `x_subnet`", "line "],
        ),
        case(
            "unknown field: network fwmarks",
            with(&v, |b| put(b, "/networks/1/fwmarks", "x_fwmarks", json!(1))),
            &["unknown field `x_fwmarks`", "line "],
        ),
        case(
            "unknown field: service",
            with(&v, |b| put(b, VOTE, "x_service", json!(1))),
            &["unknown field `x_service`", "line "],
        ),
        case(
            "unknown field: backend",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/backends/1",
                    "x_backend",
                    json!(1),
                )
            }),
            &["unknown field `x_backend`", "line "],
        ),
        case(
            "unknown field: port",
            with(&v, |b| {
                put(b, "/networks/0/services/0/ports/0", "x_port", json!(1))
            }),
            &["unknown field `x_port`", "line "],
        ),
        case(
            "unknown field: persistence",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/persistence",
                    "x_persist",
                    json!(1),
                )
            }),
            &["unknown field `x_persist`", "line "],
        ),
        case(
            "unknown field: options",
            with(&v, |b| put(b, "/options", "x_option", json!(1))),
            &["unknown field `x_option`", "line "],
        ),
        case(
            "unknown field: ingress",
            with(&ing, |b| put(b, "/ingress", "x_ingress", json!(1))),
            &["unknown field `x_ingress`", "line "],
        ),
        case(
            "unknown field: ingress node",
            with(&ing, |b| put(b, "/ingress/nodes/1", "x_node", json!(1))),
            &["unknown field `x_node`", "line "],
        ),
        case(
            "unknown field: ingress service",
            with(&ing, |b| put(b, ISVC, "x_isvc", json!(1))),
            &["unknown field `x_isvc`", "line "],
        ),
        case(
            "unknown field: published port",
            with(&ing, |b| {
                put(b, "/ingress/services/0/ports/0", "x_pport", json!(1))
            }),
            &["unknown field `x_pport`", "line "],
        ),
        case(
            "unknown field: ingress task",
            with(&ing, |b| {
                put(b, "/ingress/services/0/tasks/1", "x_task", json!(1))
            }),
            &["unknown field `x_task`", "line "],
        ),
        case(
            "unknown field: ingress gw_bridge",
            with(&ing, |b| {
                put(b, "/ingress", "gw_bridge", json!({"x_gw": 1}))
            }),
            &["unknown field `x_gw`", "line "],
        ),
        case(
            "unknown field: ingress timeouts",
            with(&ing, |b| {
                put(b, "/ingress", "timeouts", json!({"tcp": 900, "x_to": 1}))
            }),
            &["unknown field `x_to`", "line "],
        ),
        case(
            "unknown variant: service mode",
            with(&v, |b| put(b, IDLE, "mode", json!({"vipp": "10.61.0.20"}))),
            &["unknown variant `vipp`", "line "],
        ),
        // Newtype values out of range.
        case(
            "weight above IPVS's 65535",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/backends/1",
                    "weight",
                    json!(65536),
                )
            }),
            &["backend.weight \"65536\""],
        ),
        case(
            "weight beyond u32",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/backends/1",
                    "weight",
                    json!(4_294_967_296u64),
                )
            }),
            &["4294967296", "line "],
        ),
        case(
            "service port 0",
            with(&v, |b| {
                put(b, "/networks/0/services/0/ports/0", "port", json!(0))
            }),
            &["port \"0\""],
        ),
        case(
            "service port 65536",
            with(&v, |b| {
                put(b, "/networks/0/services/0/ports/0", "port", json!(65536))
            }),
            &["port \"65536\""],
        ),
        case(
            "fwmark range starting at 0",
            with(&v, |b| {
                put(b, NET_A, "fwmarks", json!({"first": 0, "last": 4095}))
            }),
            &["network.fwmarks \"0x0..=0xfff\""],
        ),
        case(
            "fwmark range reversed",
            with(&v, |b| {
                put(b, NET_B, "fwmarks", json!({"first": 8191, "last": 4096}))
            }),
            &["network.fwmarks \"0x1fff..=0x1000\""],
        ),
        case(
            "fwmark ranges of two networks overlap",
            with(&v, |b| {
                put(b, NET_B, "fwmarks", json!({"first": 4000, "last": 8191}))
            }),
            &["network.fwmarks", "0xfa0..=0x1fff", "overlaps"],
        ),
        case(
            "fwmark range overlaps the ingress range",
            with(&ing, |b| {
                put(
                    b,
                    NET_B,
                    "fwmarks",
                    json!({"first": 131072, "last": 135167}),
                )
            }),
            &["network.fwmarks", "0x20000..=0x20fff", "overlap"],
        ),
        case(
            "fwmark range smaller than the services needing a mark",
            with(&v, |b| {
                put(b, NET_A, "fwmarks", json!({"first": 256, "last": 256}))
            }),
            &["fwmark", "0x100..=0x100"],
        ),
        case(
            "persistence timeout 0",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/persistence",
                    "timeout_secs",
                    json!(0),
                )
            }),
            &["service.persistence.timeout_secs \"0\""],
        ),
        case(
            "persistence timeout beyond IPVS's 31 days",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/persistence",
                    "timeout_secs",
                    json!(2_678_401),
                )
            }),
            &["service.persistence.timeout_secs \"2678401\""],
        ),
        case(
            "persistence netmask prefix 33",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/persistence",
                    "netmask_prefix",
                    json!(33),
                )
            }),
            &["service.persistence.netmask_prefix \"33\""],
        ),
        case(
            "persistence IPv6 prefix 129",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/persistence",
                    "netmask_prefix_v6",
                    json!(129),
                )
            }),
            &["service.persistence.netmask_prefix_v6 \"129\""],
        ),
        case(
            "persistence IPv6 prefix 0 (the kernel rejects it)",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/persistence",
                    "netmask_prefix_v6",
                    json!(0),
                )
            }),
            &["service.persistence.netmask_prefix_v6 \"0\""],
        ),
        case(
            "subnet prefix 33",
            with(&v, |b| {
                put(b, "/networks/1/subnets/0", "subnet", json!("10.62.0.0/33"))
            }),
            &["subnet \"10.62.0.0/33\""],
        ),
        case(
            "subnet prefix 129",
            with(&v, |b| {
                put(b, "/networks/0/subnets/1", "subnet", json!("fd61::/129"))
            }),
            &["subnet \"fd61::/129\""],
        ),
        case(
            "subnet with host bits",
            with(&v, |b| {
                put(b, "/networks/1/subnets/0", "subnet", json!("10.62.0.1/24"))
            }),
            &["subnet \"10.62.0.1/24\"", "host bits"],
        ),
        case(
            "drain timeout absurd (u64::MAX seconds)",
            with(&v, |b| put(b, "/options", "drain_timeout", json!(u64::MAX))),
            &["drain_timeout", "18446744073709551615"],
        ),
        case(
            "drain timeout negative",
            with(&v, |b| put(b, "/options", "drain_timeout", json!(-1))),
            &["-1", "line "],
        ),
        // In range for JSON, out of range for the kernel.
        case(
            "IPVS scheduler unknown",
            with(&v, |b| put(b, VOTE, "scheduler", json!("fastest"))),
            &["service.scheduler \"fastest\""],
        ),
        case(
            "interface name of 16 bytes",
            with(&v, |b| {
                put(b, NET_B, "lb_interface", json!("eth0123456789abc"))
            }),
            &["network.lb_interface \"eth0123456789abc\""],
        ),
        case(
            "namespace name with a slash",
            with(&v, |b| put(b, NET_B, "lb_netns", json!("../etc"))),
            &["network.lb_netns \"../etc\""],
        ),
        case(
            "namespace name of 256 bytes",
            with(&v, |b| put(b, NET_B, "lb_netns", json!("n".repeat(256)))),
            &["network.lb_netns", "nnnnnnnn", "longer than 255"],
        ),
        case(
            "network id of 11 characters (chain names > 28 bytes)",
            with(&v, |b| put(b, NET_B, "id", json!("networkb123"))),
            &["network.id \"networkb123\""],
        ),
        case(
            "service name not a DNS label",
            with(&v, |b| put(b, IDLE, "name", json!("Idle!"))),
            &["service.name \"Idle!\""],
        ),
        case(
            "VIP outside the subnet",
            with(&v, |b| put(b, IDLE, "mode", json!({"vip": "10.99.0.20"}))),
            &["service.vip \"idle: 10.99.0.20\"", "not inside"],
        ),
        case(
            "VIP of a family the network has no subnet for",
            with(&v, |b| {
                put(
                    b,
                    "/networks/1/services/0",
                    "mode",
                    json!({"vip": "fd62::9"}),
                )
            }),
            &["service.vip \"api: fd62::9\""],
        ),
        case(
            "VIP equal to the LB address",
            with(&v, |b| put(b, IDLE, "mode", json!({"vip": "10.61.0.2"}))),
            &["service.vip \"idle: 10.61.0.2\""],
        ),
        case(
            "VIP equal to a backend address",
            with(&v, |b| put(b, IDLE, "mode", json!({"vip": "10.61.0.10"}))),
            &["service.vip \"idle: 10.61.0.10\"", "backend"],
        ),
        case(
            "LB address outside its subnet",
            with(&v, |b| {
                put(b, "/networks/1/subnets/0", "lb_addr", json!("10.99.0.2"))
            }),
            &["network.subnets.lb_addr \"netb: 10.99.0.2\""],
        ),
        case(
            "backend listed twice",
            with(&v, |b| {
                push(
                    b,
                    "/networks/1/services/0/backends",
                    json!({"addr": "10.62.0.10"}),
                )
            }),
            &["service.backends.addr \"api: 10.62.0.10\"", "twice"],
        ),
        case(
            "backend address not an IP address",
            with(&v, |b| {
                put(
                    b,
                    "/networks/1/services/0/backends/0",
                    "addr",
                    json!("10.62.0.300"),
                )
            }),
            &["10.62.0.300", "line "],
        ),
        // Duplicates.
        case(
            "duplicate service",
            with(&v, |b| {
                push(
                    b,
                    "/networks/0/services",
                    json!({"name": "web", "mode": "dnsrr"}),
                )
            }),
            &["service.name \"web\"", "two services"],
        ),
        case(
            "duplicate VIP",
            with(&v, |b| {
                push(
                    b,
                    "/networks/0/services",
                    json!({"name": "dup", "mode": {"vip": "10.61.0.9"}}),
                )
            }),
            &["service.vip \"dup: 10.61.0.9\"", "two services"],
        ),
        case(
            "duplicate network id",
            with(&v, |b| put(b, NET_B, "id", json!("neta"))),
            &["network.id \"neta\"", "two networks"],
        ),
        // Wrong types.
        case(
            "weight as a string",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/backends/1",
                    "weight",
                    json!("heavy"),
                )
            }),
            &["\"heavy\"", "line "],
        ),
        case(
            "ports as a number",
            with(&v, |b| put(b, VOTE, "ports", json!(80))),
            &["invalid type", "`80`", "line "],
        ),
        case(
            "VIP as a number",
            with(&v, |b| put(b, IDLE, "mode", json!({"vip": 42}))),
            &["`42`", "line "],
        ),
        case(
            "networks as an object",
            with(&v, |b| put(b, "", "networks", json!({}))),
            &["invalid type: map", "line "],
        ),
        case(
            "protocol unknown",
            with(&v, |b| {
                put(
                    b,
                    "/networks/0/services/0/ports/1",
                    "protocol",
                    json!("icmp"),
                )
            }),
            &["unknown variant `icmp`", "line "],
        ),
        case(
            "subnet not CIDR",
            with(&v, |b| {
                put(b, "/networks/1/subnets/0", "subnet", json!("ten.62/24"))
            }),
            &["subnet \"ten.62/24\""],
        ),
        // Broken and special files.
        case(
            "truncated JSON",
            Input::Bytes(valid_text.as_bytes()[..valid_text.len() / 2].to_vec()),
            &["EOF while parsing", "line "],
        ),
        case(
            "empty file",
            Input::Bytes(Vec::new()),
            &["EOF while parsing", "line 1 column 0"],
        ),
        case(
            "binary file (not UTF-8)",
            Input::Bytes(vec![0x7b, 0xff, 0xfe, 0x00, 0x7d]),
            &["UTF-8"],
        ),
        case("a directory", Input::Dir, &["not a regular file"]),
        case("a FIFO", Input::Fifo, &["not a regular file"]),
        case("/dev/zero", Input::DevZero, &["not a regular file"]),
        case("a missing file", Input::Missing, &["No such file"]),
        case(
            "an unreadable file (as nobody)",
            Input::Unreadable,
            &["Permission denied"],
        ),
        case(
            "drains file corrupt",
            Input::Drains(br#"{"version": 1, "started": [{"mark": 256, "#.to_vec()),
            &["drain book", "EOF while parsing"],
        ),
        case(
            "drains file from a future version",
            Input::Drains(br#"{"version": 2, "started": []}"#.to_vec()),
            &["drain book", "version 2"],
        ),
        case(
            "drains file with a bad entry",
            Input::Drains(
                br#"{"version": 1, "started": [{"mark": 256, "addr": "x", "since": 1}]}"#.to_vec(),
            ),
            &["drain book", "line "],
        ),
        case(
            "drains file empty",
            Input::Drains(Vec::new()),
            &["drain book", "EOF while parsing"],
        ),
        case(
            "drains file a directory",
            Input::DrainsDir,
            &["not a regular file"],
        ),
        // The ingress (issue #12).
        case(
            "ingress: two services publish tcp/8080",
            with(&ing, |b| {
                push(
                    b,
                    "/ingress/services",
                    json!({"name": "web2",
                       "ports": [{"protocol": "tcp", "published": 8080, "target": 8080}],
                       "tasks": [{"addr": "10.255.1.3", "node": "node2"}]}),
                )
            }),
            &["ingress.services.ports.published", "tcp/8080"],
        ),
        case(
            "ingress: published port 0",
            with(&ing, |b| {
                put(b, "/ingress/services/0/ports/0", "published", json!(0))
            }),
            &["port \"0\""],
        ),
        case(
            "ingress: published port 65536",
            with(&ing, |b| {
                put(b, "/ingress/services/0/ports/0", "published", json!(65536))
            }),
            &["port \"65536\""],
        ),
        case(
            "ingress: target port 0",
            with(&ing, |b| {
                put(b, "/ingress/services/0/ports/0", "target", json!(0))
            }),
            &["port \"0\""],
        ),
        case(
            "ingress: target port 65536",
            with(&ing, |b| {
                put(b, "/ingress/services/0/ports/0", "target", json!(65536))
            }),
            &["port \"65536\""],
        ),
        case(
            "ingress: a host-mode port already published in ingress mode",
            with(&ing, |b| {
                push(
                    b,
                    "/ingress/services",
                    json!({"name": "hostsvc",
                       "ports": [{"protocol": "tcp", "published": 8080, "target": 80,
                                  "mode": "host"}],
                       "tasks": [{"addr": "10.255.1.4", "node": "node2"}]}),
                )
            }),
            &["ingress.services.ports.published", "tcp/8080"],
        ),
        case(
            "ingress: a task on a node the cluster view does not list",
            with(&ing, |b| {
                put(b, "/ingress/services/0/tasks/1", "node", json!("node9"))
            }),
            &["ingress.services.tasks.node", "node9"],
        ),
        case(
            "ingress: two nodes with one underlay address",
            with(&ing, |b| {
                put(b, "/ingress/nodes/1", "underlay", json!("192.168.77.11"))
            }),
            &["ingress.nodes.underlay \"192.168.77.11\""],
        ),
        case(
            "ingress: subnet overlapping a service network's",
            with(&ing, |b| put(b, "/ingress", "subnet", json!("10.0.0.0/8"))),
            &["ingress.subnet", "10.0.0.0/8", "10.61.0.0/24"],
        ),
        case(
            "ingress: VNI 0",
            with(&ing, |b| put(b, "/ingress", "vni", json!(0))),
            &["ingress.vni \"0\""],
        ),
        case(
            "ingress: VNI 2^24",
            with(&ing, |b| put(b, "/ingress", "vni", json!(16_777_216))),
            &["ingress.vni \"16777216\""],
        ),
        case(
            "ingress: MTU 1279 on a dual-stack ingress",
            with(&ing6, |b| put(b, "/ingress", "mtu", json!(1279))),
            &["ingress.mtu \"1279\""],
        ),
        case(
            "ingress: this node not in the cluster view",
            with(&ing, |b| put(b, "/ingress", "node", json!("node3"))),
            &["ingress.node \"node3\""],
        ),
        case(
            "ingress: IPVS tcp timeout 0",
            with(&ing, |b| put(b, "/ingress", "timeouts", json!({"tcp": 0}))),
            &["ingress.timeouts.tcp \"0\""],
        ),
        case(
            "ingress: task interface name of 16 bytes",
            with(&ing, |b| {
                put(
                    b,
                    "/ingress/services/0/tasks/0",
                    "interface",
                    json!("eth0123456789abc"),
                )
            }),
            &["ingress.services.tasks.interface \"eth0123456789abc\""],
        ),
        case(
            "ingress: task weight above 65535",
            with(&ing, |b| {
                put(b, "/ingress/services/0/tasks/0", "weight", json!(70000))
            }),
            &["weight", "70000"],
        ),
        case(
            "ingress: sandbox namespace name with a slash",
            with(&ing, |b| put(b, "/ingress", "sandbox_netns", json!("a/b"))),
            &["ingress.sandbox_netns \"a/b\""],
        ),
    ];
    t.shrink_to_fit();
    t
}

fn file_name(c: &Case) -> String {
    let slug: String = c
        .name
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
        .collect();
    format!("{slug}.json")
}

/// Bases valid, each state case different from its base, names unique, at least 40 cases.
#[test]
fn the_bases_are_valid_and_each_case_changes_one() {
    let n = Names::placeholder();
    for base in [valid_state(&n), ingress_state(&n), ingress_v6_state(&n)] {
        NodeState::from_json(&serde_json::to_string_pretty(&base).unwrap())
            .unwrap_or_else(|e| panic!("a base of the table is invalid: {e}\n{base:#}"));
    }
    let all = cases(&n);
    assert!(all.len() >= 40, "{} cases", all.len());
    let mut names = std::collections::BTreeSet::new();
    for c in &all {
        assert!(names.insert(file_name(c)), "two cases named {}", c.name);
        assert!(!c.expect.is_empty(), "{}: expects nothing", c.name);
        if let Input::State { base, bad } = &c.input {
            assert_ne!(base, bad, "{}: the fault changes nothing", c.name);
        }
    }
    for (name, _) in KNOWN_DEFECTS {
        assert!(
            all.iter().any(|c| c.name == *name),
            "KNOWN_DEFECTS names {name:?}, which is not a case"
        );
    }
}

/// The library refuses every state case of the table with the expected text (the pure half
/// of the guest test, runnable anywhere).
#[test]
fn the_parser_refuses_every_state_case_naming_the_field() {
    let n = Names::placeholder();
    let mut wrong = Vec::new();
    for c in cases(&n) {
        let text = match &c.input {
            Input::State { bad, .. } => serde_json::to_string_pretty(bad).unwrap(),
            Input::Bytes(b) => match String::from_utf8(b.clone()) {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ => continue,
        };
        if KNOWN_DEFECTS.iter().any(|(d, _)| *d == c.name) {
            continue;
        }
        match NodeState::from_json(&text) {
            Ok(_) => wrong.push(format!("{}: accepted", c.name)),
            Err(e) => {
                let msg = e.to_string();
                for want in &c.expect {
                    if !msg.contains(want.as_str()) {
                        wrong.push(format!("{}: {msg:?} does not contain {want:?}", c.name));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The lab: namespaces, foreign objects, the valid state applied.
struct Lab {
    _topo: Topology,
    names: Names,
    dir: PathBuf,
    drains: PathBuf,
    state: PathBuf,
}

/// The command: cargo's, or `VIPMESH_BIN` (a copy, so that a rebuild during a long guest
/// run cannot swap it under the test).
fn vipmesh_bin() -> String {
    std::env::var("VIPMESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vipmesh").into())
}

impl Lab {
    fn new() -> Lab {
        require(&[
            Requirement::Netns,
            Requirement::Ipvs,
            Requirement::Tool("ipvsadm"),
            Requirement::Tool("iptables-save"),
            Requirement::Tool("ip6tables-save"),
            Requirement::Tool("setpriv"),
            Requirement::Tool("mkfifo"),
            Requirement::Tool("nsenter"),
        ]);
        vipmesh_testkit::vip::load_modules();
        let _ = Command::new("modprobe").args(["-q", "dummy"]).status();
        let mut topo = Topology::new("vb");
        let lb_a = topo.ns("lba");
        let lb_b = topo.ns("lbb");
        let host = topo.ns("host");
        let task = topo.ns("task1");
        let prefix = lb_a.trim_end_matches("-lba").to_string();
        let names = Names {
            lb_a,
            lb_b,
            host,
            task,
            sandbox: format!("{prefix}-sbox"),
            overlay: format!("{prefix}-ovl"),
        };
        let dir = topo.temp_dir("bad");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lab = Lab {
            drains: dir.join("drains.json"),
            state: dir.join("valid.json"),
            _topo: topo,
            names,
            dir,
        };
        lab.plant_foreign_objects();
        lab
    }

    /// Interfaces and addresses, and the foreign objects vipmesh must never touch.
    fn plant_foreign_objects(&self) {
        let n = &self.names;
        sh_in(
            &n.lb_a,
            "ip link add eth0 type dummy
             ip link set eth0 up
             ip addr add 10.61.0.2/24 dev eth0
             ip addr add fd61::2/64 dev eth0 nodad
             ip addr add 10.61.0.250/32 dev eth0
             ipvsadm -R <<END
-A -f 7 -s wlc
-a -f 7 -r 10.99.0.5:0 -m -w 3
-A -t 10.99.0.1:80 -s rr
-a -t 10.99.0.1:80 -r 10.99.0.6:8080 -m -w 1
END
             iptables-restore --noflush <<END
*mangle
:FOREIGN-MARK - [0:0]
-A FOREIGN-MARK -d 10.99.0.1/32 -j MARK --set-mark 7
-A PREROUTING -j FOREIGN-MARK
-A INPUT -s 10.98.0.0/16 -j RETURN
COMMIT
*nat
:FOREIGN-SNAT - [0:0]
-A FOREIGN-SNAT -s 10.98.0.0/16 -j MASQUERADE
-A POSTROUTING -j FOREIGN-SNAT
COMMIT
*filter
-A INPUT -s 10.98.0.0/16 -j DROP
COMMIT
END
             ip6tables-restore --noflush <<END
*mangle
-A INPUT -s fd98::/16 -j RETURN
COMMIT
*filter
-A INPUT -s fd98::/16 -j DROP
COMMIT
END",
        );
        sh_in(
            &n.lb_b,
            "ip link add eth0 type dummy
             ip link set eth0 up
             ip addr add 10.62.0.2/24 dev eth0
             ip addr add 10.62.0.250/32 dev eth0
             ipvsadm -A -f 9 -s rr
             ipvsadm -a -f 9 -r 10.99.0.7:0 -m
             iptables-restore --noflush <<END
*nat
:FOREIGN-SNAT - [0:0]
-A FOREIGN-SNAT -s 10.97.0.0/16 -j MASQUERADE
-A POSTROUTING -j FOREIGN-SNAT
COMMIT
END",
        );
        // The host namespace of the ingress cases: a Docker-like chain and a user's DNAT.
        sh_in(
            &n.host,
            "ip link add eth0 type dummy
             ip link set eth0 up
             ip addr add 192.168.77.11/24 dev eth0
             iptables-restore --noflush <<END
*nat
:DOCKER-INGRESS - [0:0]
-A DOCKER-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:8080
-A DOCKER-INGRESS -j RETURN
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER-INGRESS
-A PREROUTING -p tcp --dport 9999 -j DNAT --to-destination 192.168.77.99:9999
COMMIT
END",
        );
        sh_in(
            &n.task,
            "ip link add eth0 type dummy
             ip link set eth0 up
             ip addr add 10.255.1.1/16 dev eth0",
        );
    }

    /// Everything the table must leave unchanged, as text.
    fn snapshot(&self) -> String {
        let n = &self.names;
        // One shell for the whole snapshot, entering namespaces with nsenter (no mount
        // namespace work, unlike `ip netns exec`): under emulation, process starts are the
        // cost. IPVS where the networks live; links where an ingress apply would add them.
        let script = format!(
            "for ns in {a} {b}; do
               echo \"== $ns iptables-save\"; nsenter --net=/run/netns/$ns iptables-save
               echo \"== $ns ip6tables-save\"; nsenter --net=/run/netns/$ns ip6tables-save
               echo \"== $ns ipvsadm -Sn\"; nsenter --net=/run/netns/$ns ipvsadm -Sn
               echo \"== $ns ip -o addr\"; ip -n $ns -o addr
             done
             echo '== {h} iptables-save'; nsenter --net=/run/netns/{h} iptables-save
             echo '== {h} ip6tables-save'; nsenter --net=/run/netns/{h} ip6tables-save
             echo '== {h} ip -o addr'; ip -n {h} -o addr
             echo '== {h} ip -o link'; ip -n {h} -o link
             echo '== {t} iptables-save'; nsenter --net=/run/netns/{t} iptables-save
             echo '== {t} ip -o addr'; ip -n {t} -o addr",
            a = n.lb_a,
            b = n.lb_b,
            h = n.host,
            t = n.task
        );
        let out = Command::new("sh").args(["-ec", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "snapshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = String::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with('#') {
                continue; // "# Generated by iptables-save v1.8 on <date>"
            }
            s.push_str(&zero_counters(line));
            s.push('\n');
        }
        let mut nets: Vec<String> = std::fs::read_dir("/run/netns")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        nets.sort();
        s.push_str(&format!("== /run/netns\n{}\n", nets.join("\n")));
        s.push_str(&format!(
            "== drains file\n{}\n",
            std::fs::read_to_string(&self.drains).unwrap_or_else(|e| format!("({e})"))
        ));
        s
    }

    /// Writes the input of `c`; returns `(--state, --drains, run as nobody)`.
    fn prepare(&self, c: &Case) -> (PathBuf, PathBuf, bool) {
        let p = self.dir.join(file_name(c));
        let mut drains = self.drains.clone();
        let mut nobody = false;
        match &c.input {
            Input::State { bad, .. } => {
                std::fs::write(&p, serde_json::to_string_pretty(bad).unwrap()).unwrap()
            }
            Input::Bytes(b) => std::fs::write(&p, b).unwrap(),
            Input::Dir => std::fs::create_dir_all(&p).unwrap(),
            Input::Fifo => {
                let st = Command::new("mkfifo").arg(&p).status().unwrap();
                assert!(st.success(), "mkfifo {}", p.display());
            }
            Input::DevZero => return (PathBuf::from("/dev/zero"), drains, false),
            Input::Missing => {}
            Input::Unreadable => {
                std::fs::copy(&self.state, &p).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
                nobody = true;
            }
            Input::Drains(b) => {
                drains = p.with_extension("drains");
                std::fs::write(&drains, b).unwrap();
                return (self.state.clone(), drains, false);
            }
            Input::DrainsDir => {
                drains = p.with_extension("drains");
                std::fs::create_dir_all(&drains).unwrap();
                return (self.state.clone(), drains, false);
            }
        }
        (p, drains, nobody)
    }
}

/// Chain counters `[packets:bytes]` of a save, zeroed (traffic, not configuration).
fn zero_counters(line: &str) -> String {
    match (line.starts_with(':'), line.rfind(" [")) {
        (true, Some(i)) if line.ends_with(']') => format!("{} [0:0]", &line[..i]),
        _ => line.to_string(),
    }
}

/// What one run of `vipmesh` did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    hung: bool,
}

fn run_vipmesh(args: &[&str], nobody: bool) -> Run {
    let mut cmd = if nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(vipmesh_bin());
        c
    } else {
        Command::new(vipmesh_bin())
    };
    let out_dir = std::env::temp_dir();
    let stem = format!("vb-run-{}", std::process::id());
    let out_p = out_dir.join(format!("{stem}.out"));
    let err_p = out_dir.join(format!("{stem}.err"));
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > HANG {
            hung = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_p).unwrap_or_default(),
        hung,
    };
    let _ = std::fs::remove_file(out_p);
    let _ = std::fs::remove_file(err_p);
    r
}

/// Why a run does not meet the table's requirement, if it does not.
fn judge(c: &Case, file: &Path, r: &Run) -> Option<String> {
    let mut why = Vec::new();
    if r.hung {
        why.push(format!("did not exit within {} s (hangs)", HANG.as_secs()));
    }
    if r.code != Some(2) {
        why.push(format!("exit {:?}, not 2", r.code));
    }
    let shown = file.file_name().map(|f| f.to_string_lossy().into_owned());
    for want in c.expect.iter().chain(shown.as_ref()) {
        if !r.stderr.contains(want.as_str()) {
            why.push(format!("stderr does not contain {want:?}"));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn every_bad_input_exits_2_naming_the_field_and_changes_nothing() {
    let lab = Lab::new();
    let n = lab.names.clone();
    std::fs::write(
        &lab.state,
        serde_json::to_string_pretty(&valid_state(&n)).unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(&lab.state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = lab.state.to_str().unwrap();
    let d = lab.drains.to_str().unwrap();
    let first = run_vipmesh(&["apply", "--state", s, "--drains", d], false);
    assert_eq!(
        first.code,
        Some(0),
        "the valid state applies: {}{}",
        first.stdout,
        first.stderr
    );
    let again = run_vipmesh(&["apply", "--state", s, "--drains", d], false);
    assert!(
        again.code == Some(0) && again.stdout.contains("(no changes)"),
        "the valid state is applied: {}{}",
        again.stdout,
        again.stderr
    );
    let before = lab.snapshot();
    // The lab holds what the table's cases would disturb.
    for want in [
        "-A -f 7 -s wlc",
        "-A -t 10.99.0.1:80 -s rr",
        "-A -f 9 -s rr",
        "-A FOREIGN-MARK -d 10.99.0.1/32",
        "-A FOREIGN-SNAT -s 10.98.0.0/16 -j MASQUERADE",
        "DOCKER-INGRESS",
        "10.61.0.250/32",
        "10.61.0.9/32",
        "fd61::9/128",
        "10.62.0.9/32",
        "VIPMESH-neta-MARK",
        "VIPMESH-netb-MARK",
        "-a -f 257 -r 10.61.0.11:0 -m -w 2",
    ] {
        assert!(before.contains(want), "setup: no {want:?} in\n{before}");
    }

    let all = cases(&n);
    let mut failures = Vec::new();
    let mut defects_seen = Vec::new();
    let mut refused = 0;
    let table_started = Instant::now();
    for c in &all {
        let (state, drains, nobody) = lab.prepare(c);
        let st = state.to_str().unwrap();
        let dr = drains.to_str().unwrap();
        let r = run_vipmesh(&["apply", "--state", st, "--drains", dr], nobody);
        let file = if matches!(c.input, Input::Drains(_) | Input::DrainsDir) {
            &drains
        } else {
            &state
        };
        let verdict = judge(c, file, &r);
        let err_line = r.stderr.trim().replace('\n', " | ");
        eprintln!(
            "case {:<62} exit {:?}: {err_line}",
            c.name,
            r.code.map_or("signal".into(), |x| x.to_string())
        );
        let known = KNOWN_DEFECTS.iter().find(|(d, _)| *d == c.name);
        match (&verdict, known) {
            (None, None) => refused += 1,
            (None, Some(_)) => {
                refused += 1;
                eprintln!(
                    "  NOW FIXED: {:?} meets the table; remove it from KNOWN_DEFECTS",
                    c.name
                );
            }
            (Some(why), Some((_, what))) => {
                eprintln!("  KNOWN DEFECT ({what}): {why}");
                defects_seen.push(c.name);
            }
            (Some(why), None) => failures.push(format!(
                "{}: {why}\n  stdout: {}\n  stderr: {}",
                c.name, r.stdout, r.stderr
            )),
        }
        let after = lab.snapshot();
        if after != before {
            panic!(
                "case {:?} changed the kernel (exit {:?}, stderr {:?}):\n{}",
                c.name,
                r.code,
                r.stderr,
                diff(&before, &after)
            );
        }
    }
    eprintln!(
        "bad-input table: {} cases, {refused} refused as required (exit 2, file/field/value named), \
         {} known defects {:?}, {} unexpected failures; kernel byte-identical after every case \
         ({:.0} s with the snapshots)",
        all.len(),
        defects_seen.len(),
        defects_seen,
        failures.len(),
        table_started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The lines that differ, for the failure message.
fn diff(a: &str, b: &str) -> String {
    let count = |s: &str| {
        let mut m: BTreeMap<String, i32> = BTreeMap::new();
        for l in s.lines() {
            *m.entry(l.to_string()).or_default() += 1;
        }
        m
    };
    let (ca, cb) = (count(a), count(b));
    let mut out = String::new();
    for (l, n) in &ca {
        let m = cb.get(l).copied().unwrap_or(0);
        if m < *n {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for (l, n) in &cb {
        let m = ca.get(l).copied().unwrap_or(0);
        if m < *n {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, another order)\n");
    }
    out
}
