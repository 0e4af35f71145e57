//! The large cluster of the `scale` example and the `layout` bench: one network and N
//! services of 10 backends each.
#![allow(dead_code)]

/// The network `demo`, balanced in namespace `lb_netns`, with room for 10 000+ marks.
pub fn net(lb_netns: &str) -> String {
    format!(
        r#"{{"id": "demo", "lb_netns": "{lb_netns}", "lb_interface": "eth0",
    "subnets": [{{"subnet": "10.0.0.0/8", "lb_addr": "10.0.0.2"}}],
    "fwmarks": {{"first": 256, "last": 131071}}}}"#
    )
}

/// The `i`th address of 10.0.0.0/8.
pub fn addr(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// Service `i`: VIP 10.0.x.y, backends from 10.1.0.0 on (`generation` shifts them).
pub fn svc(i: u32, generation: u32) -> String {
    let backends: Vec<String> = (0..10)
        .map(|b| {
            format!(
                r#"{{"addr": "{}"}}"#,
                addr((1 << 16) + i * 10 + b + generation * 200_000)
            )
        })
        .collect();
    format!(
        r#"{{"name": "s{i}", "mode": {{"vip": ["{}"]}}, "backends": [{}]}}"#,
        addr(16 + i),
        backends.join(",")
    )
}
