"""Training: better than a trivial model, best held-out epoch kept, early stopping, orbax
checkpoints that restore exactly, reuse on unchanged inputs, and refusal of unusable input."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxvit_interp.patterns import (
    MIN_PATTERNS,
    AutoencoderSettings,
    restore_autoencoder,
    train_autoencoder,
)


def test_beats_mean_pattern_and_keeps_best_epoch(planted, trained):
    _, patterns = planted
    model, _ = trained
    flat = patterns.reshape(-1, *patterns.shape[-2:])
    held = np.zeros(len(flat), bool)
    held[model.heldout_index] = True
    # Independent baseline: predict every held-out map as the mean training map.
    mean_map = flat[~held].mean(0)
    baseline = ((flat[held] - mean_map) ** 2).mean()
    error = model.reconstruction_error(flat[held]).mean()
    assert error < 0.25 * baseline, (error, baseline)
    # The kept parameters are those of the best held-out epoch, and its loss is recomputable.
    assert model.best_epoch == int(np.argmin(model.heldout_loss))
    np.testing.assert_allclose(error, model.heldout_loss[model.best_epoch], rtol=1e-4)
    assert 0 < len(model.heldout_index) < len(flat)
    assert len(model.train_loss) == len(model.heldout_loss) <= model.settings.max_epochs


def test_restore_reproduces_latents_exactly(planted, trained):
    _, patterns = planted
    model, workdir = trained
    restored = restore_autoencoder(workdir)
    assert restored.reused and restored.settings == model.settings
    assert restored.fingerprint == model.fingerprint
    assert np.array_equal(restored.encode(patterns), model.encode(patterns))
    assert np.array_equal(restored.heldout_index, model.heldout_index)
    assert restored.heldout_loss == model.heldout_loss and restored.best_epoch == model.best_epoch


def _mtimes(path):
    return {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, fs in os.walk(path) for p in fs}


def test_unchanged_inputs_reuse_the_saved_model(planted, trained, tmp_path):
    _, patterns = planted
    model, workdir = trained
    before = _mtimes(workdir)
    again = train_autoencoder(patterns, model.settings, workdir=workdir, progress=False)
    assert again.reused and _mtimes(workdir) == before  # nothing trained, nothing written
    assert np.array_equal(again.encode(patterns[:2]), model.encode(patterns[:2]))
    # Changed patterns or settings retrain, and replace the checkpoint.
    short = dataclasses.replace(model.settings, max_epochs=2)
    other = train_autoencoder(patterns, short, workdir=tmp_path, progress=False)
    assert not other.reused and len(other.train_loss) == 2
    changed = patterns.copy()
    changed[0, 0, 7, 7] += 0.01
    retrained = train_autoencoder(changed, short, workdir=tmp_path, progress=False)
    assert not retrained.reused and retrained.fingerprint != other.fingerprint
    assert restore_autoencoder(tmp_path).fingerprint == retrained.fingerprint


def test_early_stopping_stops_after_patience(planted):
    _, patterns = planted
    # With an impossible improvement threshold only the first epoch counts as best, so training
    # must stop exactly `patience` epochs later.
    settings = AutoencoderSettings(
        latent_dim=8, batch_size=32, learning_rate=3e-3, max_epochs=50, patience=3, min_delta=1e9
    )
    model = train_autoencoder(patterns, settings, progress=False)
    assert model.best_epoch == 0 and len(model.heldout_loss) == 4


def test_training_is_plain_adam_on_shuffled_batches_and_stops_at_max_steps(planted):
    """The trained parameters equal a plain optax loop written out here (same split, same
    shuffles), and ``max_steps`` ends training with the epoch that reaches it."""
    import jax
    import optax

    from jaxvit_interp.patterns.autoencoder import PatternAutoencoder
    from jaxvit_interp.patterns.train import _init_params

    _, patterns = planted
    x = patterns.reshape(-1, *patterns.shape[-2:])
    settings = AutoencoderSettings(
        latent_dim=4, features=(8,), batch_size=32, max_epochs=50, max_steps=20, patience=50
    )
    model = train_autoencoder(x, settings, progress=False)
    # 360 patterns, 72 held out: 9 steps an epoch, so 20 steps end with the third epoch.
    assert len(model.train_loss) == 3

    rng = np.random.default_rng(settings.seed)
    perm = rng.permutation(len(x))
    held, train = perm[:72], perm[72:]
    module = PatternAutoencoder(shape=x.shape[1:], latent_dim=4, features=(8,))
    params = _init_params(module, settings.seed)  # the same start; the loop is what is checked
    tx = optax.adam(settings.learning_rate)
    opt_state = tx.init(params)

    def loss(params, batch):
        recon, _ = module.apply({"params": params}, batch)
        return ((recon - batch) ** 2).mean()

    best = (np.inf, None)
    for _ in range(3):
        order = rng.permutation(len(train))[: 9 * 32].reshape(9, 32)
        for idx in order:
            grads = jax.grad(loss)(params, x[train][idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        held_loss = float(loss(params, x[np.sort(held)]))
        if held_loss < best[0]:
            best = (held_loss, params)
    np.testing.assert_allclose(model.heldout_loss[model.best_epoch], best[0], rtol=1e-4)
    for got, want in zip(jax.tree.leaves(model.params), jax.tree.leaves(best[1]), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_unusable_patterns_are_refused(planted):
    _, patterns = planted
    flat = patterns.reshape(-1, *patterns.shape[-2:])
    with pytest.raises(ValueError, match=f"{MIN_PATTERNS - 1} patterns are too few"):
        train_autoencoder(flat[: MIN_PATTERNS - 1], progress=False)
    with pytest.raises(ValueError, match="got 0 held out"):
        train_autoencoder(flat[:40], AutoencoderSettings(heldout_fraction=0.01), progress=False)
    bad = flat[:40].copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"1 NaN or infinite value\(s\), first at flattened index \(3, 2, 1\)"
    ):
        train_autoencoder(bad, progress=False)
    with pytest.raises(ValueError, match=r"heldout_fraction must be a number in \(0, 1\), got 1.0"):
        AutoencoderSettings(heldout_fraction=1.0)


def test_restore_and_encode_name_bad_input(trained, tmp_path):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="no pattern autoencoder checkpoint"):
        restore_autoencoder(tmp_path)
    with pytest.raises(ValueError, match=r"this autoencoder takes \[\.\.\., 15, 15\]"):
        model.encode(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 8\]"):
        model.decode(np.zeros((2, 5)))


def test_data_parallel_training_equals_one_device(tmp_path):
    """Two host devices (a process of its own: the device count is fixed when JAX starts)
    train the same model as one device, to float32 rounding."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import numpy as np
            from jaxvit_interp.parallel import all_devices_mesh
            from jaxvit_interp.patterns import AutoencoderSettings, train_autoencoder
            rng = np.random.default_rng(0)
            x = rng.uniform(size=(96, 15, 15)).astype(np.float32)
            settings = AutoencoderSettings(latent_dim=4, features=(8,), batch_size=16, max_epochs=3)
            model = train_autoencoder(x, settings, mesh=all_devices_mesh(), progress=False)
            np.save(sys.argv[1], model.encode(x))
            """
        )
    )

    def latents(devices: int) -> np.ndarray:
        flags = (
            f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        )
        env = {**os.environ, "XLA_FLAGS": flags.strip()}
        out = tmp_path / f"latents-{devices}.npy"
        run = subprocess.run(
            [sys.executable, script, out], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
        return np.load(out)

    np.testing.assert_allclose(latents(2), latents(1), rtol=1e-4, atol=1e-5)
