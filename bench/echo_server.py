"""The ceiling for any switch on this machine: a bare uvloop server that splits ISO 8583 frames
(2-byte length) and writes every complete frame straight back, doing nothing else.

    python -m onecard.bench.echo_server --port 9584
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            size = int.from_bytes(buf[pos:pos + 2], "big")
            if len(buf) - pos - 2 < size:
                break
            pos += 2 + size
        if pos:
            self.transport.write(bytes(buf[:pos]))
            del buf[:pos]


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, host, port)
    print(f"echo: listening iso8583 {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    print("echo: ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9584)
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
