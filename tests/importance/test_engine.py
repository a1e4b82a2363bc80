"""Chunk planning: balanced chunks, and compiled programs that really fit the memory budget;
the engines' shared kernels against the model's own block."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp import budget
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import engine, kernels
from jaxvit_interp.importance.ablation import _importance_reduce
from jaxvit_interp.model import blocks
from jaxvit_interp.model.vit import block_params


@pytest.mark.parametrize(
    "total, most, multiple, expected",
    [
        (7, 3, 1, (2, 4)),  # 8 slots of work beats 9
        (8, 3, 1, (2, 4)),
        (1000, 7, 1, (5, 200)),
        (5, 4, 1, (3, 2)),
        (8, 100, 1, (8, 1)),  # never larger than needed
        (10, 4, 4, (4, 3)),  # multiples of the device count
        (1, 4, 4, (4, 1)),
        (6, 3, 4, (4, 2)),  # at least one image per device
    ],
)
def test_even_split(total, most, multiple, expected):
    size, count = budget._even_split(total, most, multiple)
    assert (size, count) == expected
    assert size * count >= total and size % multiple == 0


def _compiled_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return (
        m.temp_size_in_bytes
        + m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
    )


@pytest.mark.parametrize("budget_mib, step_tokens", [(1.02, None), (24, None), (24, 64)])
def test_planned_batches_fit_the_budget(budget_mib, step_tokens, random_model):
    """XLA's own memory analysis of both programs, at the planned shapes, stays under budget."""
    config, params = random_model(
        5,
        image_size=(32, 32),
        patch_size=(8, 8),
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        mlp_dim=128,
        num_classes=10,
    )
    given = int(budget_mib * (1 << 20))
    layers = tuple(range(config.num_layers))
    plan = budget.plan_batches(
        config,
        Execution(memory_budget_bytes=given),
        num_images=64,
        num_slots=config.num_heads,
        spawn_layers=layers,
        with_taylor=True,
        need_streams=True,
        fixed_bytes=budget.params_bytes(params),
        step_tokens=step_tokens,
    )
    assert plan.estimated_bytes <= given
    # The small budget fits one image with half of each layer's heads at a time.
    assert (plan.num_slot_groups > 1) == (budget_mib < 2)
    images = jnp.zeros((plan.images_per_batch, *config.image_size, config.channels))
    full = kernels.full_pass.lower(config, params, images, None, True).compile()
    out, y, _ = kernels.full_pass(config, params, images, None, False)
    heads = jnp.zeros((config.num_layers, plan.slots_per_group), jnp.int32)
    sweep = engine.ablation_batch.lower(
        config,
        params,
        out,
        y,
        heads,
        kernels.fold_mlp_inputs(params, layers),
        None,
        None,
        layers,
        _importance_reduce,
        True,
        plan.streams_per_step,
    ).compile()
    used = max(_compiled_bytes(full), _compiled_bytes(sweep))
    assert used <= given, (plan, used)
    # The plan is not wastefully cautious either: it uses a fair share of what it was given
    # (unless steps through a block, not memory, limit the chunk).
    if plan.num_batches > 1 and step_tokens is None:
        assert used > given / 8, (plan, used)


