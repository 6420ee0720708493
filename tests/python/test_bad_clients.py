"""Clients that misbehave at scale: thousands of idle connections cost the broker little memory
and do not slow anyone else down; connections that never send CONNECT are closed."""

import resource
import socket

from conftest import Standalone, make_client
from test_frames import CONNECTED, closed_by_peer, connect_command, frame, read_frame_type, round_trip

IDLE = 2000


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_thousands_of_idle_connections_cost_little_and_stall_nothing(tmp_path, monkeypatch):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE * 2 + 256
    assert hard >= want, f"the open-files limit {hard} is below {want}: raise it (ulimit -Hn)"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    # Connections that never send CONNECT are closed after the handshake timeout.
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    sockets = []
    try:
        client = make_client(s.url)
        round_trip(client)
        before = rss_bytes(s.proc.pid)
        for _ in range(IDLE):
            sock = socket.create_connection(s.address, timeout=10)
            sock.sendall(frame(connect_command()))
            sockets.append(sock)
        for sock in sockets:
            assert read_frame_type(sock) == CONNECTED
        grown = rss_bytes(s.proc.pid) - before
        print(f"{IDLE} idle connections: RSS +{grown / 1024 / 1024:.1f} MiB")
        assert grown < IDLE * 64 * 1024, f"{IDLE} idle connections grew the broker by {grown} bytes"
        # Everyone else is still served at once.
        round_trip(client)
        # A connection that says nothing is closed (handshake timeout), idle or not.
        silent = socket.create_connection(s.address, timeout=5)
        assert closed_by_peer(silent, timeout=60), "a connection without CONNECT stayed open"
        silent.close()
        client.close()
    finally:
        for sock in sockets:
            sock.close()
        s.stop()
