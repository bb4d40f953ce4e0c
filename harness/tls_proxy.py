"""TLS in front of a plain TCP service, for testing Kafka clients with TLS against the embedded broker.

    proxy = TlsProxy(server_context(certs)).start()    # listens at once, on a port the kernel chose
    broker = start_broker(log, advertised=proxy.address)
    proxy.upstream = ("127.0.0.1", broker.port)
    ...                                                 # clients use proxy.address with TLS
    proxy.stop()

Tansu 0.6.0 cannot take a certificate and a key together, so TLS is terminated here: each client
connection is a TLS handshake (with a client certificate when the context requires one), then bytes
are copied both ways to the upstream. The broker advertises the proxy's address, so every
connection a client makes after the bootstrap one goes through TLS too.

`handshakes_refused` lists why a handshake failed (a client that does not trust the server's CA,
a client without a certificate, a plaintext client); `connections` counts the ones that passed.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

__all__ = ["TlsProxy", "server_context"]


def server_context(certfile: str, keyfile: str, client_cafile: str | None = None) -> ssl.SSLContext:
    """The proxy's TLS side: its certificate; with `client_cafile`, clients must show a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    if client_cafile:
        ctx.load_verify_locations(client_cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


class TlsProxy:
    """Terminates TLS on `host:port` and forwards the bytes to `upstream` (host, port), on its own thread."""

    HANDSHAKE_TIMEOUT_S = 10.0

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1"):
        self.context = context
        self.host = host
        self.port: int | None = None
        self.upstream: tuple[str, int] | None = None
        self.connections = 0
        self.handshakes_refused: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "TlsProxy":
        """Listen on a port of the kernel's choosing (bound here, so no other process can race for it)."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def _close():
            self._server.close()
            await self._server.wait_closed()

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=self.HANDSHAKE_TIMEOUT_S)
        except (ssl.SSLError, OSError, TimeoutError) as e:
            self.handshakes_refused.append(f"{type(e).__name__}: {e}")
            writer.transport.abort()
            return
        if self.upstream is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self.connections += 1
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
