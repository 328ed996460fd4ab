"""File inputs of the allowlist: a growing feed file and a directory of snapshots.

Thin I/O: they hand complete lines or a snapshot's text to the sans-I/O parsers.
"""

from __future__ import annotations

import os


class FeedTail:
    """New complete lines of a JSON Lines file that grows (a partial last line waits);
    a rotated (new inode) or truncated file is read again from its start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None
        self.partial = b""
        self.line = 0  # number of the last complete line handed out

    def read(self, max_bytes: int = 64 << 20) -> tuple[int, list[bytes]]:
        """(number of the first line returned, lines)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.line + 1, []
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset, self.partial, self.line = st.st_ino, 0, b"", 0
        if st.st_size == self.offset:
            return self.line + 1, []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(max_bytes)
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        first = self.line + 1
        self.line += len(lines)
        return first, lines


class SnapshotDir:
    """The newest snapshot file dropped in a directory (writers drop it atomically: write
    ``.name`` or ``name.tmp``, then rename). Each file version is handed out once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.applied: tuple[str, int, int] | None = None

    def poll(self) -> tuple[str, str] | None:
        """(path, text) of a snapshot newer than the one applied, or None."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return None
        best: tuple[int, str, int] | None = None
        for name in names:
            if name.startswith(".") or name.endswith((".tmp", ".part")):
                continue
            full = os.path.join(self.path, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            if not os.path.isfile(full):
                continue
            cand = (st.st_mtime_ns, name, st.st_size)
            if best is None or cand > best:
                best = cand
        if best is None:
            return None
        sig = (best[1], best[0], best[2])
        if sig == self.applied:
            return None
        full = os.path.join(self.path, best[1])
        with open(full, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        self.applied = sig
        return full, text
