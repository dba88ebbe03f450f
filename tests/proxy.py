"""A TCP proxy on loopback for fault tests: cut, stop, stall or slow the link between a
client and a server without touching the server (the shared ones must never be stopped)."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["Proxy"]

HOST = "127.0.0.1"


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server on ``upstream`` (a port of 127.0.0.1):
    :meth:`cut` aborts every connection through it, :meth:`stop` also stops listening (an
    outage), :meth:`start` listens again on the same port; :attr:`flowing` cleared holds the
    bytes (a stall); :attr:`lag` (seconds) delays every read it forwards to the server (a
    slow link)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.lag = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.lag:
                    await asyncio.sleep(self.lag)
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    def cut(self) -> None:
        """Abort every connection (both sides see it at once: RST)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)
