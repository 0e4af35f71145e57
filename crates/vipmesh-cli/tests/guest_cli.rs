//! The `vipmesh` command on the guest kernel: apply is idempotent, plan is a dry run,
//! status names the services, bad files exit 2 with line and column.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use vipmesh_testkit::vip::{IpFamily, VipLab};

fn vipmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vipmesh"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
#[ignore = "guest: needs the IPVS guest kernel; run by cargo xtask test"]
fn apply_plan_status_from_a_state_file() {
    let mut lab = VipLab::new(IpFamily::V4, "vote", 2);
    lab.start_servers();
    let dir = std::env::temp_dir().join(format!("vipmesh-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let drains = dir.join("drains.json");
    std::fs::write(
        &state,
        format!(
            r#"{{
  "networks": [{{"id": "lab", "lb_netns": "{lb}", "lb_interface": "eth0",
    "subnets": [{{"subnet": "10.0.0.0/24", "lb_addr": "10.0.0.2"}}],
    "fwmarks": {{"first": 259, "last": 4095}},
    "services": [
      {{"name": "vote", "mode": {{"vip": "10.0.0.9"}},
        "backends": [{{"addr": "10.0.0.10"}}, {{"addr": "10.0.0.11", "weight": 2}}]}},
      {{"name": "web", "mode": "dnsrr", "backends": [{{"addr": "10.0.0.10"}}]}}
    ]}}]
}}"#,
            lb = lab.lb
        ),
    )
    .unwrap();
    let s = state.to_str().unwrap();
    let d = drains.to_str().unwrap();

    let dry = vipmesh(&["plan", "--state", s]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("ipvs add-service FWM 259 rr (lab/vote)"),
        "{}",
        text(&dry)
    );
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), "", "plan changed nothing");

    let first = vipmesh(&["apply", "--state", s, "--drains", d]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("ipvs add-dest FWM 259 -> 10.0.0.11:0 Masq weight 2 (lab/vote)"),
        "{}",
        text(&first)
    );
    let ipvs = lab.sh(&lab.lb, "ipvsadm -Sn");
    assert!(ipvs.contains("-A -f 259 -s rr"), "{ipvs}");
    assert!(ipvs.contains("-a -f 259 -r 10.0.0.11:0 -m -w 2"), "{ipvs}");
    assert!(
        lab.http_get(&lab.client, "10.0.0.9".parse().unwrap(), 80)
            .unwrap()
            .starts_with("vote.")
    );

    // The library spawns no ip or nsenter process: the second apply runs with a PATH that
    // holds only the iptables tools.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "iptables-save",
        "iptables-restore",
        "ip6tables-save",
        "ip6tables-restore",
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-nft-save",
        "ip6tables-nft-restore",
        "xtables-nft-multi",
    ] {
        for d in ["/usr/sbin", "/sbin", "/usr/bin"] {
            let p = std::path::Path::new(d).join(tool);
            if p.exists() {
                let _ = std::os::unix::fs::symlink(&p, bin.join(tool));
                break;
            }
        }
    }
    assert!(!bin.join("ip").exists() && !bin.join("nsenter").exists());
    let second = Command::new(env!("CARGO_BIN_EXE_vipmesh"))
        .args(["apply", "--state", s, "--drains", d])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains("(no changes)") && text(&second).contains("(nothing to do)"),
        "{}",
        text(&second)
    );
    assert_eq!(lab.sh(&lab.lb, "ipvsadm -Sn"), ipvs);

    let st = vipmesh(&["status", "--state", s]);
    assert!(st.status.success(), "{}", text(&st));
    let st = text(&st);
    assert!(
        st.contains("service vote vip 10.0.0.9 fwmark 0x103"),
        "{st}"
    );
    assert!(st.contains("FWM  259 rr"), "{st}");
    assert!(st.contains("service web dnsrr -> 10.0.0.10"), "{st}");
    assert!(st.contains("match the state"), "{st}");

    // Bad input: unknown field (line and column), missing file, usage.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\n  \"networks\": [],\n  \"colour\": 1\n}").unwrap();
    let o = vipmesh(&["apply", "--state", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("line 3 column"), "{}", text(&o));
    let o = vipmesh(&["apply", "--state", "/nonexistent/state.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = vipmesh(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        lab.sh(&lab.lb, "ipvsadm -Sn"),
        ipvs,
        "bad input changed nothing"
    );
    let _ = std::fs::remove_dir_all(dir);
}
