//! Fuzzes the two parsers of vipmesh-xdp: the BTF reader (layout checks) and the packet
//! checker used by the fixtures. Neither may panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vipmesh_xdp::btf::parse_structs(data);
    let _ = vipmesh_xdp::btf::check_layout(data);
    let _ = vipmesh_xdp::btf::btf_section(data);
    let _ = vipmesh_testkit::packet::check(data);
});
