//! The guest's `wasi:io/streams` and `wasi:io/poll`, replaced so that no
//! guest call can block a host thread or panic inside the host.
//!
//! wasmtime-wasi's synchronous p2 bindings run every blocking stream
//! operation (and the stream destructors, `poll`, `pollable.block` and
//! `pollable.ready`) through `wasmtime_wasi::runtime::in_tokio`, which calls
//! `Handle::block_on`: on a tokio worker that panics ("Cannot start a runtime
//! from within a runtime"), and on a plain thread a guest's sleep would
//! really sleep, beyond the reach of the epoch deadline. This module
//! redefines those interfaces (the linker allows shadowing just for it) with
//! functions that never block and never enter tokio:
//!
//! - writes to stdout and stderr (the only output streams a behavior can
//!   reach: no files, no sockets) are appended to [`CallIo`], a buffer of
//!   the store bounded at [`OUTPUT_CAP`] bytes per call; the rest is
//!   counted and dropped, and the write still succeeds. The runtime logs
//!   the captured bytes after the call.
//! - reading stdin, `poll`, `pollable.block` and `pollable.ready` (which is
//!   how a sleep arrives) trap, after noting in [`CallIo::blocked`] what the
//!   guest attempted, so the call fails with a clear message.
//!
//! It owns no state besides the per-call [`CallIo`] and never does I/O.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

/// Output bytes kept per guest call (stdout and stderr together) from its
/// start.
pub(crate) const OUTPUT_CAP: usize = 4096;

/// Output bytes kept from the end of a call that wrote more than
/// [`OUTPUT_CAP`]: what a guest writes last (an exception's traceback, a
/// panic message) is what says why it failed.
pub(crate) const TAIL_CAP: usize = 1024;

/// Longest last output line quoted in a trap's message.
const LAST_LINE_CAP: usize = 300;

/// Lines a language runtime prints after the message when it aborts, which
/// say nothing of why: Rust's panic hook's hint, SpiderMonkey's abort.
const EPILOGUES: &[&str] = &[
    "note: run with `RUST_BACKTRACE",
    "Redirecting call to abort() to mozalloc_abort",
];

/// What stream writes report as writable at once: the guest's libc writes
/// in chunks of at most this.
const WRITE_PERMIT: u64 = 4096;

/// The I/O record of one guest call, kept in the store.
#[derive(Debug, Default)]
pub(crate) struct CallIo {
    /// Output written by the guest, up to [`OUTPUT_CAP`] bytes.
    pub out: Vec<u8>,
    /// The last output bytes past `out`, up to [`TAIL_CAP`].
    pub tail: Vec<u8>,
    /// Output bytes dropped: neither in `out` nor in `tail`.
    pub dropped: u64,
    /// The blocking operation the guest attempted, if any (it trapped).
    pub blocked: Option<&'static str>,
}

impl CallIo {
    /// Forgets the previous call.
    pub(crate) fn reset(&mut self) {
        self.out.clear();
        self.tail.clear();
        self.dropped = 0;
        self.blocked = None;
    }

