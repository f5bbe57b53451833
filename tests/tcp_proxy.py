"""A TCP proxy for tests: forwards to a server and cuts every open connection on demand or on a schedule."""

from __future__ import annotations

import socket
import struct
import threading


class TcpProxy:
    """Listens on 127.0.0.1:<port> and forwards each connection to (host, target_port).

    cut() resets every open connection at once (RST, as a failing switch or firewall does), in
    whatever state its transaction is; new connections are accepted again right after.
    """

    def __init__(self, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.cuts = 0
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
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
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
            self.cuts += 1
        for s in victims:
            try:  # linger 0: close sends RST, the peer sees "connection reset", not a clean end
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut_every(self, seconds: float) -> None:
        """Cut all connections every `seconds` from a background thread until close()."""

        def loop() -> None:
            while not self.closed.wait(seconds):
                self.cut()

        threading.Thread(target=loop, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
