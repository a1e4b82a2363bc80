"""The memory planner (:mod:`jaxvit_interp.budget`): the batch of the attention-reading passes,
sized from the memory budget, and the one rule both planners share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxvit_interp import AnalysisSettings, ViTConfig, init_params
from jaxvit_interp import budget as budget_module
from jaxvit_interp.attention_pass import _pass_batch
from jaxvit_interp.budget import (
    DEFAULT_PASS_IMAGES,
    BudgetGrownWarning,
    MemoryBudgetError,
    attention_pass_bytes,
    params_bytes,
    pass_images,
    plan_batches,
    replacement_bytes,
    spare_host_bytes,
    usable_bytes,
)
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.kernels import clean_slot_mixed
from jaxvit_interp.pipeline.analyses import PASS_ANALYSES

B16 = ViTConfig.from_variant("B/16", num_classes=1000)
# ViT-B/16: 12 layers x 12 heads of 197 x 197 float32 attention, four times.
B16_IMAGE = 4 * 4 * 12 * 12 * 197 * 197
GIB = 1 << 30


def test_attention_pass_bytes_of_vit_b16():
    assert attention_pass_bytes(B16) == B16_IMAGE == 89_415_936


def _devices(count: int) -> Mesh | None:
    """A mesh of ``count`` devices for the planner's arithmetic, which only counts them (the
    machine's one CPU device, repeated)."""
    return None if count == 1 else Mesh(np.array([jax.devices()[0]] * count), ("batch",))