    /// Whether the call wrote nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.out.is_empty() && self.tail.is_empty() && self.dropped == 0
    }

    fn capture(&mut self, bytes: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.out.len());
        let kept = bytes.len().min(room);
        self.out.extend_from_slice(&bytes[..kept]);
        let rest = &bytes[kept..];
        if rest.len() >= TAIL_CAP {
            self.dropped += (self.tail.len() + rest.len() - TAIL_CAP) as u64;
            self.tail.clear();
            self.tail.extend_from_slice(&rest[rest.len() - TAIL_CAP..]);
        } else {
            self.tail.extend_from_slice(rest);
            self.trim_tail();
        }
    }

    fn capture_zeroes(&mut self, len: u64) {
        let room = OUTPUT_CAP.saturating_sub(self.out.len()) as u64;
        let kept = len.min(room);
        self.out.resize(self.out.len() + kept as usize, 0);
        let rest = len - kept;
        if rest >= TAIL_CAP as u64 {
            self.dropped += self.tail.len() as u64 + rest - TAIL_CAP as u64;
            self.tail.clear();
            self.tail.resize(TAIL_CAP, 0);
        } else {
            self.tail.resize(self.tail.len() + rest as usize, 0);
            self.trim_tail();
        }
    }

    fn trim_tail(&mut self) {
        if self.tail.len() > TAIL_CAP {
            let excess = self.tail.len() - TAIL_CAP;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The kept output as text for the log: the start, then (when the call
    /// wrote more than fits) a note of the bytes dropped and the end.
    pub(crate) fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.out).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!("\n[... {} bytes not kept ...]\n", self.dropped));
        }
        text.push_str(&String::from_utf8_lossy(&self.tail));
        text.trim_end().to_owned()
    }

    /// The line that says why a failed call failed, if the guest wrote
    /// anything: the last non-blank line, past the epilogues language
    /// runtimes print when they abort ([`EPILOGUES`]); when that ends a
    /// SpiderMonkey `Stack:` block, the line above the block (at most
    /// [`LAST_LINE_CAP`] characters). Quoted in the message of a trap.
    pub(crate) fn last_line(&self) -> Option<String> {
        let last = if self.tail.is_empty() {
            &self.out
        } else {
            &self.tail
        };
        let text = String::from_utf8_lossy(last);
        let mut lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim_start().is_empty())
            .collect();
        while lines
            .last()
            .is_some_and(|l| EPILOGUES.iter().any(|e| l.trim_start().starts_with(e)))
        {
            lines.pop();
        }
        // componentize-js: "<message>\nStack:\n  frame@file:line:col\n...".
        let frames = lines
            .iter()
            .rev()
            .take_while(|l| l.starts_with([' ', '\t']))
            .count();
        if frames > 0 && lines.len() > frames + 1 && lines[lines.len() - frames - 1] == "Stack:" {
            lines.truncate(lines.len() - frames - 1);
        }
        let line = lines.last()?.trim();
        let mut chars = line.chars();
        let mut quoted: String = chars.by_ref().take(LAST_LINE_CAP).collect();
        if chars.next().is_some() {
            quoted.push_str("...");
        }
        Some(quoted)
    }

    /// Records a blocking attempt and returns the trap that ends the call.
    fn block(&mut self, what: &'static str) -> wasmtime::Error {
        self.blocked = Some(what);
        wasmtime::Error::msg(blocking_message(what))
    }
}

/// The message of a call that attempted blocking I/O.
pub(crate) fn blocking_message(what: &str) -> String {
    format!("the guest attempted to {what}: behaviors have no blocking I/O")
}

/// What the guest attempted when it waited on a pollable.
const WAIT: &str = "sleep or wait (wasi:io/poll)";
/// What the guest attempted when it read an input stream.
const READ: &str = "read stdin";

/// The view the replaced interfaces work on: the store's resource table and
/// the call's I/O record.
pub(crate) struct GuestIo<'a> {
    pub table: &'a mut ResourceTable,
    pub io: &'a mut CallIo,
}

impl GuestIo<'_> {
    fn output(&mut self, stream: &Resource<DynOutputStream>) -> StreamResult<()> {
        self.table
            .get(stream)
            .map(|_| ())
            .map_err(|e| StreamError::Trap(e.into()))
    }

    fn read_trap(&mut self) -> StreamError {
        StreamError::Trap(self.io.block(READ))
    }
}

/// [`HasData`] marker for [`GuestIo`].
pub(crate) struct HasGuestIo;

impl HasData for HasGuestIo {
    type Data<'a> = GuestIo<'a>;
}

/// Redefines `wasi:io/streams` and `wasi:io/poll` in `linker` (after
/// `add_to_linker_sync`), with `get` giving the view of a store's data.
pub(crate) fn shadow_blocking_io<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> GuestIo<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = poll::add_to_linker::<T, HasGuestIo>(linker, get)
        .and_then(|()| streams::add_to_linker::<T, HasGuestIo>(linker, get));
    linker.allow_shadowing(false);
    r
}

impl streams::Host for GuestIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        <ResourceTable as streams::Host>::convert_stream_error(self.table, err)
    }
}

