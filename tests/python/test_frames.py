"""Raw-socket protocol checks: handshake, PING/PONG, and malformed or oversized frames closing
only the offending connection while other clients keep working."""

import socket
import struct
import uuid

import pulsar
import pytest

from conftest import make_client

CONNECTED = 3
PONG = 19


def frame(command: bytes) -> bytes:
    return struct.pack(">II", 4 + len(command), len(command)) + command


def connect_command() -> bytes:
    connect = b"\x0a\x03raw" + b"\x20\x15"  # client_version "raw", protocol_version 21
    return b"\x08\x02" + b"\x12" + bytes([len(connect)]) + connect


PING = b"\x08\x12" + b"\x92\x01\x00"  # type PING, empty CommandPing (field 18)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame_type(sock):
    head = recv_exact(sock, 8)
    assert head is not None, "connection closed while a frame was expected"
    total, cmd_size = struct.unpack(">II", head)
    rest = recv_exact(sock, total - 4)
    command = rest[:cmd_size]
    assert command[0] == 0x08
    return command[1]


def closed_by_peer(sock, timeout=5.0):
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def raw_connection(standalone):
    s = socket.create_connection(standalone.address, timeout=5)
    s.sendall(frame(connect_command()))
    assert read_frame_type(s) == CONNECTED
    return s


def round_trip(client):
    topic = f"persistent://public/default/frames-{uuid.uuid4().hex[:8]}"
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    client.create_producer(topic).send(b"still serving")
    assert consumer.receive(timeout_millis=5000).data() == b"still serving"


def test_raw_handshake_and_ping(standalone):
    s = raw_connection(standalone)
    s.sendall(frame(PING))
    assert read_frame_type(s) == PONG
    s.close()


def test_malformed_frames_close_only_that_connection(standalone):
    client = make_client(standalone.url)
    round_trip(client)
    cases = {
        "garbage command": frame(b"\xff\xff\xff\xff\xff"),
        "command_size beyond the frame": struct.pack(">II", 8, 100) + b"\x00" * 4,
        "total_size too small": struct.pack(">I", 2) + b"\x00\x00",
        "oversized frame": struct.pack(">II", 64 * 1024 * 1024, 4) + b"\x08\x02\x00\x00",
        "unknown command type": frame(b"\x08\xe7\x07"),
        "SEND with a bad magic": frame(b"\x08\x06\x32\x04\x08\x00\x10\x00") + b"\x0e\x09" + b"\x00" * 12,
    }
    for name, payload in cases.items():
        s = raw_connection(standalone)
        s.sendall(payload)
        assert closed_by_peer(s), f"{name}: the broker kept the connection open"
        s.close()
    # Something that is not even a CONNECT.
    s = socket.create_connection(standalone.address, timeout=5)
    s.sendall(frame(PING))
    assert closed_by_peer(s)
    s.close()
    round_trip(client)
    client.close()


def test_message_larger_than_the_limit_is_refused_by_the_client(client, topic):
    producer = client.create_producer(topic, batching_enabled=False, chunking_enabled=False)
    # The client learned the 5 MiB limit from CONNECTED.
    with pytest.raises(pulsar.exceptions.MessageTooBig):
        producer.send(b"x" * (6 * 1024 * 1024))
    producer.send(b"small")
