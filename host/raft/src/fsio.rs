//! Small durable-file helpers shared by the log, the vote, the committed
//! index and the snapshot: a framed record (`len u32 LE | crc32 u32 LE |
//! payload`) and an atomic replace (write a temp file, fsync it, rename it
//! over the old one, fsync the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Bytes of a record header: length and CRC-32, both little-endian u32.
pub(crate) const HEADER: usize = 8;

/// Largest payload a record may hold (a sanity bound against a garbage
/// length field; a snapshot of the cluster state is far smaller).
pub(crate) const MAX_RECORD: usize = 256 << 20;

/// Appends one framed record holding `payload` to `out`.
pub(crate) fn frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One framed record holding `payload`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    frame_into(&mut out, payload);
    out
}

/// Reads the record at the start of `buf`: its payload and the bytes it
/// took, or `None` if the record is torn (too short) or fails its checksum.
pub(crate) fn unframe(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = buf.get(HEADER..HEADER.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, HEADER + len))
}

/// Fsyncs a directory, so that a rename or a new file in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically and durably: temp file,
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Reads the single framed record of `dir/name`: `Ok(None)` if the file does
/// not exist, an `InvalidData` error if it is torn or corrupt.
pub(crate) fn read_single(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(dir.join(name)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match unframe(&bytes) {
        Some((payload, used)) if used == bytes.len() => Ok(Some(payload.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: torn or corrupt record", dir.join(name).display()),
        )),
    }
}

/// Writes `value` (postcard, framed) to `dir/name` atomically.
pub(crate) fn write_value<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> io::Result<()> {
    let payload = postcard::to_allocvec(value).map_err(io::Error::other)?;
    write_atomic(dir, name, &frame(&payload))
}

/// Reads a value written by [`write_value`].
pub(crate) fn read_value<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> io::Result<Option<T>> {
    match read_single(dir, name)? {
        None => Ok(None),
        Some(payload) => postcard::from_bytes(&payload)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_damage() {
        let f = frame(b"hello");
        assert_eq!(unframe(&f), Some((&b"hello"[..], f.len())));
        assert_eq!(unframe(&f[..f.len() - 1]), None);
        let mut bad = f.clone();
        bad[9] ^= 1;
        assert_eq!(unframe(&bad), None);
        assert_eq!(unframe(&[0xff; 8]), None);
        assert_eq!(unframe(&[]), None);
    }
}