def test_a_refused_budget_names_the_least_budget_that_fits(rng):
    """The refusal's budget is the least whole MiB with which plan_batches accepts the model,
    found here by searching over budgets; the command line's flag and the value are named."""
    from jaxvit_interp.model import ViTConfig

    for _ in range(3):
        patch = int(rng.choice([2, 4]))
        grid = [int(g) for g in rng.integers(2, 9, 2)]
        heads = int(rng.integers(1, 5))
        config = ViTConfig(
            image_size=(grid[0] * patch, grid[1] * patch),
            patch_size=patch,
            hidden_size=8 * heads,
            num_layers=int(rng.integers(1, 5)),
            num_heads=heads,
            mlp_dim=int(rng.integers(8, 64)),
            num_classes=int(rng.integers(0, 6)),
            num_register_tokens=int(rng.integers(0, 3)),
        )
        kwargs = dict(
            num_images=int(rng.integers(1, 20)),
            num_slots=config.num_heads,
            spawn_layers=tuple(range(config.num_layers)),
            with_taylor=bool(rng.integers(2)),
            need_streams=True,
            fixed_bytes=int(rng.integers(0, 4 << 20)),
            step_tokens=int(rng.choice([64, 4096])),
        )

        def fits(size, kwargs=kwargs, config=config):
            try:
                budget.plan_batches(config, Execution(memory_budget_bytes=size), **kwargs)
            except budget.MemoryBudgetError:
                return False
            return True

        least = 1  # MiB: the least that fits, by bisection over whole MiB
        most = 1
        while not fits(most << 20):
            least, most = most, 2 * most
        while least < most:
            middle = (least + most) // 2
            least, most = (least, middle) if fits(middle << 20) else (middle + 1, most)
        refused_budget = (least - 1) << 20 or 1000
        with pytest.raises(budget.MemoryBudgetError) as refused:
            budget.plan_batches(config, Execution(memory_budget_bytes=refused_budget), **kwargs)
        assert refused.value.least_bytes == least << 20, config
        message = str(refused.value)
        assert f"--memory-budget-mb {least} " in message, message
        assert f"memory_budget_bytes={least << 20} " in message, message
        assert f"{config.num_tokens:,} tokens at " in message, message


def _fresh_small_model(random_model, **overrides):
    """A two-layer model with fresh random parameters."""
    fields = dict(
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=24,
        num_layers=2,
        num_heads=3,
        mlp_dim=40,
        num_classes=5,
    )
    return random_model(int(np.random.default_rng().integers(1 << 30)), **{**fields, **overrides})


@pytest.mark.parametrize("offset", [0.0, 50.0])
@pytest.mark.parametrize("gelu_approximate", [True, False])
def test_pruned_mlp_half_equals_the_plain_block_half(offset, gelu_approximate, random_model):
    """The folded first MLP product equals LayerNorm + MLP on the explicit pruned stream, also
    when the stream carries a large common offset (as trained ViTs' residual streams do)."""
    config, params = _fresh_small_model(random_model, gelu_approximate=gelu_approximate)
    rng = np.random.default_rng()
    layer, head = 1, int(rng.integers(config.num_heads))
    p = block_params(params, layer)
    u = rng.normal(size=(2, config.num_tokens, config.hidden_size)).astype(np.float32)
    u[..., :3] += offset  # outlier features
    u += offset / 10
    mixed = rng.normal(size=(2, config.num_tokens, config.head_dim)).astype(np.float32)
    w_out = p.out.kernel[head]
    delta = mixed @ w_out
    folded = kernels.fold_mlp_inputs(params, (layer,))[0, head]
    got = kernels.pruned_mlp_half(
        config, p, u, kernels.shared_mlp_input(p, u), delta, mixed, folded
    )
    want = blocks.mlp_half(config, p, jnp.asarray(u - delta))
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("queries", [1, 2])
def test_prefix_block_equals_the_first_rows_of_the_full_block(queries, random_model):
    for qkv_bias in (True, False):
        config, params = _fresh_small_model(random_model, image_size=(8, 12), qkv_bias=qkv_bias)
        p = block_params(params, 1)
        shape = (3, config.num_tokens, config.hidden_size)
        x = np.random.default_rng().normal(size=shape).astype(np.float32)
        got = kernels.prefix_block(config, p, jnp.asarray(x), queries)
        want = kernels.masked_block(config, p, jnp.asarray(x))[:, :queries]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # With a head mask (set ablations run the last block so): the same rows of the masked block.
        mask = jnp.asarray(np.random.default_rng().integers(0, 2, config.num_heads), jnp.float32)
        got = kernels.prefix_block(config, p, jnp.asarray(x), queries, head_mask=mask)
        want = kernels.masked_block(config, p, jnp.asarray(x), head_mask=mask)[:, :queries]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
