"""Images sharded over 4 (host-platform) devices give the single-device results, for every
ablation kind (a resample ablation's reference images sharded with them)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os
    import jax, numpy as np
    from jax.sharding import Mesh
    from jaxvit_interp import budget
    from jaxvit_interp.execution import Execution
    from jaxvit_interp.importance import ablate, driver, head_importance, partial_pruning
    from jaxvit_interp.model import ViTConfig, init_params

    assert jax.device_count() == 4, jax.devices()
    config = ViTConfig(image_size=(8, 8), patch_size=(4, 4), hidden_size=16, num_layers=2,
                       num_heads=2, mlp_dim=24, num_classes=5, representation_size=6)
    params = jax.tree_util.tree_map(
        lambda a: a + 0.1 * np.random.default_rng(a.size).normal(size=a.shape).astype(np.float32),
        init_params(config, 0))
    rng = np.random.default_rng(1)
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "replica"))
    # Record how the engines' unpruned pass lays out its activations.
    shardings = []
    full_pass = driver.full_pass
    def spy(*args, **kwargs):
        out = full_pass(*args, **kwargs)
        shardings.append(out[0].residual.sharding)
        return out
    driver.full_pass = spy
    # Steps of two 5-token sequences: with one image per device, two streams per step.
    budget.default_step_tokens = lambda: 10
    # 6 images in chunks of 4 over 4 devices: one image per device, the second chunk padded.
    four = Execution(batch_size=4, mesh=mesh, progress=False)
    sharded = head_importance(config, params, images, labels, execution=four)
    assert len(shardings) == 2
    assert all(len(s.device_set) == 4 and not s.is_fully_replicated for s in shardings), shardings
    single = head_importance(config, params, images, labels, execution=Execution(progress=False))
    for m in single.metrics:
        a, b = sharded[m], single[m]
        if m == "flip":
            assert (a == b).all(), m
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=m)
    np.testing.assert_allclose(sharded.probs, single.probs, rtol=1e-6, atol=1e-7)
    p_sharded = partial_pruning(
        config, params, images, labels, [(1, 0)], execution=Execution(mesh=mesh, progress=False))
    p_single = partial_pruning(
        config, params, images, labels, [(1, 0)], execution=Execution(progress=False))
    np.testing.assert_allclose(p_sharded.prob, p_single.prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_sharded.top_probs, p_single.top_probs, rtol=1e-5, atol=1e-6)
    # The set engine runs its batches through the same driver, sharded alike.
    sets = [[(0, 1)], [(0, 0), (1, 1)], [(1, 0)]]
    del shardings[:]
    s_sharded = ablate(config, params, images, sets, labels, execution=four)
    assert len(shardings) == 2 and all(len(s.device_set) == 4 for s in shardings), shardings
    s_single = ablate(config, params, images, sets, labels, execution=Execution(progress=False))
    for m in ("prob", "kl", "layer", "repr"):
        np.testing.assert_allclose(s_sharded[m], s_single[m], rtol=1e-5, atol=1e-6, err_msg=m)
    # Resample: each image's reference is sharded with it, and so is the table of clean head
    # outputs made from it; a mean's table is on every device.
    from jaxvit_interp.importance import replacement
    tables = []
    clean_slot_mixed = replacement.clean_slot_mixed
    def spy_table(*args, **kwargs):
        out = clean_slot_mixed(*args, **kwargs)
        tables.append(out.sharding)
        return out
    replacement.clean_slot_mixed = spy_table
    reference = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    for kind in ("resample", "mean"):
        del tables[:]
        options = dict(ablation=kind, reference=reference)
        h_sharded = head_importance(config, params, images, labels, **options, execution=four)
        if kind == "resample":
            assert len(tables) == 2, tables
            assert all(len(t.device_set) == 4 and not t.is_fully_replicated for t in tables)
        h_single = head_importance(config, params, images, labels, **options,
                                   execution=Execution(progress=False))
        s_sharded = ablate(config, params, images, sets, labels, **options, execution=four)
        s_single = ablate(config, params, images, sets, labels, **options,
                          execution=Execution(progress=False))
        for m in ("prob", "kl", "layer", "repr"):
            np.testing.assert_allclose(h_sharded[m], h_single[m], rtol=1e-5, atol=1e-6,
                                       err_msg=kind + m)
            np.testing.assert_allclose(s_sharded[m], s_single[m], rtol=1e-5, atol=1e-6,
                                       err_msg=kind + m)
    plan = budget.plan_batches(config, Execution(batch_size=5, mesh=mesh), num_images=6,
                               num_slots=2, spawn_layers=(0, 1), with_taylor=True,
                               need_streams=True)
    assert plan.images_per_batch % 4 == 0, plan
    # The four CPU devices share the host's memory, so they share its default budget.
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert budget.default_memory_budget() == min(5 << 28, physical // 16) // 4
    print("SHARDED-OK")
    """
)


def test_sharded_equals_single_device():
    env = dict(os.environ)
    # The flag must be set before jax is imported, hence a fresh interpreter.
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SHARDED-OK" in done.stdout
