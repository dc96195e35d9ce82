"""A TCP proxy that makes a link slow and breaks it, for tests and benchmarks of a client
(the forwarding gateway) and its upstream: listens on an ephemeral 127.0.0.1 port and
relays each connection to a target host and port.

- `latency_ms`: every chunk reaches the other side that much later, in each direction. The
  delay is a queue (each chunk is stamped when read and written when its time comes), so a
  link with latency still carries a stream at full speed: only the first byte is late.
- `cut_every_bytes`: once about that many bytes (drawn per connection between 50 % and
  150 % of it, from a generator seeded with `seed`) have gone upstream on a connection,
  both sides are reset (RST, not FIN), mid-PDU more often than not.
- `lose_reply`: the share of cut connections (drawn per connection) where the cut waits:
  what crosses the budget goes through whole, and both sides are reset as soon as the
  upstream answers, the answer dropped. A request that arrived, whose response was lost:
  the case that makes a client send something again that the upstream already has.
- End of stream is relayed as a half-close (after the latency, like the data): the other
  direction goes on until its end of stream too; a reset on one side resets the other.
- `accepted`, `cuts` and `replies_lost` count connections accepted, connections cut, and
  those of them cut on a reply.

Every connection is served on one asyncio loop in one background thread; `stop()` resets
the connections still open, closes the listener and joins the thread. Use it as a context
manager, or `start()` / `stop()`."""

import asyncio
import random
import socket
import struct
import threading

CHUNK = 64 * 1024
# Chunks read but not yet written, per direction: the link's capacity (at most 16 MiB).
# When it is full the proxy stops reading, so a slow reader slows the sender (TCP's flow
# control goes through the proxy).
IN_FLIGHT = 256


class Cut(Exception):
    """The proxy cut the connection on purpose."""


class FlakyProxy:
    def __init__(self, target_host: str, target_port: int, latency_ms: float = 0,
                 cut_every_bytes: int | None = None, lose_reply: float = 0.0, seed: int = 0):
        self.target = (target_host, target_port)
        self.latency = latency_ms / 1000
        self.cut_every_bytes = cut_every_bytes
        self.lose_reply = lose_reply
        self.rng = random.Random(seed)
        self.accepted = 0
        self.cuts = 0
        self.replies_lost = 0
        self.host, self.port = "127.0.0.1", None
        self._loop = self._thread = self._server = None
        self._closing = False

    def __enter__(self) -> "FlakyProxy":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> "FlakyProxy":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"flakyproxy-{self.target[1]}",
                                        daemon=True)
        self._thread.start()
        try:
            self._server = self._call(asyncio.start_server(self._serve, self.host, 0))
        except BaseException:
            self._end_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self):
        if not self._thread:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._end_loop()

    def _end_loop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the proxy's loop did not stop")
        self._loop.close()
        self._thread = None

    def _call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self):
        """Stop accepting, reset every connection, and let the loop run the transports'
        last callbacks (the sockets are closed in them)."""
        self._closing = True
        self._server.close()
        await self._server.wait_closed()
        while tasks := asyncio.all_tasks() - {asyncio.current_task()}:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        """One connection: relay both ways until both have ended, or reset both."""
        if self._closing:
            reset(client_w)
            return
        self.accepted += 1
        cut = None
        if self.cut_every_bytes:
            cut = Budget(max(1, round(self.cut_every_bytes * self.rng.uniform(0.5, 1.5))),
                         self.rng.random() < self.lose_reply)
        upstream_w = None
        clean = False
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
            pipes = [asyncio.create_task(self._pipe(client_r, upstream_w, cut, upstream=True)),
                     asyncio.create_task(self._pipe(upstream_r, client_w, cut, upstream=False))]
            try:
                done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
            errors = [p.exception() for p in done if not p.cancelled() and p.exception()]
            if any(isinstance(e, Cut) for e in errors):
                self.cuts += 1
                self.replies_lost += cut.lose_reply
            clean = not errors
        except OSError:
            pass  # the target refused, or a side reset: reset the other
        except asyncio.CancelledError:
            pass  # stop(): reset both (and end normally: asyncio 3.11 logs a cancelled callback)
        finally:
            for w in (client_w, upstream_w):
                if w is None:
                    continue
                if clean:
                    w.close()
                else:
                    reset(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: "Budget | None",
                    upstream: bool):
        """Relay one direction through a delay queue until end of stream, relayed as a
        half-close; raise Cut where `cut` says."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(IN_FLIGHT)

        async def read():
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError as e:
                    data = e
                if data and not upstream and cut and cut.spent:
                    data = Cut()  # the reply to what crossed the budget: lost
                await queue.put((loop.time() + self.latency, data))
                if not isinstance(data, bytes) or not data:
                    return

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if isinstance(data, Exception):
                    raise data
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if upstream and cut and not cut.spent and cut.sent + len(data) >= cut.budget:
                    cut.spent = True
                    if not cut.lose_reply:
                        writer.write(data[:cut.budget - cut.sent])
                        writer.transport.set_write_buffer_limits(0)  # out to the kernel, then cut
                        await writer.drain()
                        raise Cut()
                writer.write(data)
                await writer.drain()
                if upstream and cut:
                    cut.sent += len(data)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


class Budget:
    """When to cut one connection: after `budget` bytes upstream, at once or (`lose_reply`)
    when the upstream's next bytes come back."""

    def __init__(self, budget: int, lose_reply: bool):
        self.budget, self.lose_reply = budget, lose_reply
        self.sent = 0
        self.spent = False


def reset(writer: asyncio.StreamWriter):
    """Close a connection with a reset (RST): the peer sees ECONNRESET, not an end of stream."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
