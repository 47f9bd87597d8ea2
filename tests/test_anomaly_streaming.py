"""Bounded-memory fit and evaluation: batching does not change the bank; streamed pixel metrics equal the
exact ones computed from every map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectlab.anomaly import build_model
from defectlab.anomaly.runner import RunConfig, evaluate, evaluation_records, fit_detector
from defectlab.data.index import open_dataset
from defectlab.metrics import anomaly_metrics


def test_streaming_fit_gives_the_bank_of_one_big_batch(one_torch_thread: None) -> None:
    rng = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 64, 64, generator=rng)
    banks = []
    for batch in (12, 2):  # all images at once (what a fit holding every feature does) vs streamed in pairs
        model = build_model("patchcore", {"coreset_ratio": 0.1})
        model.fit([images[i:i + batch] for i in range(0, len(images), batch)])
        banks.append(model.memory_bank_)
    assert banks[0].shape == banks[1].shape and banks[0].shape[0] == int(np.ceil(0.1 * 12 * 64))
    torch.testing.assert_close(banks[0], banks[1], rtol=1e-4, atol=1e-4)


def test_streamed_evaluation_equals_exact_pixel_metrics(synthetic_object: Path,
                                                       one_torch_thread: None) -> None:
    cfg = RunConfig(data=str(synthetic_object), options={"coreset_ratio": 0.1}, image_size=64)
    det = fit_detector(cfg)
    records = evaluation_records(open_dataset(cfg.data))
    res = evaluate(det, records, keep=set(range(len(records))))
    labels = np.array([r["label"] for r in res.rows])
    scores = np.array([r["score"] for r in res.rows])
    n = len(res.rows)
    exact = anomaly_metrics(labels, scores, [res.masks[i] for i in range(n)], [res.maps[i] for i in range(n)])
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "background_auroc"):
        assert res.metrics["all"][key] == pytest.approx(exact[key], abs=1e-3), key
