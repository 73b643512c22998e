"""The NAB scorer in bench/anomaly: a perfect detector scores 100, a silent one 0."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "anomaly" / "nab_eval.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_eval", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nab_eval"] = module
    spec.loader.exec_module(module)
    return module


def test_perfect_null_and_false_positive_scores() -> None:
    nab = load_bench()
    labels = json.loads((nab.DATA / "windows.json").read_text())
    key = sorted(labels)[0]
    times, _ = nab.load_series(nab.DATA / key)
    windows = [(nab._parse_time(a), nab._parse_time(b)) for a, b in labels[key]]
    index = {t: i for i, t in enumerate(times)}
    weights = nab.PROFILES["standard"]
    perfect = [False] * len(times)
    for start, _end in windows:
        perfect[index[start]] = True
    silent = [False] * len(times)
    assert nab.normalised([nab.score_file(key, times, perfect, windows, weights)], weights) == 100.0
    assert nab.normalised([nab.score_file(key, times, silent, windows, weights)], weights) == 0.0
    # One detection before any window, after probation, costs exactly fpWeight.
    early = list(silent)
    early[800] = True
    score = nab.score_file(key, times, early, windows, weights)
    assert score.false_positives == 1
    assert score.raw == -weights["fn"] * len(windows) - weights["fp"]
