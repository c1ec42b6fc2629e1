//! The compiled-code cache: machine code of deployed components kept on disk
//! (`<data_dir>/compiled/`), so that a restarted node loads a component in
//! milliseconds instead of compiling it again (a Python component carries
//! CPython: 18 MB of wasm, 7–27 s of Cranelift).
//!
//! Owns the files of that directory. An entry is two files named by its key,
//! `<component sha256>-<engine key>`:
//!
//! - `<key>.cwasm`: what [`Component::serialize`] returned;
//! - `<key>.meta`: one line, `cairn-compiled 1 <component sha256> <engine key>
//!   <length> <crc32>`, written after the code, describing it.
//!
//! The engine key is a sha256 over wasmtime's
//! [`Engine::precompile_compatibility_hash`] (target, Cranelift flags, CPU
//! features, tunables, wasm features and wasmtime's own version), so a node
//! upgraded to another wasmtime, or moved to another CPU, misses the cache
//! and compiles again; entries of other engine keys are removed when the
//! cache opens, and entries of components the node's registry no longer
//! holds when the node has restored its deployments ([`CodeCache::prune`]). Both files are written through a temporary file, fsync and
//! rename: a crash leaves an entry whole, absent, or without its `.meta`
//! (ignored, then rewritten).
//!
//! Loading is the one `unsafe` step: [`Component::deserialize_file`] maps
//! the file and runs its machine code as it is, so it must be code that
//! wasmtime produced for this engine. That holds here because (1) the node
//! reads only its own directory, and only files it named by the component's
//! sha256 and this engine's key; (2) the `.meta` must name the same key and
//! the file's exact length and CRC-32, which a torn, truncated or damaged
//! file fails; (3) wasmtime itself checks, on load, the artifact's header
//! against the engine (version, target, flags). A file that fails any check
//! is logged, removed and the component compiled again: the cache can slow
//! a load down, never fail or crash it. What is not defended against is
//! another process writing into the node's data directory with intent: it
//! could as well rewrite the journal.
//!
//! Nothing here panics; I/O errors are logged and treated as a miss.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First word of a `.meta` line, and the format's version.
const META_MAGIC: &str = "cairn-compiled";
const META_VERSION: &str = "1";

/// Where a loaded component's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeSource {
    /// Compiled from the wasm by Cranelift (no cache, or a miss).
    Compiled,
    /// Loaded from the node's compiled-code cache.
    Cache,
}

impl CodeSource {
    /// `compiled` or `cache` (as in logs).
    pub fn as_str(self) -> &'static str {
        match self {
            CodeSource::Compiled => "compiled",
            CodeSource::Cache => "cache",
        }
    }
}

/// The compiled-code cache of one engine.
pub(crate) struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

/// A [`Hasher`] that feeds sha256, so that the engine key does not depend on
/// std's `DefaultHasher` (whose algorithm may change between Rust releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        // Not used: the key is the full digest (see `engine_key`).
        0
    }
}

