"""How work is run: one ``Execution`` value, checked once, taken by every analysis over images."""

from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxvit_interp as jvi
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.progress import Progress


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
        (dict(batch_size=2.5), "batch_size must be a positive int, got 2.5"),
        (dict(batch_size=True), "batch_size must be a positive number, got True"),
        (dict(batch_size="8"), "batch_size must be a positive number, got '8'"),
        (dict(memory_budget_bytes=-5), "memory_budget_bytes must be a positive int, got -5"),
        (dict(mesh="cpu"), "mesh must be a jax.sharding.Mesh, got str"),
        (dict(progress="yes"), "progress must be True, False or a Share.*got 'yes'"),
        (dict(progress=1), "progress must be True, False or a Share.*got 1"),
    ],
)
def test_a_bad_field_is_refused_by_name_when_made(fields, match):
    with pytest.raises(InputError, match=match):
        Execution(**fields)


def test_fields_are_normalised_and_the_devices_counted():
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    execution = Execution(np.int64(8), 4.0 * 2**20, mesh, np.bool_(False))
    assert execution.batch_size == 8 and type(execution.batch_size) is int
    assert execution.memory_budget_bytes == 4 << 20
    assert execution.progress is False
    assert execution.num_devices == mesh.size == jax.device_count()
    assert Execution().num_devices == 1
    assert Execution(memory_budget_bytes=123).budget_bytes() == 123
    assert Execution().budget_bytes() == jvi.importance.default_memory_budget()


def test_a_callee_reports_into_its_share_of_the_callers_stage():
    stage = Progress(total=10)
    share = stage.share(4)
    execution = Execution(batch_size=2).with_progress(share)
    assert execution.progress is share and execution.batch_size == 2
    assert as_execution(None) == Execution()
    assert as_execution(execution) is execution
    with pytest.raises(InputError, match="execution must be a jaxvit_interp.Execution.*int"):
        as_execution(3)


# Every public analysis that runs the model over many images, and the keywords that used to
# travel through each of them.
ANALYSES = {
    "head_importance": jvi.head_importance,
    "partial_pruning": jvi.partial_pruning,
    "ablate": jvi.ablate,
    "pairwise_interactions": jvi.pairwise_interactions,
    "pruning_curves": jvi.pruning_curves,
    "head_shapley": jvi.head_shapley,
    "model_strength_over_images": jvi.model_strength_over_images,
    "model_special_mass_over_images": jvi.strength.model_special_mass_over_images,
    "collect_patterns": jvi.patterns.collect_patterns,
    "model_rollout_over_images": jvi.model_rollout_over_images,
    "final_rollout_over_images": jvi.rollout.final_rollout_over_images,
}
LOOSE = {"batch_size", "memory_budget_bytes", "mesh", "progress"}


def test_every_analysis_takes_one_execution_and_none_of_its_fields():
    from jaxvit_interp.benchmark import run_benchmark
    from jaxvit_interp.model.run import attention_over_images
    from jaxvit_interp.pipeline.head_sets import compute_head_sets
    from jaxvit_interp.pipeline.prune import choose_heads

    more = {
        "attention_over_images": attention_over_images,
        "compute_head_sets": compute_head_sets,
        "choose_heads": choose_heads,
        "run_benchmark": run_benchmark,
    }
    for name, fn in {**ANALYSES, **more}.items():
        parameters = inspect.signature(fn).parameters
        assert "execution" in parameters, name
        assert parameters["execution"].default is None, name
        assert parameters["execution"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert not LOOSE & set(parameters), (name, LOOSE & set(parameters))


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_a_bad_execution_is_refused_before_any_model_work(name):
    """Given something else than an Execution, each analysis stops with one line naming it,
    before it runs the model (the model here would fail if it were run)."""
    config = jvi.ViTConfig(
        image_size=(8, 8), patch_size=(4, 4), hidden_size=8, num_layers=2, num_heads=2,
        mlp_dim=8, num_classes=6,
    )  # fmt: skip
    params = {"unusable": np.zeros(1)}  # any model work fails on these
    images = np.zeros((2, 8, 8, 3), np.float32)
    args = {
        "ablate": ([[(0, 0)]],),
        "pairwise_interactions": ([(0, 0), (1, 1)],),
    }.get(name, ())
    with pytest.raises(InputError, match="execution must be a jaxvit_interp.Execution.*dict"):
        ANALYSES[name](config, params, images, *args, execution={"progress": False})
