"""A raw HTTP/2 client for abuse tests: real TLS with a valid client certificate, then
frames written by hand (hyperframe + hpack), whatever h2 itself would refuse to send."""

from __future__ import annotations

import socket
import ssl
import time

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawH2:
    def __init__(self, port: int, certs, timeout: float = 10.0) -> None:
        context = ssl.create_default_context(cafile=certs.path("ca.pem"))
        context.load_cert_chain(certs.path("client.pem"), certs.path("client.key"))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="fluidity-server")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder = Encoder()
        self.buffer = b""
        self.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, data: bytes) -> bool:
        """False once the server has stopped listening (reset or closed)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return False

    def send_frames(self, frames, batch: int = 200) -> bool:
        frames = list(frames)
        for start in range(0, len(frames), batch):
            if not self.send(b"".join(f.serialize() for f in frames[start : start + batch])):
                return False
        return True

    def connect_headers(self, stream_id: int, authority: str, end_headers: bool = True) -> HeadersFrame:
        block = self.encoder.encode([(":method", "CONNECT"), (":authority", authority)])
        frame = HeadersFrame(stream_id, block)
        frame.flags.add("END_HEADERS") if end_headers else None
        return frame

    def frames(self, seconds: float):
        """Frames as they arrive, for at most `seconds`; then, or when the server closes,
        a final None (`self.closed` tells which)."""
        deadline = time.monotonic() + seconds
        self.closed = False
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                break
            self.buffer += data
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                self.buffer = self.buffer[9 + length :]
                yield frame
        yield None

    def outcome(self, seconds: float = 10.0) -> tuple[bool, int | None]:
        """(closed, GOAWAY error code or None): read until the server closes, or give up."""
        code = None
        for frame in self.frames(seconds):
            if isinstance(frame, GoAwayFrame):
                code = frame.error_code
        return self.closed, code

    def read_until(self, wanted, count: int = 1, seconds: float = 30.0) -> int:
        """Read frames until `count` of them satisfy `wanted(frame)`; returns how many did."""
        seen = 0
        for frame in self.frames(seconds):
            if frame is not None and wanted(frame):
                seen += 1
                if seen == count:
                    break
        return seen

    def sync(self, seconds: float = 60.0) -> bool:
        """PING and wait for its ACK: the server has then processed everything sent before."""
        self.send(PingFrame(0, b"syncsync").serialize())
        return (
            self.read_until(
                lambda f: isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == b"syncsync", 1, seconds
            )
            == 1
        )

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


__all__ = [
    "ContinuationFrame",
    "DataFrame",
    "GoAwayFrame",
    "HeadersFrame",
    "PingFrame",
    "RawH2",
    "RstStreamFrame",
    "SettingsFrame",
    "WindowUpdateFrame",
]
