"""Every ablation metric of the engine against one full forward pass per pruned head."""

import numpy as np
import pytest

from jaxvit_interp import budget
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import engine, head_importance, kernels
from jaxvit_interp.quantities import ABLATION_METRICS

# Small configs covering both classifiers, a representation layer, exact GELU, no q/k/v bias,
# one channel, non-square images and head counts that chunk unevenly.
CASES = {
    "token": dict(
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        mlp_dim=32,
        num_classes=5,
    ),
    "gap_repr": dict(
        image_size=(8, 12),
        patch_size=(4, 4),
        channels=1,
        hidden_size=20,
        num_layers=2,
        num_heads=5,
        mlp_dim=24,
        num_classes=7,
        classifier="gap",
        representation_size=6,
        gelu_approximate=False,
        qkv_bias=False,
    ),
    "token_repr_deep": dict(
        image_size=(12, 12),
        patch_size=(6, 6),
        hidden_size=24,
        num_layers=4,
        num_heads=3,
        mlp_dim=40,
        num_classes=3,
        representation_size=8,
        layer_norm_eps=1e-12,
    ),
}


_PLAN_CHUNKS = budget.plan_batches  # unpatched, for the budget search


def _budget_for_slots(config, params, slots, with_taylor=True):
    """The smallest memory budget (within 0.5%) under which the engine cuts each layer's heads into
    chunks of ``slots``."""
    least = budget.params_bytes(params)
    while True:
        try:
            plan = _PLAN_CHUNKS(
                config,
                Execution(memory_budget_bytes=least),
                num_images=1,
                num_slots=config.num_heads,
                spawn_layers=tuple(range(config.num_layers)),
                with_taylor=with_taylor,
                need_streams=True,
                fixed_bytes=budget.params_bytes(params),
            )
            if plan.slots_per_group >= slots:
                return least
        except ValueError:
            pass
        least = int(least * 1.005) + 1


@pytest.fixture
def plans(monkeypatch):
    """The chunk plans the engine actually used."""
    used = []
    plan_batches = engine.plan_batches

    def spy(*args, **kwargs):
        used.append(plan_batches(*args, **kwargs))
        return used[-1]

    monkeypatch.setattr(engine, "plan_batches", spy)
    return used


def _check(result, ref, metrics):
    for m in metrics:
        got = result[m]
        assert got.shape == ref["prob"].shape, m
        if m == "flip":
            clear = ref["margin"] > 1e-4  # no near-tie in the pruned logits
            np.testing.assert_array_equal(got[clear], ref["flip"][clear].astype(bool))
            assert clear.mean() > 0.9
        else:
            np.testing.assert_allclose(got, ref[m], rtol=2e-4, atol=2e-5, err_msg=m)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_one_forward_per_head(
    case, random_model, random_images, reference_importance, plans, monkeypatch
):
    seed = sorted(CASES).index(case)
    if case == "token_repr_deep":
        # Steps of 25 tokens (5 sequences of 5 tokens) through each block: with 2 images per
        # chunk, 1 or 2 streams per step, so the stepped (lax.map) path runs too.
        monkeypatch.setattr(budget, "default_step_tokens", lambda: 25)
    config, params = random_model(seed, **CASES[case])
    images = random_images(config, 7, seed)
    labels = np.random.default_rng(seed).integers(0, config.num_classes, 7)
    with_labels = case != "gap_repr"
    # Chunk boundaries: "token" cuts each layer's 2 heads into single-head chunks; "gap_repr" cuts
    # 5 heads into chunks of 3 (the last padded); "token_repr_deep" takes 7 images in chunks of
    # at most 3 (balanced to 4 chunks of 2, the last padded).
    slots = {"token": 1, "gap_repr": 3, "token_repr_deep": None}[case]
    # The backward pass of taylor outweighs the sweep of these tiny models, so a budget could
    # never split their heads; only the case without a budget computes it.
    with_taylor = case == "token_repr_deep"
    metrics = ABLATION_METRICS | {"layer"} | ({"taylor"} if with_taylor else set())
    tight = None if slots is None else _budget_for_slots(config, params, slots, with_taylor)
    result = head_importance(
        config,
        params,
        images,
        labels if with_labels else None,
        metrics=metrics,
        execution=Execution(batch_size=3, memory_budget_bytes=tight, progress=False),
    )
    (plan,) = plans
    padded_images = plan.images_per_batch * plan.num_batches
    padded_slots = plan.slots_per_group * plan.num_slot_groups
    expected = {"token": (7, 1, 2), "gap_repr": (7, 3, 6), "token_repr_deep": (8, 3, 3)}[case]
    assert (padded_images, plan.slots_per_group, padded_slots) == expected, plan
    assert case != "token_repr_deep" or plan.streams_per_step == 2, plan
    ref = reference_importance(config, params, images, labels if with_labels else None)
    _check(result, ref, ["prob", "prob_drop", "kl", "layer", "repr", "flip"])
    np.testing.assert_allclose(result.probs, ref["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.predictions, ref["predictions"])
    np.testing.assert_array_equal(result.labels, ref["labels"])
    assert result.labels_are_predictions == (not with_labels)
    if with_taylor:
        assert result.taylor.shape == (7, config.num_layers, config.num_heads)


def test_metric_subsets_skip_work_and_agree(random_model, random_images, reference_importance):
    config, params = random_model(7, **CASES["token"])
    images = random_images(config, 5, 7)
    ref = reference_importance(config, params, images)
    only_layer = head_importance(
        config, params, images, metrics=("layer",), execution=Execution(progress=False)
    )
    assert only_layer.metrics == ("layer",)
    assert all(getattr(only_layer, m) is None for m in ABLATION_METRICS | {"taylor"})
    _check(only_layer, ref, ["layer"])
    with pytest.raises(KeyError, match="was not computed"):
        only_layer["kl"]
    some = head_importance(
        config, params, images, metrics=("kl", "flip"), execution=Execution(progress=False)
    )
    _check(some, ref, ["kl", "flip"])
    assert some.layer is None and some.taylor is None


def test_one_compiled_program_for_every_chunk(random_model, random_images):
    """Heads are data: many head and image chunks reuse one trace of each program."""
    # num_classes differs from every other test's model, so nothing here is cached already.
    config, params = random_model(3, **{**CASES["gap_repr"], "num_classes": 4})
    tight = _budget_for_slots(config, params, 2)
    full_before = kernels.full_pass._cache_size()
    sweep_before = engine.ablation_batch._cache_size()
    head_importance(
        config,
        params,
        random_images(config, 5, 0),
        execution=Execution(batch_size=2, memory_budget_bytes=tight, progress=False),
    )
    assert kernels.full_pass._cache_size() == full_before + 1
    assert engine.ablation_batch._cache_size() == sweep_before + 1
    # A different image count with the same chunk shapes compiles nothing new.
    head_importance(
        config,
        params,
        random_images(config, 3, 1),
        execution=Execution(batch_size=2, memory_budget_bytes=tight, progress=False),
    )
    assert kernels.full_pass._cache_size() == full_before + 1
    assert engine.ablation_batch._cache_size() == sweep_before + 1