/// This engine's key: the first 16 bytes of a sha256 over its
/// precompile-compatibility hash, hex.
pub(crate) fn engine_key(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut h = Sha256Hasher(Sha256::new());
    h.write(META_MAGIC.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an entry was not used.
#[derive(Debug)]
enum Miss {
    /// No entry (the usual first load).
    Absent,
    /// An entry exists but fails a check.
    Bad(String),
}

impl CodeCache {
    /// Opens the cache in `dir` for `engine`, creating the directory, and
    /// removes entries written for another engine key. Never fails: a
    /// directory that cannot be created makes every store fail (logged).
    pub(crate) fn open(dir: PathBuf, engine: &Engine) -> CodeCache {
        let cache = CodeCache {
            engine_key: engine_key(engine),
            dir,
        };
        if let Err(e) = std::fs::create_dir_all(&cache.dir) {
            tracing::warn!(dir = %cache.dir.display(), error = %e, "cannot create the compiled-code cache directory");
        }
        cache.remove_stale();
        cache
    }

    fn stem(&self, hash: &str) -> String {
        format!("{hash}-{}", self.engine_key)
    }

    fn code_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{}.cwasm", self.stem(hash)))
    }

    fn meta_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{}.meta", self.stem(hash)))
    }

    /// Removes entries (and left-over temporary files) that this engine will
    /// never load: another engine key, or a crash's `.tmp`.
    fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = name.ends_with(".cwasm") || name.ends_with(".meta");
            let tmp = name.ends_with(".tmp");
            let current = name
                .rsplit_once('.')
                .and_then(|(stem, _)| stem.rsplit_once('-'))
                .is_some_and(|(_, key)| key == self.engine_key);
            if tmp || (ours && !current) {
                let _ = std::fs::remove_file(entry.path());
                tracing::info!(
                    file = name,
                    "removed a compiled-code cache file of another engine"
                );
            }
        }
    }

    /// Removes the entries of this engine whose component `keep` rejects
    /// (components no longer in the node's registry: a refused deploy's, or
    /// one whose data was removed); returns how many were removed.
    pub(crate) fn prune(&self, keep: &dyn Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((stem, ext)) = name.rsplit_once('.') else {
                continue;
            };
            let Some((hash, key)) = stem.rsplit_once('-') else {
                continue;
            };
            if !matches!(ext, "cwasm" | "meta") || key != self.engine_key || keep(hash) {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() && ext == "cwasm" {
                removed += 1;
                tracing::info!(
                    component = hash,
                    "removed the compiled code of a component no longer deployed"
                );
            }
        }
        removed
    }

    /// Loads the component of sha256 `hash` if a sound entry exists; logs
    /// and removes an entry that fails a check.
    pub(crate) fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let started = Instant::now();
        match self.try_load(engine, hash) {
            Ok(c) => {
                tracing::info!(
                    component = hash,
                    ms = started.elapsed().as_millis() as u64,
                    "component loaded from the compiled-code cache"
                );
                Some(c)
            }
            Err(Miss::Absent) => None,
            Err(Miss::Bad(why)) => {
                tracing::warn!(
                    component = hash,
                    file = %self.code_path(hash).display(),
                    reason = %why,
                    "ignoring a compiled-code cache entry; compiling again"
                );
                let _ = std::fs::remove_file(self.meta_path(hash));
                let _ = std::fs::remove_file(self.code_path(hash));
                None
            }
        }
    }

    fn try_load(&self, engine: &Engine, hash: &str) -> Result<Component, Miss> {
        let meta_path = self.meta_path(hash);
        let code_path = self.code_path(hash);
        let meta = match std::fs::read_to_string(&meta_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if code_path.exists() {
                    Err(Miss::Bad(
                        "the code has no .meta (a crash while writing it?)".into(),
                    ))
                } else {
                    Err(Miss::Absent)
                };
            }
            Err(e) => {
                return Err(Miss::Bad(format!(
                    "cannot read {}: {e}",
                    meta_path.display()
                )));
            }
        };
        let (len, crc) = self.parse_meta(&meta, hash).map_err(Miss::Bad)?;
        let code = std::fs::read(&code_path)
            .map_err(|e| Miss::Bad(format!("cannot read {}: {e}", code_path.display())))?;
        if code.len() as u64 != len {
            return Err(Miss::Bad(format!(
                "length {} differs from the {len} bytes written",
                code.len()
            )));
        }
        let actual = crc32fast::hash(&code);
        if actual != crc {
            return Err(Miss::Bad(format!(
                "checksum {actual:08x} differs from the {crc:08x} written"
            )));
        }
        drop(code);
        // SAFETY: `deserialize_file` requires a file that wasmtime's
        // `serialize` produced (its code runs as it is). This one is: it
        // lies in the node's own cache directory under the name of this
        // component's sha256 and this engine's key, both repeated in its
        // `.meta`, which this node wrote after the code, with the code's
        // exact length and CRC-32, checked just above; wasmtime checks the
        // header's version and flags against the engine. See the module
        // documentation for what this does not defend against.
        unsafe { Component::deserialize_file(engine, &code_path) }
            .map_err(|e| Miss::Bad(format!("wasmtime refused it: {e:#}")))
    }

    /// Checks a `.meta` line against the key; returns (length, crc32).
    fn parse_meta(&self, meta: &str, hash: &str) -> Result<(u64, u32), String> {
        let f: Vec<&str> = meta.split_whitespace().collect();
        let [magic, version, h, key, len, crc] = f.as_slice() else {
            return Err(format!("malformed .meta {meta:?}"));
        };
        if *magic != META_MAGIC || *version != META_VERSION {
            return Err(format!("unknown .meta format {magic} {version}"));
        }
        if *h != hash || *key != self.engine_key {
            return Err(format!(
                ".meta names {h}-{key}, expected {hash}-{}",
                self.engine_key
            ));
        }
        let len = len.parse().map_err(|_| format!("bad length {len:?}"))?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum {crc:?}"))?;
        Ok((len, crc))
    }

    /// Writes the compiled code of component `hash`; a failure is logged
    /// (the next load compiles again) and returned for tests.
    pub(crate) fn store(&self, hash: &str, component: &Component) -> Option<Duration> {
        let started = Instant::now();
        let r = (|| -> Result<(), String> {
            let code = component.serialize().map_err(|e| format!("{e:#}"))?;
            let meta = format!(
                "{META_MAGIC} {META_VERSION} {hash} {} {} {:08x}\n",
                self.engine_key,
                code.len(),
                crc32fast::hash(&code)
            );
            // The code first, then the line that vouches for it.
            write_atomic(&self.code_path(hash), &code)?;
            write_atomic(&self.meta_path(hash), meta.as_bytes())?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                let took = started.elapsed();
                tracing::info!(
                    component = hash,
                    ms = took.as_millis() as u64,
                    "compiled code written to the cache"
                );
                Some(took)
            }
            Err(e) => {
                tracing::warn!(component = hash, error = %e, "could not write the compiled-code cache");
                None
            }
        }
    }
}

