"""Set ablations against one plain forward pass per set with that head mask."""

import numpy as np
import pytest

from jaxvit_interp.budget import params_bytes
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import ablate, set_engine
from jaxvit_interp.importance.sets import _set_reduce, head_masks
from jaxvit_interp.model import ViTConfig, run_model

QUIET = Execution(progress=False)

CASES = {
    "token": dict(
        image_size=(8, 12),
        patch_size=(4, 4),
        hidden_size=18,
        num_layers=4,
        num_heads=3,
        mlp_dim=24,
        num_classes=5,
    ),
    "gap_registers_layer_scale": dict(
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        mlp_dim=12,
        num_classes=4,
        classifier="gap",
        num_register_tokens=2,
        layer_scale=True,
    ),
    "deit_distilled": dict(
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        mlp_dim=24,
        num_classes=5,
        distillation_token=True,
        distillation_head=True,
    ),
}


def _random_sets(config, count, rng):
    """Random non-empty head sets of 1 to 4 heads across the layers, as (layer, head) pairs."""
    heads = [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
    sets = []
    for _ in range(count):
        size = int(rng.integers(1, 5))
        picks = rng.choice(len(heads), size=size, replace=False)
        sets.append([heads[i] for i in picks])
    return sets


def _reference(config, params, images, sets, softmax):
    """prob, kl, layer, repr, flip and the pruned top-1 per image and set, in float64 numpy."""
    full = run_model(config, params, images)
    logits = np.asarray(full.logits, np.float64)
    p = softmax(logits)
    pred = logits.argmax(-1)
    rows = np.arange(len(images))
    z = np.asarray(full.pre_logits, np.float64)
    out = {m: np.zeros((len(images), len(sets))) for m in ("prob", "kl", "layer", "repr", "top1")}
    out["margin"] = np.zeros((len(images), len(sets)))
    for i, heads in enumerate(sets):
        mask = np.ones((config.num_layers, config.num_heads), np.float32)
        for layer, h in heads:
            mask[layer, h] = 0
        low = min(layer for layer, _ in heads)
        o = run_model(config, params, images, head_mask=mask)
        lp = np.asarray(o.logits, np.float64)
        q = softmax(lp)
        zp = np.asarray(o.pre_logits, np.float64)
        block = np.asarray(full.block_outputs, np.float64)[:, low]
        diff = block - np.asarray(o.block_outputs, np.float64)[:, low]
        out["prob"][:, i] = q[rows, pred]
        out["kl"][:, i] = (p * (np.log(p) - np.log(q))).sum(-1)
        flat = lambda a: a.reshape(len(images), -1)  # noqa: E731
        out["layer"][:, i] = np.linalg.norm(flat(diff), axis=1) / np.linalg.norm(
            flat(block), axis=1
        )
        out["repr"][:, i] = 1 - (z * zp).sum(-1) / (
            np.linalg.norm(z, axis=-1) * np.linalg.norm(zp, axis=-1)
        )
        out["top1"][:, i] = lp.argmax(-1)
        top2 = np.sort(lp, axis=-1)[:, -2:]
        out["margin"][:, i] = top2[:, 1] - top2[:, 0]
    out["p"], out["pred"] = p, pred
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_set_ablations_equal_a_forward_pass_with_the_mask(
    case, random_model, random_images, softmax
):
    seed = int(np.random.default_rng().integers(1 << 30))
    rng = np.random.default_rng(seed)
    config, params = random_model(seed, **CASES[case])
    images = random_images(config, 5, seed + 1)
    sets = _random_sets(config, 9, rng)
    sets.append(list(sets[0]))  # a repeated set shares its stream
    ref = _reference(config, params, images, sets, softmax)
    # Batches of 2 images (a padded last batch) exercise the batch boundaries.
    got = ablate(config, params, images, sets, execution=Execution(batch_size=2, progress=False))
    tol = dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got.prob, ref["prob"], **tol, err_msg=f"seed {seed}")
    np.testing.assert_allclose(
        got.prob_drop, ref["p"][np.arange(5), ref["pred"]][:, None] - ref["prob"], **tol
    )
    np.testing.assert_allclose(got.kl, ref["kl"], rtol=2e-3, atol=2e-5, err_msg=f"seed {seed}")
    np.testing.assert_allclose(got.layer, ref["layer"], **tol, err_msg=f"seed {seed}")
    np.testing.assert_allclose(got.repr, ref["repr"], rtol=2e-3, atol=2e-5, err_msg=f"seed {seed}")
    clear = ref["margin"] > 1e-4
    assert np.array_equal(got.predictions_pruned[clear], ref["top1"][clear]), f"seed {seed}"
    assert np.array_equal(got.flip[clear], (ref["top1"] != ref["pred"][:, None])[clear])
    np.testing.assert_array_equal(got.predictions, ref["pred"])


