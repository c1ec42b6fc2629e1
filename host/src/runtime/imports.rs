//! What a component imports and exports, read from its bytes before it is
//! compiled, and which imports the host grants.
//!
//! A deploy must refuse a component that imports something the host does
//! not grant with a message naming every such interface, and it must say so
//! in milliseconds, not after a Python component's 7–27 s compile ends in a
//! link error. So this module parses only the top level of the component
//! (with wasmparser, skipping nested modules and components: their code is
//! not looked at) and checks each import name against [`ALLOWED_IMPORTS`].
//!
//! Deny-by-default stubs: the interfaces of [`DENY_BY_DEFAULT`] (WASI
//! sockets) are granted only to a component that asks for them in a
//! top-level custom section named [`DENY_BY_DEFAULT_SECTION`] (UTF-8, the
//! interface names without version, separated by whitespace; the Python
//! SDK's build writes it). The host links them to a WASI context that
//! denies every use (no TCP, no UDP, no name lookup, no address passes the
//! check), so such a guest runs and its socket calls fail with
//! `access-denied`. A component that imports them without asking is
//! refused, as before.
//!
//! Versions: WASI interfaces are granted at any `0.2.x` version, including
//! pre-releases of 0.2 (wasmtime's linker resolves a semver-compatible
//! `0.2.x` import against the 0.2 release it ships); another major or minor
//! (`0.1`, `0.3`, no version) is not granted. The entity types are granted
//! at `0.1.x`. Nothing here panics on malformed bytes: they are an error.

use wasmparser::{Chunk, Encoding, Parser, Payload};

use super::{ALLOWED_IMPORTS, DENY_BY_DEFAULT};

/// The custom section in which a component lists the interfaces of
/// [`DENY_BY_DEFAULT`] it wants linked to deny-all stubs.
pub const DENY_BY_DEFAULT_SECTION: &str = "cairn:deny-by-default";

/// The top-level names of a component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Surface {
    /// Import names (`wasi:cli/stdout@0.2.3`, ...), in order.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
    /// The interfaces (no version) listed by its
    /// [`DENY_BY_DEFAULT_SECTION`] sections, in order.
    pub deny_by_default: Vec<String>,
}

/// Reads a component's top-level imports and exports. An error says why
/// the bytes are not a readable component.
pub(crate) fn surface(bytes: &[u8]) -> Result<Surface, String> {
    let mut parser = Parser::new(0);
    let mut data = bytes;
    let mut out = Surface::default();
    loop {
        let (payload, consumed) = match parser.parse(data, true) {
            Ok(Chunk::Parsed { consumed, payload }) => (payload, consumed),
            Ok(Chunk::NeedMoreData(_)) => return Err("the component is truncated".into()),
            Err(e) => return Err(e.to_string()),
        };
        data = &data[consumed..];
        match payload {
            Payload::Version { encoding, .. } if encoding != Encoding::Component => {
                return Err("it is a core module, not a component".into());
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|e| e.to_string())?;
                    out.imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| e.to_string())?;
                    out.exports.push(export.name.name.to_owned());
                }
            }
            // The outer parser is already past a nested module or
            // component: skip its bytes without parsing them.
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => {
                let len = unchecked_range.len();
                if len > data.len() {
                    return Err("a nested module runs past the end of the component".into());
                }
                data = &data[len..];
            }
            Payload::CustomSection(reader) if reader.name() == DENY_BY_DEFAULT_SECTION => {
                let text = std::str::from_utf8(reader.data())
                    .map_err(|_| format!("its `{DENY_BY_DEFAULT_SECTION}` section is not UTF-8"))?;
                out.deny_by_default
                    .extend(text.split_whitespace().map(str::to_owned));
            }
            Payload::End(_) => return Ok(out),
            _ => {}
        }
    }
}

/// Whether the host grants an import of this name (to any component;
/// see [`granted_to`] for the deny-by-default stubs).
pub fn granted(name: &str) -> bool {
    granted_in(name, ALLOWED_IMPORTS)
}

/// Whether the host grants an import of this name to a component whose
/// [`DENY_BY_DEFAULT_SECTION`] lists `deny_by_default`: an interface of
/// [`ALLOWED_IMPORTS`], or one of [`DENY_BY_DEFAULT`] that the component
/// listed (linked with every use denied), at a granted version.
pub fn granted_to(name: &str, deny_by_default: &[String]) -> bool {
    granted(name)
        || (granted_in(name, DENY_BY_DEFAULT)
            && deny_by_default
                .iter()
                .any(|asked| Some(asked.as_str()) == name.split('@').next()))
}

