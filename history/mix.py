"""The class-mix model of a prefix: a robust covariance of its log class rates.

Fitted when the baselines are refreshed, from the same samples (``baselines.samples``: the
per-minute peaks, outside diverted incidents): scikit-learn's ``MinCovDet`` (the minimum
covariance determinant, robust to the minutes of attacks and storms that the history still
holds) over ``log1p(rate)`` of the classes of the prefix's anomaly rule. The evaluator
(detector.anomaly) scores the current rates with its robust distance. The covariance gets a
small ridge: a class that never varies must not make noise look like an attack.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.covariance import MinCovDet

from detector.anomaly import MixModel
from history.baselines import channels_of, samples
from history.config import BaselineConfig
from history.store import HistoryStore

RIDGE = 0.01  # added to the variances of the log rates (a 10 % standard deviation)
MAX_SAMPLES = 2000  # per prefix: MinCovDet costs ~0.5 s for 2,000 x 6 (docs/history.md)


def fit_one(x: np.ndarray, classes: Sequence[str], metric: str, seed: int = 0) -> MixModel | None:
    """The model of one prefix from its rate samples (n, k); None if too few."""
    x = x[~np.isnan(x).any(axis=1)]
    k = x.shape[1]
    if len(x) < max(30, 5 * k):
        return None
    if len(x) > MAX_SAMPLES:
        x = x[np.random.default_rng(seed).choice(len(x), MAX_SAMPLES, replace=False)]
    logs = np.log1p(np.maximum(x, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        mcd = MinCovDet(random_state=seed).fit(logs)
    cov = np.asarray(mcd.covariance_) + RIDGE * np.eye(k)
    return MixModel(
        tuple(classes),
        metric,
        np.asarray(mcd.location_, dtype=np.float64),
        np.asarray(np.linalg.inv(cov), dtype=np.float64),
    )


def fit(
    store: HistoryStore,
    cfg: BaselineConfig,
    now: float,
    wanted: dict[str, tuple[tuple[str, ...], str]],
    frame: pd.DataFrame | None = None,
) -> dict[str, MixModel]:
    """Models of the prefixes of ``wanted`` (prefix -> (classes, metric)) from the history
    before ``now``; prefixes with too little history get none."""
    if not wanted:
        return {}
    chans = sorted({f"{c}.{m}" for classes, m in wanted.values() for c in classes})
    chans = [c for c in chans if c in channels_of(cfg)]
    df = frame if frame is not None else samples(store, cfg, now, list(wanted), chans)
    out: dict[str, MixModel] = {}
    for prefix, (classes, metric) in wanted.items():
        cols = [f"{c}.{metric}" for c in classes]
        if len(cols) < 2 or not set(cols) <= set(df.columns):
            continue  # a mix needs two classes at least
        rows = df[df["prefix"] == prefix]
        model = fit_one(rows[cols].to_numpy(dtype=np.float64), classes, metric)
        if model is not None:
            out[prefix] = model
    return out
