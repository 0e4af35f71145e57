//! Fuzz the IPVS netlink reply parser: any bytes either fail with an offset inside the
//! input, or parse to a message that emits back to bytes that parse to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipmesh_ipvs::codec::{Emit, IpvsMessage, IpvsNlMessage, wire};
use vipmesh_ipvs::{DestEntry, Family, ServiceEntry};

fuzz_target!(|data: &[u8]| {
    // one whole message
    match IpvsNlMessage::parse(data) {
        Ok(m) => {
            let bytes = m.to_bytes().expect("a parsed message emits");
            let again = IpvsNlMessage::parse(&bytes).expect("emitted bytes parse");
            assert_eq!(again.message, m.message);
            for a in m.message.cmd_attrs() {
                match a {
                    vipmesh_ipvs::codec::CmdAttr::Service(_, s) => {
                        let _ = ServiceEntry::from_attrs(s);
                    }
                    vipmesh_ipvs::codec::CmdAttr::Dest(_, d) => {
                        let _ = DestEntry::from_attrs(Family::Inet, d);
                    }
                    _ => {}
                }
            }
        }
        Err(e) => assert!(e.offset <= data.len()),
    }
    // a recv buffer of back-to-back messages
    for m in wire::messages(data) {
        match m {
            Ok((_, body, off)) => {
                let _ = IpvsMessage::parse(body, off);
            }
            Err(e) => {
                assert!(e.offset <= data.len());
                break;
            }
        }
    }
});
