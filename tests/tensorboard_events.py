"""Reading TensorBoard event files back with tensorboard's own loader (no server, no TensorFlow)."""
from __future__ import annotations

import numpy as np


def read_scalars(run_dir) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """{tag: [(step, value)]} and the text tags of every event file under run_dir, via tensorboard's loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: list[str] = []
    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run_dir}"
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                array = tensor_util.make_ndarray(value.tensor)
                if array.dtype.kind == "f":
                    scalars.setdefault(value.tag, []).append((event.step, float(array)))
                else:
                    texts.append(value.tag + "=" + b"".join(np.atleast_1d(array).tolist()).decode())
    return scalars, texts