/// Temporary file, fsync, rename, directory fsync.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Unique per process and write: two loads of one component at once
    // each write a file of their own (the last rename wins; both are whole).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small real component, encoded by hand (no `wat` in the dependency
    /// graph): `(component (core module (func (export "f") (result i32)
    /// i32.const 7)))`.
    fn component_bytes() -> Vec<u8> {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.extend_from_slice(&[0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f]); // type: () -> i32
        module.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]); // func 0: type 0
        module.extend_from_slice(&[0x07, 0x05, 0x01, 0x01, b'f', 0x00, 0x00]); // export "f"
        module.extend_from_slice(&[0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x07, 0x0b]); // code
        let mut c = b"\0asm\x0d\0\x01\0".to_vec();
        c.push(0x01); // core module section
        c.push(module.len() as u8);
        c.extend_from_slice(&module);
        c
    }

    fn setup() -> (tempfile::TempDir, Engine, CodeCache, String, Component) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::default();
        let cache = CodeCache::open(dir.path().join("compiled"), &engine);
        let bytes = component_bytes();
        let hash = crate::registry::sha256_hex(&bytes);
        let component = Component::new(&engine, &bytes).expect("a valid component");
        (dir, engine, cache, hash, component)
    }

    #[test]
    fn a_stored_component_loads_back_and_another_hash_misses() {
        let (_dir, engine, cache, hash, component) = setup();
        assert!(cache.load(&engine, &hash).is_none(), "empty cache");
        assert!(cache.store(&hash, &component).is_some());
        let loaded = cache.load(&engine, &hash).expect("a hit");
        assert_eq!(
            loaded.serialize().expect("serialize"),
            component.serialize().expect("serialize")
        );
        assert!(cache.load(&engine, &"0".repeat(64)).is_none());
        // A second cache on the same directory (the next process) hits too.
        let again = CodeCache::open(cache.dir.clone(), &engine);
        assert!(again.load(&engine, &hash).is_some());
    }

    #[test]
    fn pruning_keeps_what_is_deployed_and_other_files() {
        let (_dir, engine, cache, hash, component) = setup();
        assert!(cache.store(&hash, &component).is_some());
        let gone = "ab".repeat(32);
        assert!(cache.store(&gone, &component).is_some());
        let foreign = cache.dir.join("notes.txt");
        std::fs::write(&foreign, b"not ours").unwrap();
        assert_eq!(cache.prune(&|h| h == hash), 1);
        assert!(
            cache.load(&engine, &hash).is_some(),
            "the deployed one stays"
        );
        assert!(!cache.code_path(&gone).exists() && !cache.meta_path(&gone).exists());
        assert!(foreign.exists(), "a file that is no entry is left alone");
        assert_eq!(cache.prune(&|h| h == hash), 0);
    }

    #[test]
    fn damaged_truncated_or_unvouched_files_are_ignored_and_removed() {
        let (_dir, engine, cache, hash, component) = setup();
        let code = cache.code_path(&hash);
        let meta = cache.meta_path(&hash);
        type Damage = fn(&Path, &Path);
        let damages: [(&str, Damage); 6] = [
            ("a flipped byte", |code, _| {
                let mut b = std::fs::read(code).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
                std::fs::write(code, b).unwrap();
            }),
            ("a truncated file", |code, _| {
                let b = std::fs::read(code).unwrap();
                std::fs::write(code, &b[..b.len() / 3]).unwrap();
            }),
            ("garbage of the right length and checksum", |code, meta| {
                let b = vec![0xAB; std::fs::read(code).unwrap().len()];
                let m = std::fs::read_to_string(meta).unwrap();
                let mut f: Vec<String> = m.split_whitespace().map(str::to_owned).collect();
                f[5] = format!("{:08x}", crc32fast::hash(&b));
                std::fs::write(code, b).unwrap();
                std::fs::write(meta, f.join(" ")).unwrap();
            }),
            ("no .meta", |_, meta| std::fs::remove_file(meta).unwrap()),
            ("a .meta of another engine", |_, meta| {
                let m = std::fs::read_to_string(meta).unwrap();
                let mut f: Vec<String> = m.split_whitespace().map(str::to_owned).collect();
                f[3] = "0".repeat(32);
                std::fs::write(meta, f.join(" ")).unwrap();
            }),
            ("a malformed .meta", |_, meta| {
                std::fs::write(meta, "cairn-compiled 1 x").unwrap()
            }),
        ];
        for (what, damage) in damages {
            cache.store(&hash, &component).expect("stored");
            damage(&code, &meta);
            assert!(cache.load(&engine, &hash).is_none(), "{what} was loaded");
            assert!(!code.exists() && !meta.exists(), "{what} was kept");
            // And the next store repairs the entry.
            cache.store(&hash, &component).expect("stored");
            assert!(cache.load(&engine, &hash).is_some(), "after {what}");
        }
    }

    #[test]
    fn another_engine_configuration_misses_and_its_entries_are_pruned() {
        let (dir, engine, cache, hash, component) = setup();
        cache.store(&hash, &component).expect("stored");
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).expect("engine");
        assert_ne!(engine_key(&engine), engine_key(&other));
        let other_cache = CodeCache::open(dir.path().join("compiled"), &other);
        assert!(other_cache.load(&other, &hash).is_none());
        assert!(
            !cache.code_path(&hash).exists(),
            "the entry of the other engine is removed when the cache opens"
        );
        assert_eq!(engine_key(&engine), engine_key(&Engine::default()));
    }
}
