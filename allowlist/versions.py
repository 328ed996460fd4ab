"""The difference of the set between two versions, from the change log. Sans-I/O.

Which keys were on the allowlist at version ``a`` and not at ``b``, and the reverse. An
entry (key, source) is present just before its first logged change after a version if
that change is not an ``add`` (a refresh, remove or expire needs it present); an entry with
no change after a version is as it is now. A key is a member while any source holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from allowlist.state import ADD, Change


@dataclass(frozen=True, slots=True)
class Delta:
    since: int
    version: int
    added: frozenset[int]
    removed: frozenset[int]

    def __len__(self) -> int:
        return len(self.added) + len(self.removed)


def delta(
    changes: Sequence[Change],
    since: int,
    version: int,
    holders_now: Callable[[int], Iterable[str]],
) -> Delta:
    """Membership difference from version ``since`` to ``version``.

    ``changes`` are every logged change with a version > since (up to now, in order);
    ``holders_now(key)`` names the sources holding a key now.
    """
    if version < since:
        raise ValueError(f"version {version} is older than {since}")
    touched = {c.key for c in changes if c.version <= version}
    after_a: dict[tuple[int, str], str] = {}
    after_b: dict[tuple[int, str], str] = {}
    sources: dict[int, set[str]] = {}
    for c in changes:
        if c.key not in touched:
            continue
        pair = (c.key, c.source)
        after_a.setdefault(pair, c.op)
        if c.version > version:
            after_b.setdefault(pair, c.op)
        sources.setdefault(c.key, set()).add(c.source)
    added: set[int] = set()
    removed: set[int] = set()
    for key in touched:
        now = set(holders_now(key))
        held = sources[key] | now
        at_a = any(_present(key, s, after_a, now) for s in held)
        at_b = any(_present(key, s, after_b, now) for s in held)
        if at_b and not at_a:
            added.add(key)
        elif at_a and not at_b:
            removed.add(key)
    return Delta(since, version, frozenset(added), frozenset(removed))


def _present(key: int, source: str, first: dict[tuple[int, str], str], now: set[str]) -> bool:
    op = first.get((key, source))
    return source in now if op is None else op != ADD
