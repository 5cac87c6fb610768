"""A TCP relay on loopback that can cut its links the way a dead network does: no FIN, no RST.

`cut()` stops passing bytes on every link, both ways, and holds the sockets open; connections made
during the cut are accepted and held the same way (libpq then waits for an answer that never
comes). `heal()` lets new connections through again while the links held so far stay silent, as
after a NAT or firewall lost its state: whoever was using an old link must notice and drop it.

The relay's own kernel still acknowledges what it is sent, so TCP keepalives and tcp_user_timeout
see a healthy peer: only the application can tell that its answer is not coming.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpRelay:
    """Forwards 127.0.0.1:`port` to `target`, one pair of threads per link."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cut = False
        self._held: set[socket.socket] = set()  # sockets of links that pass nothing, ever again
        self._sockets: list[socket.socket] = []
        self._stopped = threading.Event()
        self.links = 0  # connections accepted so far
        self._accepting = threading.Thread(target=self._accept, name="relay accept", daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        """From now on, nothing passes on the links open so far, nor on new ones."""
        with self._lock:
            self._cut = True
            self._held.update(self._sockets)

    def heal(self) -> None:
        """New links pass again; the ones held so far stay silent."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._accepting.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.links += 1
                self._sockets.append(client)
                if self._cut:  # accepted (the kernel did that already) and never answered
                    self._held.add(client)
                    continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, link: socket.socket) -> None:
        while not self._stopped.is_set():
            with self._lock:
                held = link in self._held
            if held:  # leave the bytes where they are: neither read nor answered
                self._stopped.wait(0.1)
                continue
            try:
                ready, _, _ = select.select([source], [], [], 0.1)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return