@pytest.mark.parametrize(
    ("num_images", "budget", "fixed", "devices", "expected"),
    [
        # 0.9 GiB less 300 MB holds 7 images of 89.4 MB.
        (100, GIB, 300_000_000, 1, (int(0.9 * GIB) - 300_000_000) // B16_IMAGE),
        (100, 64 * GIB, 0, 1, DEFAULT_PASS_IMAGES),  # the cap
        (5, 64 * GIB, 0, 1, 5),  # never more than the chunk: no padded images
        (100, GIB, GIB, 1, 1),  # the parameters fill the budget: still one image
        (100, GIB, 300_000_000, 2, 14),  # per device, times the devices
        (100, GIB, 300_000_000, 4, 28),
        (100, GIB, 300_000_000, 8, DEFAULT_PASS_IMAGES),
        (5, 64 * GIB, 0, 4, 8),  # rounded up to whole devices
    ],
)
def test_pass_images_rule(num_images, budget, fixed, devices, expected):
    execution = Execution(memory_budget_bytes=budget, mesh=_devices(devices))
    got = pass_images(B16, execution, num_images=num_images, fixed_bytes=fixed)
    assert got == expected
    assert got % devices == 0


def test_a_pass_takes_the_given_batch_size_and_never_more_than_the_images(rng):
    """``Execution.pass_batcher``: the batch size given, capped at the images (rounded up to
    whole devices); without one, the planner's count for the parameters held."""
    config = ViTConfig.from_variant("mu/2", image_size=(16, 16), num_layers=2, num_classes=3)
    params = init_params(config, int(rng.integers(1 << 30)))
    for _ in range(5):
        images = int(rng.integers(1, 40))
        size = int(rng.integers(1, 40))
        devices = int(rng.choice([1, 2, 4]))
        execution = Execution(batch_size=size, mesh=_devices(devices))
        whole = -(-images // devices) * devices
        # A Batcher rounds its size up to whole devices.
        want = -(-min(size, whole) // devices) * devices
        assert execution.pass_batcher(config, params, images).batch_size == want
        planned = Execution(memory_budget_bytes=64 << 20, mesh=_devices(devices))
        got = planned.pass_batcher(config, params, images).batch_size
        fixed = params_bytes(params)
        assert got == pass_images(config, planned, num_images=images, fixed_bytes=fixed)


def test_both_planners_leave_the_same_share_of_a_budget(rng):
    """The ablation plan and the pass plan take a tenth of the budget and the parameters off by
    one rule: the least budget each accepts for one image follows from it exactly."""
    config = ViTConfig.from_variant("mu/2", image_size=(16, 16), num_layers=2, num_classes=3)
    for _ in range(3):
        fixed = int(rng.integers(0, 8 << 20))
        budget = int(rng.integers(16 << 20, 256 << 20))
        assert usable_bytes(budget, fixed) == int(0.9 * budget) - fixed
        # The pass: images = what is left over its cost an image, capped.
        left = usable_bytes(budget, fixed)
        execution = Execution(memory_budget_bytes=budget)
        want = min(max(1, left // attention_pass_bytes(config)), DEFAULT_PASS_IMAGES, 1000)
        assert pass_images(config, execution, num_images=1000, fixed_bytes=fixed) == want
    # The engine's planner refuses a budget whose usable bytes are gone, naming a budget that
    # fits, the flag and the setting; that budget is accepted.
    sweep = dict(
        num_images=4,
        num_slots=config.num_heads,
        spawn_layers=(0, 1),
        with_taylor=False,
        need_streams=True,
        fixed_bytes=1 << 20,
    )
    with pytest.raises(MemoryBudgetError) as refused:
        plan_batches(config, Execution(memory_budget_bytes=1 << 20), **sweep)
    least = refused.value.least_bytes
    assert f"--memory-budget-mb {least >> 20} " in str(refused.value)
    assert f"memory_budget_bytes={least} in Python" in str(refused.value)
    plan_batches(config, Execution(memory_budget_bytes=least), **sweep)


DINOV2_NATIVE = ViTConfig.from_variant("S/14", image_size=(518, 518), num_classes=1000)
NATIVE_SWEEP = dict(
    num_images=4, num_slots=6, spawn_layers=(0,), with_taylor=False, need_streams=False
)


def test_the_default_budget_grows_to_what_one_image_needs(monkeypatch):
    """A default budget too small for one image (DINOv2 at its native 518 px) grows, with a
    warning, to the least budget that fits: the one an explicit budget's refusal names, whose
    plan it then equals. An explicit budget never grows."""
    small = 64 << 20
    monkeypatch.setattr("jaxvit_interp.execution.default_memory_budget", lambda: small)
    monkeypatch.setattr(budget_module, "spare_host_bytes", lambda: 64 * GIB)
    with pytest.raises(MemoryBudgetError) as refused:
        plan_batches(DINOV2_NATIVE, Execution(memory_budget_bytes=small), **NATIVE_SWEEP)
    least = refused.value.least_bytes
    assert least > small
    with pytest.warns(BudgetGrownWarning, match=f"using {least >> 20:,} MiB"):
        grown = plan_batches(DINOV2_NATIVE, Execution(), **NATIVE_SWEEP)
    assert grown == plan_batches(
        DINOV2_NATIVE, Execution(memory_budget_bytes=least), **NATIVE_SWEEP
    )


def test_the_default_budget_is_refused_beyond_what_the_machine_spares(monkeypatch):
    monkeypatch.setattr("jaxvit_interp.execution.default_memory_budget", lambda: 64 << 20)
    monkeypatch.setattr(budget_module, "spare_host_bytes", lambda: 100 << 20)
    with pytest.raises(MemoryBudgetError, match="can spare only about 100 MiB") as refused:
        plan_batches(DINOV2_NATIVE, Execution(), **NATIVE_SWEEP)
    assert f"--memory-budget-mb {refused.value.least_bytes >> 20} " in str(refused.value)


def test_spare_host_bytes_is_half_of_the_available_memory():
    """Against the kernel's own count (``free``'s "available" column, in bytes)."""
    import shutil
    import subprocess

    if shutil.which("free") is None:
        pytest.skip("no free(1) here")
    available = int(
        subprocess.run(["free", "-b"], capture_output=True, text=True)
        .stdout.split("\n")[1]
        .split()[6]
    )
    devices = max(1, len(jax.local_devices(backend="cpu")))
    assert spare_host_bytes() == pytest.approx(available / 2 / devices, rel=0.05)


def test_estimate_covers_xla_memory_analysis():
    """What XLA allocates per image for the chunk's attention pass with every analysis's
    reducer, the kept attention of every image among them (the slope between two batch sizes,
    so the parameters and constant buffers drop out), stays within the estimate, and the
    estimate is not loose by more than half, for a model whose attention dominates."""
    config = ViTConfig.from_variant(
        "mu/2", image_size=(32, 32), num_layers=2, num_heads=4, num_classes=3
    )
    params = jax.eval_shape(lambda: init_params(config, 0))

    def allocated(batch):
        keep = np.arange(batch)
        reducers = tuple(
            reducer
            for analysis in PASS_ANALYSES
            if (reducer := analysis.reducer(config, AnalysisSettings(), keep)) is not None
        )
        assert len(reducers) == len(PASS_ANALYSES)
        images = jax.ShapeDtypeStruct((batch, *config.image_size, config.channels), jnp.float32)
        program = jax.jit(lambda p, x: _pass_batch(config, p, x, reducers))
        memory = program.lower(params, images).compile().memory_analysis()
        return memory.temp_size_in_bytes + memory.output_size_in_bytes

    per_image = (allocated(4) - allocated(2)) / 2
    assert 0.5 * attention_pass_bytes(config) <= per_image <= attention_pass_bytes(config)


def test_a_replacement_table_is_counted(rng):
    """A mean ablation's table of head outputs comes off every device's budget once, a resample
    ablation's costs one table an image: at the least budget that holds four images a batch
    without a table, either table leaves fewer; and the table is what XLA allocates an image for
    the program that makes it (the slope between two batch sizes)."""
    config = ViTConfig.from_variant(
        "mu/2", image_size=(16, 24), num_layers=3, num_heads=4, num_classes=3
    )
    L, H = config.num_layers, config.num_heads
    params = jax.eval_shape(lambda: init_params(config, 0))
    heads = jnp.tile(jnp.arange(H, dtype=jnp.int32), (L, 1))

    def allocated(batch):
        images = jax.ShapeDtypeStruct((batch, *config.image_size, config.channels), jnp.float32)
        program = clean_slot_mixed.lower(config, params, images, tuple(range(L)), heads)
        return program.compile().memory_analysis().output_size_in_bytes

    table = replacement_bytes(config, L * H)
    assert table == 4 * L * H * config.num_tokens * config.head_dim
    assert (allocated(4) - allocated(2)) / 2 == table

    sweep = dict(
        num_images=64,
        num_slots=H,
        spawn_layers=tuple(range(L)),
        with_taylor=False,
        need_streams=True,
        fixed_bytes=int(rng.integers(0, 1 << 20)),
        step_tokens=None,
    )

    def images(budget, replacement=None):
        execution = Execution(memory_budget_bytes=budget)
        plan = plan_batches(
            config, execution, **sweep, replacement=replacement, replaced_heads=L * H
        )
        return plan.images_per_batch

    low, high = 1 << 20, 1 << 30  # the least budget for four images a batch, by bisection
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if images(middle) < 4 else (low, middle)
    assert images(high) == 4
    assert images(high, "shared") < 4 and images(high, "per_image") < 4
    # What the table costs, and no more: four images with their four tables (or one shared),
    # the budget raised by that much over the nine tenths of it the work may use.
    assert images(high + -(-10 * 4 * table // 9) + 2, "per_image") == 4
    assert images(high + -(-10 * table // 9) + 2, "shared") == 4


def test_the_command_line_tells_a_grown_budget_once_in_one_line(monkeypatch, capsys):
    from jaxvit_interp.cli import _notes_as_lines

    monkeypatch.setattr("jaxvit_interp.execution.default_memory_budget", lambda: 64 << 20)
    monkeypatch.setattr(budget_module, "spare_host_bytes", lambda: 64 * GIB)
    with _notes_as_lines():
        for _ in range(3):  # every chunk plans its batches again
            plan_batches(DINOV2_NATIVE, Execution(), **NATIVE_SWEEP)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvit-interp: note: the default memory budget")
