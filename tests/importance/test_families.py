"""The engine on every architecture option: equal to one forward pass per pruned head.

Special tokens (distillation, registers) change which rows the last block must compute and where
the patches start; layer scale is folded into the projections the engine's shortcuts read; SwiGLU
doubles the first MLP product; mean and attention pooling read every patch; backbones have only
the metrics that need no logits, and a linear probe gives them the rest.
"""

import numpy as np
import pytest
from families import CASES, SMALL  # noqa: I001  (tests/model is on sys.path via conftest)

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import engine, head_importance, partial_pruning
from jaxvit_interp.model import PRUNING_MODES, AttentionEdit, LinearProbe, run_model, with_probe

QUIET = Execution(progress=False)

LABEL_METRICS = ("prob", "prob_drop", "kl", "layer", "repr", "flip")


def _check(result, ref, metrics):
    for m in metrics:
        got = result[m]
        if m == "flip":
            clear = ref["margin"] > 1e-4
            np.testing.assert_array_equal(got[clear], ref["flip"][clear].astype(bool))
        else:
            np.testing.assert_allclose(got, ref[m], rtol=2e-4, atol=2e-5, err_msg=m)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_one_forward_per_head(case, random_model, random_images, reference_importance):
    seed = sorted(CASES).index(case)
    config, params = random_model(seed, **SMALL, **CASES[case])
    images = random_images(config, 5, seed)
    metrics = LABEL_METRICS if config.num_classes else ("layer", "repr")
    result = head_importance(
        config, params, images, metrics=metrics, execution=Execution(batch_size=3, progress=False)
    )
    ref = reference_importance(config, params, images)
    _check(result, ref, metrics)
    if not config.num_classes:
        assert result.probs.shape == (5, 0) and (result.predictions == -1).all()


def test_distilled_last_block_runs_two_queries(random_model):
    """CLS and the distillation token both reach DeiT's logits, so both rows of the last block."""
    config, _ = random_model(0, **SMALL, **CASES["deit_distilled"])
    from jaxvit_interp.model import blocks

    assert blocks.readout_tokens(config) == 2
    assert blocks.readout_tokens(config.replace(distillation_head=False)) == 1
    assert blocks.readout_tokens(config.replace(classifier="gap", distillation_head=False)) is None


def test_one_compiled_program_for_a_register_model(random_model, random_images):
    config, params = random_model(
        9, **SMALL, **{**CASES["dinov2_registers_swiglu"], "num_classes": 7}
    )
    before = engine.ablation_batch._cache_size()
    for count in (5, 3):
        head_importance(
            config,
            params,
            random_images(config, count, count),
            execution=Execution(batch_size=2, progress=False),
        )
    assert engine.ablation_batch._cache_size() == before + 1


def test_partial_pruning_with_registers(random_model, random_images, softmax):
    config, params = random_model(4, **SMALL, **CASES["dinov2_registers_swiglu"])
    images = random_images(config, 3, 4)
    labels = np.array([0, 3, 1])
    heads = [(1, 0), (2, 1)]
    result = partial_pruning(config, params, images, labels, heads, top_k=2, execution=QUIET)
    assert result.modes == PRUNING_MODES
    for i, (layer, head) in enumerate(heads):
        for j, mode in enumerate(PRUNING_MODES):
            edit = AttentionEdit.partial_pruning(config, mode, layer, head)
            logits = np.asarray(run_model(config, params, images, attention_edit=edit).logits)
            want = softmax(logits.astype(np.float64))[np.arange(3), labels]
            np.testing.assert_allclose(result.prob[:, i, j], want, rtol=1e-4, atol=1e-5)


def test_backbone_refuses_logit_metrics_by_name(random_model, random_images, monkeypatch):
    config, params = random_model(1, **SMALL, **CASES["clip_backbone"])
    images = random_images(config, 2, 1)

    def no_work(*args, **kwargs):
        raise AssertionError("model work started before the input was checked")

    from jaxvit_interp.importance import ablation, partial

    monkeypatch.setattr(ablation, "run_engine", no_work)
    monkeypatch.setattr(partial, "run_engine", no_work)
    with pytest.raises(InputError, match=r"'kl', 'taylor' need the model's logits.*backbone"):
        head_importance(
            config,
            params,
            images,
            metrics=("kl", "repr", "taylor"),
            execution=QUIET,
        )
    with pytest.raises(InputError, match="metric.*'prob'.*'layer' and 'repr' only"):
        head_importance(config, params, images, execution=QUIET)
    with pytest.raises(InputError, match="labels name classes"):
        head_importance(config, params, images, [0, 1], metrics=("repr",), execution=QUIET)
    with pytest.raises(InputError, match="partial_pruning.*'prob'"):
        partial_pruning(config, params, images, execution=QUIET)


def test_probe_turns_a_backbone_into_a_classifier(
    tmp_path, random_model, random_images, reference_importance
):
    config, params = random_model(2, **SMALL, **CASES["siglip_backbone"])
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(config.pooled_size, 4)).astype(np.float32)
    bias = rng.normal(size=(4,)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", kernel=kernel, bias=bias, class_names=["a", "b", "c", "d"])
    probe = LinearProbe.load(tmp_path / "probe.npz")
    probed_config, probed = with_probe(config, params, probe)
    assert probed_config.num_classes == 4 and probed_config.class_names == ("a", "b", "c", "d")
    images = random_images(config, 4, 2)
    out = run_model(probed_config, probed, images)
    pooled = np.asarray(run_model(config, params, images).pre_logits)
    np.testing.assert_allclose(out.logits, pooled @ kernel + bias, rtol=1e-5, atol=1e-5)
    labels = np.array([0, 1, 2, 3])
    result = head_importance(
        probed_config,
        probed,
        images,
        labels,
        metrics=LABEL_METRICS,
        execution=QUIET,
    )
    _check(result, reference_importance(probed_config, probed, images, labels), LABEL_METRICS)


def test_probe_of_the_wrong_width_is_refused(tmp_path, random_model):
    config, params = random_model(3, **SMALL, **CASES["clip_backbone"])  # pooled width 6
    with pytest.raises(InputError, match=r"reads vectors of width 16.*pooled output has width 6"):
        with_probe(config, params, LinearProbe(np.zeros((16, 3)), np.zeros(3)))
    with pytest.raises(InputError, match="bias has shape"):
        LinearProbe(np.zeros((6, 3)), np.zeros(4))
    np.savez(tmp_path / "bad.npz", weights=np.zeros((6, 3)))
    with pytest.raises(InputError, match="holds no kernel or bias"):
        LinearProbe.load(tmp_path / "bad.npz")
