"""Top talkers (source addresses, source ports, destination ports) of the prefixes that are
over a threshold: kept only for those, so normal traffic costs nothing here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt

from collector.flowbatch import pair_to_str

MAX_KEYS = 4096  # per prefix and kind; pruned to the top half beyond it
KINDS = ("src_addr", "src_port", "dst_port")


class TopTalkers:
    def __init__(self, entries: int) -> None:
        self.counts: list[dict[str, Counter[object]]] = [
            {k: Counter() for k in KINDS} for _ in range(entries)
        ]

    def add(
        self,
        entry: npt.NDArray[np.int64],
        src_hi: npt.NDArray[np.uint64],
        src_lo: npt.NDArray[np.uint64],
        src_port: npt.NDArray[np.uint16],
        dst_port: npt.NDArray[np.uint16],
        packets: npt.NDArray[np.float64],
    ) -> None:
        for e in np.unique(entry).tolist():
            sel = entry == e
            w = packets[sel]
            c = self.counts[e]
            _merge(c["src_port"], src_port[sel], w)
            _merge(c["dst_port"], dst_port[sel], w)
            keys = np.stack([src_hi[sel], src_lo[sel]], axis=1)
            uniq, inv = np.unique(keys, axis=0, return_inverse=True)
            sums = np.bincount(inv.ravel(), w, minlength=len(uniq))
            top = np.argsort(sums)[::-1][:256]
            for j in top.tolist():
                c["src_addr"][pair_to_str(uniq[j, 0], uniq[j, 1])] += round(float(sums[j]))
            for counter in c.values():
                if len(counter) > MAX_KEYS:
                    kept = counter.most_common(MAX_KEYS // 2)
                    counter.clear()
                    counter.update(dict(kept))

    def top(self, entry: int, n: int = 10) -> dict[str, list[tuple[object, int]]]:
        return {k: self.counts[entry][k].most_common(n) for k in KINDS}

    def reset(self, entry: int) -> None:
        for counter in self.counts[entry].values():
            counter.clear()


def _merge(
    counter: Counter[object], keys: npt.NDArray[np.uint16], w: npt.NDArray[np.float64]
) -> None:
    sums = np.bincount(keys.astype(np.int64), w, minlength=65536)
    nz = np.nonzero(sums)[0]
    if len(nz) > 256:
        nz = nz[np.argsort(sums[nz])[::-1][:256]]
    for k in nz.tolist():
        counter[k] += round(float(sums[k]))
