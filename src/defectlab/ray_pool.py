"""Ray for defectlab's batch work: a session (join a cluster or start a local Ray) and an ordered actor-pool
map, shared by ``inspect --executor ray`` and ``anomaly fit --executor ray``.

``ordered_map`` sends ``items`` (one dict per unit of work) through Ray Data ``map_batches`` over a pool of
``size`` actors built from ``actor(*args)``, one unit per call, and yields the output rows in item order
(``preserve_order``): callers can write or stream results as the local loop would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from defectlab.errors import ConfigError


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'ray[data]'") from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, joined at ``address`` (``ray://host:10001``, ``host:6379`` or ``auto``) or started locally on this
    machine's cores without a dashboard, and then stopped, unless this process already runs it."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def ordered_map(ray: Any, items: list[dict[str, Any]], actor: type, args: tuple, size: int,
                **resources: Any) -> Iterator[dict[str, Any]]:
    """Output rows of ``actor(*args)(batch)`` for each item, in item order (each item carries its index as
    ``unit``); ``resources``: per-actor ``num_cpus`` / ``num_gpus``."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(actor, fn_constructor_args=args, batch_size=1, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=max(1, min(size, len(items)))), **resources)
    for expected, row in enumerate(out.iter_rows()):
        if int(row["unit"]) != expected:  # preserve_order makes this impossible; never hand out of order
            raise RuntimeError(f"ray: unit {row['unit']} arrived, expected {expected}")
        yield row


__all__ = ["import_ray", "ordered_map", "ray_session"]
