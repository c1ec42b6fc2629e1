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

/// Output bytes kept per guest call (stdout and stderr together).
pub(crate) const OUTPUT_CAP: usize = 4096;

/// What stream writes report as writable at once: the guest's libc writes
/// in chunks of at most this.
const WRITE_PERMIT: u64 = 4096;

/// The I/O record of one guest call, kept in the store.
#[derive(Debug, Default)]
pub(crate) struct CallIo {
    /// Output written by the guest, up to [`OUTPUT_CAP`] bytes.
    pub out: Vec<u8>,
    /// Output bytes dropped past the cap.
    pub dropped: u64,
    /// The blocking operation the guest attempted, if any (it trapped).
    pub blocked: Option<&'static str>,
}

impl CallIo {
    /// Forgets the previous call.
    pub(crate) fn reset(&mut self) {
        self.out.clear();
        self.dropped = 0;
        self.blocked = None;
    }

    fn capture(&mut self, bytes: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.out.len());
        let kept = bytes.len().min(room);
        self.out.extend_from_slice(&bytes[..kept]);
        self.dropped += (bytes.len() - kept) as u64;
    }

    fn capture_zeroes(&mut self, len: u64) {
        let room = OUTPUT_CAP.saturating_sub(self.out.len()) as u64;
        let kept = len.min(room);
        self.out.resize(self.out.len() + kept as usize, 0);
        self.dropped += len - kept;
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
        assert_eq!(io.dropped, 6010 - OUTPUT_CAP as u64);
        io.reset();
        assert!(io.out.is_empty() && io.dropped == 0 && io.blocked.is_none());
    }
}
