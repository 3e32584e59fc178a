"""A TCP relay that behaves like a long network path, for round-trip benchmarks.

    python bench/delay_relay.py LISTEN_PORT TARGET_PORT RTT_MS

Each new connection's first bytes are held for one round trip (the TCP handshake a real
path would cost, hidden here by loopback), then every chunk is delivered half a round
trip after it arrived, in order, in each direction. Loopback only.
"""

from __future__ import annotations

import asyncio
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, not_before: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(deliver())
    last_due = 0.0
    try:
        while True:
            data = await reader.read(65536)
            due = max(loop.time(), not_before) + delay
            last_due = max(last_due, due)  # in order: never overtake an earlier chunk
            await queue.put((last_due, data or None))
            if not data:
                break
        await task
    except (ConnectionError, OSError):
        task.cancel()


async def handle(client_reader, client_writer, target_port: int, rtt: float) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pump(client_reader, server_writer, rtt / 2, started + rtt),
        pump(server_reader, client_writer, rtt / 2, 0.0),
        return_exceptions=True,
    )
    for w in (client_writer, server_writer):
        w.close()


async def main(listen_port: int, target_port: int, rtt_ms: float) -> None:
    rtt = rtt_ms / 1000.0
    server = await asyncio.start_server(lambda r, w: handle(r, w, target_port, rtt), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
