"""Builders of hostile requests: odd PNGs, raw multipart bodies, raw sockets."""

from __future__ import annotations

import io
import socket
import struct
import zlib

from PIL import Image, PngImagePlugin

BOUNDARY = "vary-robustness-boundary"
MiB = 1024 * 1024


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_chunk_after_header(png: bytes, extra: bytes) -> bytes:
    """Inserts a chunk right after IHDR (8 signature bytes + 25 IHDR bytes)."""
    return png[:33] + extra + png[33:]


def padded_to(png: bytes, total: int) -> bytes:
    """The same PNG at exactly `total` bytes, padded with a private ancillary chunk decoders skip."""
    padded = with_chunk_after_header(png, chunk(b"vaRy", b"\0" * (total - len(png) - 12)))
    assert len(padded) == total
    return padded


def bad_crc(png: bytes) -> bytes:
    broken = bytearray(png)
    broken[29] ^= 0xFF  # the last byte of IHDR's CRC
    return bytes(broken)


def header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))


def text_bomb(png: bytes) -> bytes:
    """A zTXt chunk of 64 KB that inflates to 64 MB."""
    return with_chunk_after_header(png, chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * (64 * MiB), 9)))


def big_text(png: bytes, size: int) -> bytes:
    return with_chunk_after_header(png, chunk(b"tEXt", b"comment\0" + b"a" * size))


def saved(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def apng() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    return saved(frames[0], format="PNG", save_all=True, append_images=frames[1:], duration=100)


def sixteen_bit() -> bytes:
    return saved(Image.new("I;16", (32, 32), 40000), format="PNG")


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def interlaced(side: int = 16) -> tuple[bytes, Image.Image]:
    """An Adam7-interlaced RGB PNG (Pillow writes none), and the image it holds."""
    image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    pixels = image.tobytes()
    stream = b""
    for x0, y0, dx, dy in ADAM7:
        for y in range(y0, side, dy):
            row = b"".join(pixels[(y * side + x) * 3 : (y * side + x) * 3 + 3] for x in range(x0, side, dx))
            if row:
                stream += b"\0" + row  # filter type 0 per scanline of the pass
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 1)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(stream)) + chunk(b"IEND", b"")
    return data, image


def with_text_info() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "ünïcödé ✓")
    return saved(Image.new("RGB", (16, 16)), format="PNG", pnginfo=info)


def multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """A raw multipart/form-data body: (name, value, filename or None) per part, duplicates allowed."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + value + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def raw_exchange(port: int, head: bytes, body_chunks: list[bytes], *, timeout: float = 30.0) -> bytes:
    """Sends a hand-written request and returns whatever the server answers before closing (or b"")."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head)
        try:
            for piece in body_chunks:
                connection.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: what it answered is below
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while data := connection.recv(65536):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def two_headers(first: tuple[int, int], second: tuple[int, int], *, colour_type: int = 2) -> bytes:
    """A PNG with two IHDR chunks: a small one first, then the one whose pixels the IDAT really holds.

    Pillow decodes with the last IHDR; a check that reads only the first sees a harmless image. The
    pixels are all zero, so 9000x9000 RGB compresses to about 240 KB.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    width, height = second
    squeeze = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)
    stream = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", *first, 8, colour_type, 0, 0, 0))
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
        + chunk(b"IDAT", stream)
        + chunk(b"IEND", b"")
    )


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident bytes of a process (VmRSS), or its peak since the last reset_peak (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Resets the kernel's peak-RSS mark (VmHWM) of a process we own."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")
