//! A minimal reader of BTF ([kernel doc](https://docs.kernel.org/bpf/btf.html)): struct sizes
//! and member offsets, to check the Rust mirrors in [`abi`](crate::abi) against the compiled
//! object. Pure; never panics on any input (fuzzed by `fuzz_targets/xdp_btf.rs`).

use std::collections::BTreeMap;

use crate::Error;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// A struct as BTF describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtfStruct {
    /// Size in bytes.
    pub size: u32,
    /// Members: name and byte offset (bitfields report the byte holding their first bit).
    pub members: Vec<(String, u32)>,
}

fn bad(offset: usize, reason: &'static str) -> Error {
    Error::BtfParse { offset, reason }
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Error> {
    let end = off
        .checked_add(4)
        .ok_or_else(|| bad(off, "offset overflow"))?;
    let s = b.get(off..end).ok_or_else(|| bad(off, "truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn cstr(strings: &[u8], off: u32) -> Result<String, Error> {
    let start = off as usize;
    let rest = strings
        .get(start..)
        .ok_or_else(|| bad(start, "string offset out of range"))?;
    let len = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| bad(start, "unterminated string"))?;
    Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
}

/// Parses the raw `.BTF` section and returns every named struct.
///
/// # Errors
///
/// [`Error::BtfParse`] naming the byte offset when the data is truncated, not little-endian BTF,
/// or has an unknown type kind.
pub fn parse_structs(btf: &[u8]) -> Result<BTreeMap<String, BtfStruct>, Error> {
    if btf.len() < 24 {
        return Err(bad(0, "shorter than the BTF header"));
    }
    if u16::from_le_bytes([btf[0], btf[1]]) != MAGIC {
        return Err(bad(0, "bad magic (not little-endian BTF)"));
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let type_off = u32_at(btf, 8)? as usize;
    let type_len = u32_at(btf, 12)? as usize;
    let str_off = u32_at(btf, 16)? as usize;
    let str_len = u32_at(btf, 20)? as usize;
    let section = |off: usize, len: usize| -> Result<&[u8], Error> {
        let start = hdr_len
            .checked_add(off)
            .ok_or_else(|| bad(4, "offset overflow"))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| bad(4, "length overflow"))?;
        btf.get(start..end)
            .ok_or_else(|| bad(start, "section out of range"))
    };
    let types = section(type_off, type_len)?;
    let strings = section(str_off, str_len)?;
    let mut out = BTreeMap::new();
    let mut pos = 0usize;
    while pos < types.len() {
        let name_off = u32_at(types, pos)?;
        let info = u32_at(types, pos + 4)?;
        let size = u32_at(types, pos + 8)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let body = pos + 12;
        let extra = match kind {
            1 | 14 | 17 => 4,
            2 | 7..=12 | 16 | 18 => 0,
            3 => 12,
            4 | 5 | 15 | 19 => vlen * 12,
            6 | 13 => vlen * 8,
            _ => return Err(bad(pos, "unknown BTF kind")),
        };
        if kind == KIND_STRUCT && name_off != 0 {
            let mut members = Vec::with_capacity(vlen.min(1024));
            for i in 0..vlen {
                let m = body + i * 12;
                let mname = cstr(strings, u32_at(types, m)?)?;
                let raw = u32_at(types, m + 8)?;
                let bits = if kind_flag { raw & 0x00ff_ffff } else { raw };
                members.push((mname, bits / 8));
            }
            out.insert(cstr(strings, name_off)?, BtfStruct { size, members });
        }
        pos = body
            .checked_add(extra)
            .ok_or_else(|| bad(pos, "type length overflow"))?;
    }
    Ok(out)
}

/// Checks that every struct in [`abi::layouts`](crate::abi::layouts) has the size and member
/// offsets that the object's BTF declares.
///
/// # Errors
///
/// [`Error::LayoutMismatch`] naming the struct and field, or [`Error::BtfParse`].
pub fn check_layout(btf: &[u8]) -> Result<(), Error> {
    check_structs(&parse_structs(btf)?)
}

fn check_structs(structs: &BTreeMap<String, BtfStruct>) -> Result<(), Error> {
    for (name, size, fields) in crate::abi::layouts() {
        let s = structs.get(name).ok_or_else(|| Error::LayoutMismatch {
            structure: name,
            field: "<struct>",
            rust: size,
            c: None,
        })?;
        if s.size as usize != size {
            return Err(Error::LayoutMismatch {
                structure: name,
                field: "<size>",
                rust: size,
                c: Some(s.size as usize),
            });
        }
        if s.members.len() != fields.len() {
            return Err(Error::LayoutMismatch {
                structure: name,
                field: "<member count>",
                rust: fields.len(),
                c: Some(s.members.len()),
            });
        }
        for ((fname, off), (cname, coff)) in fields.iter().zip(&s.members) {
            if fname != cname || *off != *coff as usize {
                return Err(Error::LayoutMismatch {
                    structure: name,
                    field: fname,
                    rust: *off,
                    c: Some(*coff as usize),
                });
            }
        }
    }
    Ok(())
}

/// Extracts the `.BTF` section from an ELF object.
///
/// # Errors
///
/// [`Error::BtfParse`] when the bytes are not an ELF object or have no `.BTF` section.
pub fn btf_section(elf: &[u8]) -> Result<Vec<u8>, Error> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).map_err(|_parse| bad(0, "not an ELF object"))?;
    let sec = file
        .section_by_name(".BTF")
        .ok_or_else(|| bad(0, "no .BTF section"))?;
    sec.data()
        .map(<[u8]>::to_vec)
        .map_err(|_data| bad(0, "unreadable .BTF section"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(parse_structs(&[]).is_err());
        assert!(parse_structs(&[0u8; 24]).is_err());
        let mut h = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        h.extend_from_slice(&[0, 0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0]);
        // one type of an unknown kind 31
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x1f, 0, 0, 0, 0, 0]);
        assert!(matches!(parse_structs(&h), Err(Error::BtfParse { .. })));
    }

    #[cfg(vipmesh_object)]
    #[test]
    fn abi_matches_the_compiled_object() {
        let btf = btf_section(crate::OBJECT).unwrap();
        let structs = parse_structs(&btf).unwrap();
        assert!(structs.contains_key("vm_rev_vips"), "{:?}", structs.keys());
        check_layout(&btf).unwrap();
    }

    #[cfg(vipmesh_object)]
    #[test]
    fn drift_is_detected() {
        let btf = btf_section(crate::OBJECT).unwrap();
        let mut structs = parse_structs(&btf).unwrap();
        check_structs(&structs).unwrap();
        structs.get_mut("vm_flow").unwrap().members[1].1 += 4;
        let err = check_structs(&structs).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LayoutMismatch {
                    structure: "vm_flow",
                    field: "backend",
                    ..
                }
            ),
            "{err}"
        );
        structs.get_mut("vm_flow").unwrap().members[1].1 -= 4;
        structs.get_mut("vm_backend").unwrap().size += 4;
        assert!(matches!(
            check_structs(&structs),
            Err(Error::LayoutMismatch {
                structure: "vm_backend",
                field: "<size>",
                ..
            })
        ));
    }
}