/// Whether `name` is one of `interfaces` at a version the host links.
fn granted_in(name: &str, interfaces: &[&str]) -> bool {
    let (base, version) = match name.split_once('@') {
        Some((b, v)) => (b, Some(v)),
        None => (name, None),
    };
    if !interfaces.contains(&base) {
        return false;
    }
    let Some(version) = version else {
        return false;
    };
    let wanted = if base.starts_with("wasi:") {
        "0.2."
    } else {
        "0.1."
    };
    version
        .strip_prefix(wanted)
        .and_then(|rest| rest.split(['-', '+']).next())
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

/// The imports of `surface` the host does not grant, in order.
pub(crate) fn refused(surface: &Surface) -> Vec<String> {
    surface
        .imports
        .iter()
        .filter(|n| !granted_to(n, &surface.deny_by_default))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_0_2_of_any_patch_is_granted_and_other_versions_are_not() {
        for ok in [
            "wasi:cli/stdout@0.2.0",
            "wasi:cli/stdout@0.2.3",
            "wasi:io/streams@0.2.9",
            "wasi:random/random@0.2.12",
            "wasi:clocks/wall-clock@0.2.42",
            "wasi:io/poll@0.2.0-rc-2023-11-10",
            "cairn:entity/types@0.1.0",
            "cairn:entity/types@0.1.7",
        ] {
            assert!(granted(ok), "{ok}");
        }
        for no in [
            "wasi:sockets/tcp@0.2.0",
            "wasi:http/types@0.2.3",
            "wasi:cli/stdout@0.3.0",
            "wasi:cli/stdout@0.1.0",
            "wasi:cli/stdout",
            "wasi:cli/stdout@0.2.",
            "wasi:cli/stdout@0.2.x",
            "cairn:entity/types@0.2.0",
            "cairn:entity/behavior@0.1.0",
            "my:own/thing@1.0.0",
            "",
            "@",
        ] {
            assert!(!granted(no), "{no}");
        }
    }

    #[test]
    fn sockets_are_granted_only_to_a_component_that_asks_for_stubs() {
        let asked: Vec<String> = DENY_BY_DEFAULT.iter().map(|s| (*s).to_owned()).collect();
        for name in [
            "wasi:sockets/tcp@0.2.9",
            "wasi:sockets/network@0.2.0",
            "wasi:sockets/ip-name-lookup@0.2.12",
        ] {
            assert!(!granted(name), "{name}");
            assert!(!granted_to(name, &[]), "{name}");
            assert!(granted_to(name, &asked), "{name}");
        }
        // Only what it lists, at a 0.2.x version, and only from the
        // deny-by-default set; the allowed imports stay granted.
        let tcp_only = ["wasi:sockets/tcp".to_owned()];
        assert!(granted_to("wasi:sockets/tcp@0.2.9", &tcp_only));
        assert!(!granted_to("wasi:sockets/udp@0.2.9", &tcp_only));
        assert!(!granted_to("wasi:sockets/tcp@0.3.0", &asked));
        assert!(!granted_to("wasi:sockets/tcp", &asked));
        let http = ["wasi:http/types".to_owned()];
        assert!(!granted_to("wasi:http/types@0.2.3", &http));
        assert!(granted_to("wasi:cli/stdout@0.2.9", &[]));
    }

    #[test]
    fn the_deny_by_default_section_is_read_from_the_top_level() {
        let section = |name: &str, data: &[u8]| {
            let mut body = vec![name.len() as u8];
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(data);
            let mut s = vec![0x00, body.len() as u8];
            s.extend_from_slice(&body);
            s
        };
        let mut c = b"\0asm\x0d\0\x01\0".to_vec();
        c.extend(section("other", b"wasi:sockets/udp"));
        c.extend(section(
            DENY_BY_DEFAULT_SECTION,
            b"wasi:sockets/tcp\nwasi:sockets/network ",
        ));
        let s = surface(&c).expect("parses");
        assert_eq!(
            s.deny_by_default,
            ["wasi:sockets/tcp", "wasi:sockets/network"]
        );
        let mut bad = b"\0asm\x0d\0\x01\0".to_vec();
        bad.extend(section(DENY_BY_DEFAULT_SECTION, b"\xff"));
        assert!(surface(&bad).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\0asm",
            b"\0asm\x0d\0\x01\0\xff\xff\xff\xff\x0f",
            b"\0asm\x01\0\0\0",
            b"not wasm at all",
        ] {
            assert!(surface(bytes).is_err(), "{bytes:?}");
        }
    }
}
