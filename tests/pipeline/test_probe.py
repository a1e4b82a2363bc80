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


def test_a_1000_class_probe_without_names_gets_imagenets_as_a_checkpoint_does(
    backbone, pictures, tmp_path, capsys, rng
):
    from jaxvit_interp import LinearProbe, inspect_checkpoint, load_checkpoint, with_probe
    from jaxvit_interp.data.imagenet import imagenet1k

    # A 1,000-class vit_jax checkpoint that names no classes: the rule the probe must follow.
    classifier = TINY.replace(num_classes=1000)
    flat = {"/".join(k): np.asarray(v) for k, v in _flat(init_params(classifier, 1))}
    np.savez(tmp_path / "vit.npz", **flat)
    checkpoint_names = load_checkpoint(tmp_path / "vit.npz")[0].class_names
    (checkpoint_note,) = [n for n in inspect_checkpoint(tmp_path / "vit.npz").notes if "1,000" in n]
    assert checkpoint_names == imagenet1k().names

    params = init_params(BACKBONE, 3)
    for classes, names, want in [
        (1000, None, checkpoint_names),
        (1000, [f"c{i}" for i in range(1000)], tuple(f"c{i}" for i in range(1000))),
        (int(rng.integers(2, 999)), None, None),
    ]:
        probe = LinearProbe(rng.normal(size=(6, classes)), rng.normal(size=classes), names)
        assert with_probe(BACKBONE, params, probe)[0].class_names == want, classes

    # On the command line the probe's names are ImageNet's, so the folders ant/ and bee/ are
    # its classes 310 and 309; the run gets past every check up to its folder (another run's
    # here, so that nothing is computed), saying what it assumed as a checkpoint's note does.
    kernel, bias = rng.normal(size=(6, 1000)), rng.normal(size=1000)
    np.savez(tmp_path / "probe.npz", kernel=kernel, bias=bias)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"fingerprint": "0123456789abcdef"}')
    args = ["analyze", "--checkpoint", str(backbone), "--images", str(pictures), "--out", str(out)]
    assert main([*args, "--probe", str(tmp_path / "probe.npz"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err, err
    note = checkpoint_note.replace("the file", f"the probe {tmp_path / 'probe.npz'}")
    assert f"jaxvit-interp: note: {note}" in err, err


def _flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value
