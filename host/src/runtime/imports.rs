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
//! Versions: WASI interfaces are granted at any `0.2.x` version, including
//! pre-releases of 0.2 (wasmtime's linker resolves a semver-compatible
//! `0.2.x` import against the 0.2 release it ships); another major or minor
//! (`0.1`, `0.3`, no version) is not granted. The entity types are granted
//! at `0.1.x`. Nothing here panics on malformed bytes: they are an error.

use wasmparser::{Chunk, Encoding, Parser, Payload};

use super::ALLOWED_IMPORTS;

/// The top-level names of a component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Surface {
    /// Import names (`wasi:cli/stdout@0.2.3`, ...), in order.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
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
            Payload::End(_) => return Ok(out),
            _ => {}
        }
    }
}

/// Whether the host grants an import of this name.
pub fn granted(name: &str) -> bool {
    let (base, version) = match name.split_once('@') {
        Some((b, v)) => (b, Some(v)),
        None => (name, None),
    };
    if !ALLOWED_IMPORTS.contains(&base) {
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
        .filter(|n| !granted(n))
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
