"""Set ablations against one plain forward pass per set with that head mask."""

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.importance import ablate, engine
from jaxvit_interp.model import run_model

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
    ref = _reference(config, params, images, sets, softmax)
    # Batches of 2 images (a padded last batch) exercise the batch boundaries.
    got = ablate(config, params, images, sets, batch_size=2, progress=False)
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


def test_slot_groups_under_a_small_budget_give_the_same_answer(random_model, random_images):
    """Sets cut into several slot groups (a tight memory budget) equal one group."""
    config, params = random_model(3, **CASES["token"])
    images = random_images(config, 3, 4)
    sets = _random_sets(config, 12, np.random.default_rng(5))
    whole = ablate(config, params, images, sets, progress=False)
    budget = engine.params_bytes(params)
    while True:  # the smallest budget (within 2%) the planner accepts: one slot at a time
        try:
            plan = engine.plan_batches(
                config,
                num_images=3,
                num_slots=12,
                spawn_layers=(0, 1, 2, 3),
                with_taylor=False,
                need_streams=True,
                memory_budget_bytes=budget,
                fixed_bytes=engine.params_bytes(params),
                step_tokens=engine.default_step_tokens(),
            )
            break
        except InputError:
            budget = int(budget * 1.02)
    cut = ablate(config, params, images, sets, memory_budget_bytes=budget, progress=False)
    assert plan.num_slot_groups > 1 or plan.num_batches > 1
    # Different groupings round differently in float32; KL is a difference of logs.
    np.testing.assert_allclose(cut.kl, whole.kl, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(cut.prob, whole.prob, rtol=1e-4, atol=1e-6)


def test_single_head_sets_match_head_importance(random_model, random_images):
    from jaxvit_interp.importance import head_importance

    config, params = random_model(7, **CASES["token"])
    images = random_images(config, 4, 8)
    heads = [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
    sets = ablate(config, params, images, [[x] for x in heads], progress=False)
    single = head_importance(config, params, images, metrics=("kl", "prob"), progress=False)
    flat = single.kl.reshape(len(images), -1)
    np.testing.assert_allclose(sets.kl, flat, rtol=1e-4, atol=1e-6)


def test_bad_sets_are_refused_by_name(random_model, random_images):
    config, params = random_model(1, **CASES["token"])
    images = random_images(config, 2, 2)
    with pytest.raises(InputError, match="head set 1"):
        ablate(config, params, images, [[(0, 0)], [(9, 0)]], progress=False)
    with pytest.raises(InputError, match="prunes no head"):
        ablate(config, params, images, np.ones((2, 4, 3)), progress=False)
    with pytest.raises(InputError, match="empty"):
        ablate(config, params, images, [], progress=False)
    with pytest.raises(InputError, match="taylor"):
        ablate(config, params, images, [[(0, 0)]], metrics=("taylor",), progress=False)
