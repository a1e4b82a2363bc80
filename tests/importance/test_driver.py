"""The one batch driver of both engines: the next batch's images are placed while a batch
computes, before its results are fetched; progress moves as they come back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxvit_interp import parallel
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import ablate, head_importance
from jaxvit_interp.progress import Progress

SMALL = dict(
    image_size=(8, 8),
    patch_size=(4, 4),
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    mlp_dim=24,
    num_classes=4,
)


class _Recorded(Progress):
    """A caller's stage that writes down when its callee's results come back."""

    def __init__(self, total, events):
        super().__init__(total)
        self.events = events

    def update(self, steps: float = 1.0) -> None:
        super().update(steps)
        if steps > 0:
            self.events.append("fetched")


@pytest.mark.parametrize("engine", ["single heads", "head sets"])
def test_the_next_batch_is_placed_before_a_batch_is_fetched(
    engine, random_model, random_images, monkeypatch
):
    config, params = random_model(int(np.random.default_rng().integers(1 << 30)), **SMALL)
    images = random_images(config, 3, 0)
    events: list[str] = []
    put = parallel.Batcher.put

    def placed(self, rows):
        events.append("placed")
        return put(self, rows)

    monkeypatch.setattr(parallel.Batcher, "put", placed)
    stage = _Recorded(3, events)
    execution = Execution(batch_size=1, progress=stage.share(3))
    if engine == "single heads":
        head_importance(config, params, images, metrics=("kl",), execution=execution)
    else:
        ablate(config, params, images, [[(0, 1)], [(1, 0), (1, 1)]], execution=execution)
    # Three batches of one image: each batch's results come back only once the next batch's
    # images are on the device, so that copy overlaps the batch's compute.
    runs = [(event, len(list(group))) for event, group in itertools.groupby(events)]
    assert [event for event, _ in runs] == ["placed", "fetched", "placed", "fetched"], events
    assert (runs[0][1], runs[2][1]) == (2, 1), events
    # All of the callee's share is given, in the images' proportions.
    assert stage.done == pytest.approx(3)
