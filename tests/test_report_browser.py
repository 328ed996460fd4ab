"""The HTML report of the udp-flood incident in a real headless Chromium: the screenshot is
a PNG of the window's size that is not blank, with the charts drawn (pixels of the flood's
series, the announce mark and the diversion's shading where the first chart is), and the
DOM that Chromium built has the SVG elements. PNG decoding: zlib and numpy only.

Needs Chromium (`apt-get install -y --no-install-recommends chromium`, as .ci/run does);
installed here when missing and run as root with apt-get, skipped only if that fails.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from divertor.report import export
from divertor.store import TimelineStore
from tests.test_store import needs_scenarios, record_scenario

WIDTH, HEIGHT = 1400, 2000
APT = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in ([], ["apt-get", "update", "-q"]):
            if step:
                subprocess.run(step, env=env, capture_output=True, timeout=900, check=False)
            subprocess.run(APT, env=env, capture_output=True, timeout=900, check=False)
            path = find_chromium()
            if path:
                break
    if path is None:
        pytest.skip("chromium is not installed and could not be installed (" + " ".join(APT) + ")")
    return path


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--force-device-scale-factor=1", f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, timeout=180, check=False)


def decode_png(data: bytes) -> npt.NDArray[np.uint8]:
    """RGB(A) pixels of a non-interlaced 8-bit PNG: chunks, CRCs, zlib, the five filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    assert header is not None
    w, h, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    ch = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), np.uint8)
    prev = np.zeros(w * ch, np.int64)
    for y in range(h):
        f, line = int(raw[y, 0]), raw[y, 1:].astype(np.int64)
        if f == 0:
            cur = line
        elif f == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(w, ch), axis=0).reshape(-1) & 255
        elif f == 2:  # Up
            cur = (line + prev) & 255
        else:  # Average, Paeth: sequential along the row
            c, p, up = line.tolist(), [0] * ch + prev.tolist(), prev.tolist()
            r = [0] * ch + c
            for x in range(w * ch):
                a, b, d = r[x], up[x], p[x]
                if f == 3:
                    r[x + ch] = (c[x] + ((a + b) >> 1)) & 255
                else:
                    q = a + b - d
                    pa, pb, pc = abs(q - a), abs(q - b), abs(q - d)
                    r[x + ch] = (
                        c[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else d)
                    ) & 255
            cur = np.asarray(r[ch:], np.int64)
        out[y], prev = cur, cur
    return out.reshape(h, w, ch)[:, :, :3]


def near(
    img: npt.NDArray[np.uint8], rgb: tuple[int, int, int], tol: int = 24
) -> npt.NDArray[np.bool_]:
    return np.all(np.abs(img.astype(np.int64) - np.asarray(rgb)) <= tol, axis=2)


def test_png_decoder_round_trip() -> None:
    """The decoder against an image written with every filter type."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    rows = []
    flat = img.reshape(5, -1).astype(np.int64)
    for y in range(5):
        cur, up = flat[y], flat[y - 1] if y else np.zeros(12, np.int64)
        left = np.concatenate([[0, 0, 0], cur[:-3]])
        ul = np.concatenate([[0, 0, 0], up[:-3]])
        f = y % 5
        pred = [0 * cur, left, up, (left + up) // 2, None][f]
        if f == 4:
            q = left + up - ul
            pa, pb, pc = abs(q - left), abs(q - up), abs(q - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        rows.append(bytes([f]) + ((cur - pred) & 255).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 5, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))  # fmt: skip
    np.testing.assert_array_equal(decode_png(png), img)


@needs_scenarios
def test_report_renders_in_chromium(chromium: str, tmp_path: Path) -> None:
    path, ids = record_scenario(tmp_path)
    with TimelineStore(path, readonly=True) as store:
        page = tmp_path / "incident.html"
        page.write_text(export(store, ids[0], "html"), encoding="utf-8")
    shot = tmp_path / "incident.png"
    run = run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), run.stderr.decode(errors="replace")[-2000:]
    img = decode_png(shot.read_bytes())
    assert img.shape == (HEIGHT, WIDTH, 3)
    # not blank: many colours, and far from one flat background
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 200 and img.std() > 20
    background = near(img, (0xF3, 0xF5, 0xF8), 2).mean()
    assert 0.05 < background < 0.9
    # the title in dark ink at the top
    assert near(img[:60], (0x1D, 0x23, 0x30), 60).sum() > 500
    # the first chart (packets/s): the flood's unlisted_udp series, the announce mark and the
    # shaded diversion, in the upper part of the page
    upper = img[250:800]
    assert near(upper, (0xE3, 0x77, 0xC2), 30).sum() > 800  # unlisted_udp, ~300 kpps
    assert near(upper, (0xC9, 0x2A, 0x2A), 30).sum() > 150  # announce line and label
    assert near(upper, (0x2B, 0x8A, 0x3E), 30).sum() > 150  # withdraw line and label
    assert near(upper, (0xFC, 0xF0, 0xF0), 3).sum() > 20_000  # the diverted span
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    html = dom.stdout.decode()
    assert html.count("<svg") == 2 and html.count('class="series"') >= 8
    assert html.count('class="mark announce"') == 2 and "</html>" in html