impl streams::HostOutputStream for GuestIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        // The streams are wasmtime-wasi's sinks: dropping needs no flush.
        self.table.delete(stream)?;
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        self.output(&stream)?;
        Ok(WRITE_PERMIT)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        self.output(&stream)?;
        self.io.capture(&bytes);
        Ok(())
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        self.output(&stream)?;
        self.io.capture(&bytes);
        Ok(())
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.output(&stream)?;
        self.io.capture_zeroes(len);
        Ok(())
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        <ResourceTable as streams::HostOutputStream>::subscribe(self.table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        self.output(&stream)?;
        self.io.capture_zeroes(len);
        Ok(())
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        self.output(&stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        self.output(&stream)
    }

    fn splice(
        &mut self,
        _dst: Resource<DynOutputStream>,
        _src: Resource<DynInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Err(self.read_trap())
    }

    fn blocking_splice(
        &mut self,
        _dst: Resource<DynOutputStream>,
        _src: Resource<DynInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Err(self.read_trap())
    }
}

impl streams::HostInputStream for GuestIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }

    fn read(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<Vec<u8>> {
        Err(self.read_trap())
    }

    fn blocking_read(
        &mut self,
        _stream: Resource<DynInputStream>,
        _len: u64,
    ) -> StreamResult<Vec<u8>> {
        Err(self.read_trap())
    }

    fn skip(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<u64> {
        Err(self.read_trap())
    }

    fn blocking_skip(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<u64> {
        Err(self.read_trap())
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        <ResourceTable as streams::HostInputStream>::subscribe(self.table, stream)
    }
}

impl poll::Host for GuestIo<'_> {
    fn poll(&mut self, _pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Err(self.io.block(WAIT))
    }
}

impl poll::HostPollable for GuestIo<'_> {
    fn ready(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Err(self.io.block(WAIT))
    }

    fn block(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Err(self.io.block(WAIT))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        <ResourceTable as poll::HostPollable>::drop(self.table, pollable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded_and_counts_the_rest() {
        let mut io = CallIo::default();
        io.capture(&[b'a'; 3000]);
        io.capture(&[b'b'; 3000]);
        io.capture_zeroes(10);
        assert_eq!(io.out.len(), OUTPUT_CAP);
        assert_eq!(io.tail.len(), TAIL_CAP);
        assert_eq!(io.dropped, 6010 - (OUTPUT_CAP + TAIL_CAP) as u64);
        assert!(io.tail.ends_with(&[0; 10]) && io.tail[TAIL_CAP - 11] == b'b');
        io.capture_zeroes(u64::MAX / 2);
        assert_eq!(io.tail.len(), TAIL_CAP);
        io.reset();
        assert!(io.is_empty() && io.blocked.is_none());
    }

    #[test]
    fn the_end_of_a_long_output_is_kept_with_its_last_line() {
        let mut io = CallIo::default();
        for i in 0..20_000 {
            io.capture(format!("line {i}\n").as_bytes());
        }
        io.capture(
            b"Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero\n\n",
        );
        let text = io.text();
        assert!(text.starts_with("line 0\nline 1\n"), "{text}");
        assert!(text.contains(" bytes not kept ...]"), "{text}");
        assert!(
            text.ends_with("ZeroDivisionError: division by zero"),
            "{text}"
        );
        assert!(text.len() < OUTPUT_CAP + TAIL_CAP + 64);
        assert_eq!(
            io.last_line().as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        let mut panic = CallIo::default();
        panic.capture(b"thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n");
        assert_eq!(panic.last_line().as_deref(), Some("boom"));
        let mut js = CallIo::default();
        js.capture(b"about to throw\ninvalid variant tag value `undefined` (received `RangeError: bad range`) specified for `CommandError`\nStack:\n  export_behavior_0_1_0$decide@/tmp/2b0c/sources/initializer.js:451:17\n\nRedirecting call to abort() to mozalloc_abort\n");
        assert_eq!(
            js.last_line().as_deref(),
            Some(
                "invalid variant tag value `undefined` (received `RangeError: bad range`) specified for `CommandError`"
            )
        );
        let mut short = CallIo::default();
        short.capture(b"one\ntwo\n");
        assert_eq!(short.text(), "one\ntwo");
        assert_eq!(short.last_line().as_deref(), Some("two"));
        let mut long = CallIo::default();
        long.capture(&[b'x'; 500]);
        assert_eq!(long.last_line().map(|l| l.len()), Some(LAST_LINE_CAP + 3));
        assert_eq!(CallIo::default().last_line(), None);
    }
}
