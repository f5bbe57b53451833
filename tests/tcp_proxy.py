"""A TCP proxy for tests: forwards to a server and cuts every open connection on demand or after every n bytes sent."""

from __future__ import annotations

import socket
import struct
import threading


class TcpProxy:
    """Listens on 127.0.0.1:<port> and forwards each connection to (host, target_port).

    cut() resets every open connection at once (RST, as a failing switch or firewall does), in
    whatever state its transaction is; new connections are accepted again right after. cuts counts
    the cuts that reset at least one connection; sent counts the bytes clients have sent.
    """

    def __init__(self, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.cuts = 0
        self.sent = 0
        self._cut_at: int | None = None  # cut_every_bytes: the next cut once sent reaches this
        self._cut_step = 0
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if from_client:
                    with self.lock:
                        self.sent += len(data)
                        due = self._cut_at is not None and self.sent >= self._cut_at
                        if due:
                            self._cut_at = self.sent + self._cut_step
                    if due:  # right after forwarding: the statement is in flight when its connection resets
                        self.cut()
        except OSError:
            pass
        finally:
            with self.lock:
                self.open = [s for s in self.open if s is not src and s is not dst]
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        with self.lock:
            victims, self.open = self.open, []
            self.cuts += bool(victims)
        for s in victims:
            try:  # linger 0: close sends RST, the peer sees "connection reset", not a clean end
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut_every_bytes(self, n: int) -> None:
        """Cut all connections each time clients have sent another n bytes: how often the network fails
        follows the traffic, not the clock, so a faster machine sees as many cuts in the same run."""
        with self.lock:
            self._cut_step, self._cut_at = n, self.sent + n

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