def test_set_chunks_under_a_small_budget_give_the_same_answer(random_model, random_images):
    """Sets cut into several chunks (a tight memory budget), each its own stream tree, equal one
    chunk."""
    config, params = random_model(3, **CASES["token"])
    images = random_images(config, 3, 4)
    sets = _random_sets(config, 12, np.random.default_rng(5))
    whole = ablate(config, params, images, sets, execution=QUIET)
    masks = head_masks(config, sets)
    budget = params_bytes(params)
    while True:  # the smallest budget (within 2%) the planner accepts
        try:
            cut = set_engine.run_sets(
                config,
                params,
                images,
                None,
                masks,
                _set_reduce,
                execution=Execution(memory_budget_bytes=budget, progress=False),
            )
            break
        except InputError:
            budget = int(budget * 1.02)
    assert len(cut.plans) > 1
    # Different layouts round differently in float32; KL is a difference of logs.
    np.testing.assert_allclose(cut.per_set["kl"], whole.kl, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(cut.per_set["prob"], whole.prob, rtol=1e-4, atol=1e-6)


def test_stream_layout_shares_layers_and_pads_to_few_sizes():
    """Pairs branch off the lower head's single at the upper head's layer; duplicates share a
    stream; stream counts are padded to bucket sizes by starting later streams early; every
    stream's source agrees with it on every layer below where it starts."""
    assert [set_engine.stream_bucket(n) for n in (0, 1, 8, 9, 11, 16, 17, 33)] == [
        0,
        1,
        8,
        10,
        12,
        16,
        20,
        40,
    ]
    assert set_engine.stream_bucket(5, step=2) == 6
    L, H = 4, 3
    singles = [[(0, 1)], [(2, 0)], [(3, 2)]]
    pairs = [[(0, 1), (2, 0)], [(0, 1), (3, 2)], [(2, 0), (3, 2)], [(2, 0), (2, 1)]]
    config = ViTConfig(
        image_size=(8, 8), patch_size=(4, 4), hidden_size=6, num_layers=L, num_heads=H, mlp_dim=4
    )
    masks = head_masks(config, singles + pairs + [[(2, 0), (0, 1)]])  # a repeat of pairs[0]
    plan = set_engine.plan_streams(masks, step=2)
    # (0,1)+(2,0) branches off the single (0,1) at layer 2, (0,1)+(3,2) at 3, (2,0)+(3,2) off
    # (2,0) at 3; two heads of one layer start from the unpruned pass there.
    assert plan.branch.tolist() == [0, 2, 3, 2, 3, 3, 2, 2]
    assert plan.position[3] == plan.position[7]
    assert plan.capacity == (2, 2, 4, 8)  # 1, 1, 4, 7 streams padded to multiples of 2
    # Replay the layout: each stream's source must carry the same mask below its start.
    alive = 0
    for layer, (cap, src) in enumerate(zip(plan.capacity, plan.sources)):
        for k, s in zip(range(alive, cap), src):
            want = plan.masks[k, :layer]
            have = np.ones_like(want) if s == alive else plan.masks[s, :layer]
            assert np.array_equal(want, have), (layer, k, s)
        alive = cap
    np.testing.assert_array_equal(plan.masks[plan.position], masks)


def test_a_repeated_layout_reuses_the_compiled_layers(random_model, random_images, softmax):
    """Sets of another step with the same stream counts per layer (a set count that is not a
    bucket size, padded) compile nothing new, and stay exact."""
    config, params = random_model(11, **CASES["token"])
    images = random_images(config, 2, 12)
    first = [[(1, 0)], [(1, 0), (3, 1)], [(2, 2)], [(0, 1), (2, 0)], [(3, 0)]]
    second = [[(1, 2)], [(1, 2), (3, 0)], [(2, 1)], [(0, 2), (2, 1)], [(3, 2)]]
    ablate(config, params, images, first, execution=QUIET)
    compiled = set_engine._layer_step._cache_size()
    got = ablate(config, params, images, second, metrics=("prob",), execution=QUIET)
    assert set_engine._layer_step._cache_size() == compiled
    ref = _reference(config, params, images, second, softmax)
    np.testing.assert_allclose(got.prob, ref["prob"], rtol=2e-4, atol=2e-5)


def test_single_head_sets_match_head_importance(random_model, random_images):
    from jaxvit_interp.importance import head_importance

    config, params = random_model(7, **CASES["token"])
    images = random_images(config, 4, 8)
    heads = [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
    sets = ablate(config, params, images, [[x] for x in heads], execution=QUIET)
    single = head_importance(config, params, images, metrics=("kl", "prob"), execution=QUIET)
    flat = single.kl.reshape(len(images), -1)
    np.testing.assert_allclose(sets.kl, flat, rtol=1e-4, atol=1e-6)


def test_bad_sets_are_refused_by_name(random_model, random_images):
    config, params = random_model(1, **CASES["token"])
    images = random_images(config, 2, 2)
    with pytest.raises(InputError, match="head set 1"):
        ablate(config, params, images, [[(0, 0)], [(9, 0)]], execution=QUIET)
    with pytest.raises(InputError, match="prunes no head"):
        ablate(config, params, images, np.ones((2, 4, 3)), execution=QUIET)
    with pytest.raises(InputError, match="empty"):
        ablate(config, params, images, [], execution=QUIET)
    with pytest.raises(InputError, match="taylor"):
        ablate(
            config,
            params,
            images,
            [[(0, 0)]],
            metrics=("taylor",),
            execution=QUIET,
        )
