"""A userspace TCP relay that adds round-trip time (not a test; issue 17's latency benchmark).

    .venv/bin/python benchmarks/delayrelay.py --listen 127.0.0.1:PORT --target 127.0.0.1:PORT --rtt-ms 40

Every byte is forwarded in both directions ``rtt/2`` later than it was read (asyncio timers,
~1 ms granularity), without a bandwidth limit: a far but fast link. This kernel has tbf/htb but
not netem, hence a userspace relay. Each accepted connection gets its own connection to the
target, so several associations can go through it at once. TCP_NODELAY on every socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            try:
                data = await reader.read(1 << 20)
            except ConnectionError:
                data = b""
            chunks.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def write() -> None:
        while True:
            due, data = await chunks.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    with contextlib.suppress(ConnectionError):
        await asyncio.gather(read(), write())


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(listen: tuple[str, int], target: tuple[str, int], rtt: float) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(*target)
        except OSError:
            c_writer.close()
            return
        _nodelay(c_writer)
        _nodelay(t_writer)
        try:
            await asyncio.gather(_pipe(c_reader, t_writer, rtt / 2), _pipe(t_reader, c_writer, rtt / 2))
        finally:
            for w in (c_writer, t_writer):
                w.close()

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=_addr, required=True, help="HOST:PORT to accept on")
    ap.add_argument("--target", type=_addr, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--rtt-ms", type=float, required=True, help="round-trip time added, ms")
    args = ap.parse_args()
    asyncio.run(serve(args.listen, args.target, args.rtt_ms / 1000.0))


if __name__ == "__main__":
    main()
