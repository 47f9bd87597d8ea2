"""PatchCore's feature extraction on Ray (``defectlab anomaly fit DATA --executor ray [--address ADDR]``).

The backbone pass over the training images is the expensive part of a PatchCore fit; the coreset selection
needs the features in one place. Here the training batches (exactly the local fit's batches:
``runner.batch_indices``) become a Ray Data ``map_batches`` over an actor pool: every actor builds the
model once from the driver's weights (sent along, so even a randomly initialised backbone is the same
everywhere) and then decodes, preprocesses and embeds batch after batch. The features stream back in
batch order (``preserve_order``) into the driver's ``PatchCore.fit_features``, i.e. today's streaming
coreset: the memory bank equals the local executor's (workers use the driver's torch thread count, as the
float sums depend on it).

Without ``address`` a local Ray is started for the fit (this machine's cores, no dashboard) and stopped
afterwards; with ``address`` (``ray://host:10001``, ``host:6379`` or ``auto``) the fit joins that cluster,
whose workers must see the training images at the same paths (a shared file system). Actors run on the
workers' CPUs, or on one GPU each when the driver's model is on CUDA.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from defectlab.anomaly.base import AnomalyModel
from defectlab.anomaly.detector import Preprocess
from defectlab.data.index import SampleRecord
from defectlab.ray_pool import ordered_map, ray_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureJob:
    """What an actor needs: the method and its config, the training records and their preprocessing."""

    method: str
    config: dict[str, Any]
    preprocess: Preprocess
    records: tuple[SampleRecord, ...]
    threads: int  # torch threads per actor (the driver's count: features equal bit for bit)
    gpu: bool = False  # each actor on one GPU


class _FeatureActor:
    """One Ray actor: builds the model once (driver's weights), then embeds batch after batch."""

    def __init__(self, job: FeatureJob, state: dict[str, torch.Tensor]) -> None:
        from defectlab.anomaly import build_model
        from defectlab.data.dataset import DefectDataset

        torch.set_num_threads(job.threads)
        self.model = build_model(job.method, job.config, pretrained=False)
        self.model.load_state_dict(state)
        self.model.to(torch.device("cuda") if job.gpu else torch.device("cpu")).eval()
        self.dataset = DefectDataset(list(job.records), job.preprocess.transform(), mode=job.preprocess.mode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feats, shapes = [], []
        for unit in batch["indices"]:
            images = torch.stack([self.dataset[i].image for i in json.loads(unit)])
            emb = self.model._embed(images).float().cpu().contiguous().numpy()
            feats.append(emb.tobytes())
            shapes.append(json.dumps(emb.shape))
        return {"unit": np.asarray(batch["unit"]), "features": np.asarray(feats, dtype=object),
                "shape": np.asarray(shapes, dtype=object)}


def ray_patch_features(model: AnomalyModel, records: Sequence[SampleRecord], preprocess: Preprocess,
                       batch_size: int, *, address: str | None = None,
                       workers: int | None = None) -> Iterator[torch.Tensor]:
    """``model._embed`` of each training batch, in batch order, computed by a Ray actor pool."""
    from tqdm.auto import tqdm

    from defectlab.anomaly.runner import batch_indices
    from defectlab.config import to_dict

    units = batch_indices(records, preprocess, batch_size)
    if not units:
        return
    gpu = model.device.type == "cuda"
    job = FeatureJob(model.name, to_dict(model.config), preprocess, tuple(records), torch.get_num_threads(), gpu)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with ray_session(address) as ray:
        per_actor = {"num_gpus": 1} if gpu else {"num_cpus": job.threads}
        resource = "GPU" if gpu else "CPU"
        fits = max(1, int(ray.cluster_resources().get(resource, 1)) // (1 if gpu else job.threads))
        size = min(workers or fits, fits)  # more actors than the cluster holds would wait forever
        items = [{"unit": i, "indices": json.dumps(u)} for i, u in enumerate(units)]
        bar = tqdm(total=len(units), desc="patchcore: features (ray)", unit="batch", leave=False, disable=None)
        for row in ordered_map(ray, items, _FeatureActor, (job, state), size, **per_actor):
            shape = tuple(json.loads(row["shape"]))
            bar.update(1)
            yield torch.from_numpy(np.frombuffer(row["features"], dtype=np.float32).reshape(shape).copy())
        bar.close()


__all__ = ["FeatureJob", "ray_patch_features"]
