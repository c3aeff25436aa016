"""The fleet server's HTTP socket: accepted connections get ``TCP_NODELAY``.

Before, ``bind_socket`` made a protocol-0 socket; asyncio sets ``TCP_NODELAY`` only on
sockets whose protocol says TCP, so every answer (headers and body written apart) waited for
the client's delayed ACK: about 48 ms per enrolment (bench/enrol.py, docs/scaling.md)."""

from __future__ import annotations

import asyncio
import socket

from fleet_server.serve import bind_socket


def test_connections_accepted_on_the_server_socket_have_nagle_off() -> None:
    listener = bind_socket("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    port = listener.getsockname()[1]
    seen: list[int] = []

    async def scenario() -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(scenario())
    assert seen and seen[0] != 0
