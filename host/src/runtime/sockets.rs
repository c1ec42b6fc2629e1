//! The deny-all WASI sockets of a behavior (see
//! [`DENY_BY_DEFAULT`](super::DENY_BY_DEFAULT)).
//!
//! `add_to_linker_sync` links wasmtime-wasi's sockets, and the behavior's
//! `WasiCtx` allows no TCP, no UDP, no name lookup and no address. That is
//! enough for `tcp-create-socket` and `ip-name-lookup` (they fail at once),
//! but the synchronous `udp-create-socket` runs its check inside
//! `wasmtime_wasi::runtime::in_tokio`, which panics on a tokio worker (where
//! guest calls run inline). So both socket constructors are redefined here
//! (the linker allows shadowing for that step only) to return
//! `access-denied` without entering wasmtime-wasi or tokio: no socket
//! resource can exist, so no other socket function can be reached with one.
//! Name lookups stay with wasmtime-wasi, whose denial is immediate.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddressFamily, Network};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket, UdpSocket};

/// The view the redefined constructors work on: the store's resource table
/// (only for the `network` functions their bindings require).
pub(crate) struct DenySockets<'a> {
    pub table: &'a mut ResourceTable,
}

/// [`HasData`] marker for [`DenySockets`].
struct HasDenySockets;

impl HasData for HasDenySockets {
    type Data<'a> = DenySockets<'a>;
}

/// Redefines `wasi:sockets/tcp-create-socket` and
/// `wasi:sockets/udp-create-socket` in `linker` (after `add_to_linker_sync`)
/// so that every socket creation is denied; `get` gives the view of a
/// store's data.
pub(crate) fn deny_socket_creation<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> DenySockets<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = tcp_create_socket::add_to_linker::<T, HasDenySockets>(linker, get)
        .and_then(|()| udp_create_socket::add_to_linker::<T, HasDenySockets>(linker, get));
    linker.allow_shadowing(false);
    r
}

impl network::Host for DenySockets<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        let err = self.table.get(&err)?;
        Ok(err.downcast_ref::<std::io::Error>().map(ErrorCode::from))
    }
}

impl network::HostNetwork for DenySockets<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl tcp_create_socket::Host for DenySockets<'_> {
    fn create_tcp_socket(
        &mut self,
        _address_family: IpAddressFamily,
    ) -> SocketResult<Resource<TcpSocket>> {
        Err(ErrorCode::AccessDenied.into())
    }
}

impl udp_create_socket::Host for DenySockets<'_> {
    fn create_udp_socket(
        &mut self,
        _address_family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(ErrorCode::AccessDenied.into())
    }
}
