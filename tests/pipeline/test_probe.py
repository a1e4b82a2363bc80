"""Backbones on the command line: which metrics exist, and a linear probe for the rest."""

import numpy as np
import pytest
from clitools import AE_FAST, FAST, TINY
from PIL import Image

from jaxvit_interp import init_params, save_checkpoint
from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.cli import main
from jaxvit_interp.quantities import METRIC_NAMES

# A CLIP-like tower: no classifier, a projection to 6 the probe reads.
BACKBONE = TINY.replace(num_classes=0, projection_dim=6, pre_norm=True)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone") / "tower"
    save_checkpoint(path, BACKBONE, init_params(BACKBONE, 3))
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (root / name).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "config.toml").write_text(AE_FAST)
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("jaxvit-interp: error: ") and all(x.startswith("  ") for x in err[1:])
    return "\n".join(err)


def test_inspect_says_which_metrics_a_backbone_has(backbone, capsys):
    assert main(["inspect", str(backbone)]) == 0
    out = capsys.readouterr().out
    assert (
        "metrics: layer, repr only (a backbone without a classifier, pooled width 6); --probe "
        "probe.npz (kernel [6, classes], bias [classes]) adds prob, prob_drop, kl, flip, taylor"
    ) in out


def test_labels_for_a_backbone_without_a_probe_are_refused_before_any_work(
    backbone, tmp_path, capsys
):
    out = tmp_path / "run"
    # The image folder does not exist: the refusal comes before the images are read.
    args = ["analyze", "--checkpoint", str(backbone), "--images", str(tmp_path / "none")]
    assert main([*args, "--out", str(out), "--labels", str(tmp_path / "labels.csv")]) == 2
    text = one_error_line(capsys)
    assert "backbone without a classifier" in text and "metrics: layer, repr only" in text
    assert not out.exists()


def test_a_probe_of_the_wrong_width_is_refused_before_any_work(backbone, tmp_path, capsys):
    np.savez(tmp_path / "probe.npz", kernel=np.zeros((16, 2)), bias=np.zeros(2))
    out = tmp_path / "run"
    args = ["analyze", "--checkpoint", str(backbone), "--images", str(tmp_path / "none")]
    assert main([*args, "--out", str(out), "--probe", str(tmp_path / "probe.npz")]) == 2
    text = one_error_line(capsys)
    assert "reads vectors of width 16" in text and "pooled output has width 6" in text
    assert not out.exists()


def test_a_probe_makes_a_backbone_a_classifier(backbone, pictures, tmp_path):
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(6, 2)), rng.normal(size=2)
    np.savez(tmp_path / "probe.npz", kernel=kernel, bias=bias, class_names=["ant", "bee"])
    out = tmp_path / "run"
    args = ["analyze", "--checkpoint", str(backbone), "--images", str(pictures), "--out", str(out)]
    args += ["--probe", str(tmp_path / "probe.npz"), "--config", str(pictures / "config.toml")]
    assert main([*args, *FAST]) == 0
    bundle = load_bundle(out)
    assert bundle.meta["class_names"] == ["ant", "bee"]
    assert bundle.meta["checkpoint"]["probe"]["path"] == str(tmp_path / "probe.npz")
    assert bundle["images"]["probs"].shape == (8, 2)
    for metric in METRIC_NAMES:
        assert bundle["importance"][metric].shape == (8, 2, 2)
    # The folders name the probe's classes.
    assert list(bundle["images"]["labels"]) == [0] * 4 + [1] * 4


def test_analyze_refuses_labels_for_a_backbone_before_writing(tmp_path):
    from jaxvit_interp import analyze
    from jaxvit_interp.errors import InputError

    images = np.zeros((2, *BACKBONE.image_size, 3), np.float32)
    with pytest.raises(InputError, match=r"labels were given for a backbone.*with_probe"):
        analyze(BACKBONE, init_params(BACKBONE, 0), images, tmp_path / "run", labels=[0, 1])
    assert not (tmp_path / "run").exists()
