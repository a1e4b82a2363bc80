"""The shared pattern space of several runs: resampling against a NumPy reference by
supersampling, each run's patterns against loops over its decoded attention (CLS or none,
registers, 4x4 vs 6x6 grids), the table and nearest heads against brute-force loops, and the
stored space: read back without training, computed again when a setting changes, refused when
its files do not hold what its index says."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest

from jaxvit_interp.attention_codes import decode_stored
from jaxvit_interp.errors import InputError
from jaxvit_interp.patterns import AutoencoderSettings
from jaxvit_interp.patterns import shared as shared_module
from jaxvit_interp.patterns.shared import (
    SHARED_INDEX,
    SharedPatternSettings,
    choose_attention_rows,
    common_scale,
    kind_table,
    load_or_compute,
    load_shared_space,
    nearest_heads,
    resample_patterns,
    run_identities,
)
from jaxvit_interp.site.synthetic import synthetic_bundle

# Tiny and short: a few seconds of training a kind on a loaded CPU.
TINY = SharedPatternSettings(
    kinds=("patch",),
    images_per_run=4,
    clusters=3,
    projection="tsne",
    autoencoder=AutoencoderSettings(latent_dim=4, features=(8,), batch_size=32, max_epochs=4),
)


def _supersampled(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-weighted resampling of ``x`` ``[..., h, w]`` by brute force: every cell repeated to a
    grid fine enough for both (the least common multiple), then block means."""
    h, w = x.shape[-2:]
    fh, fw = math.lcm(h, shape[0]), math.lcm(w, shape[1])
    fine = np.repeat(np.repeat(np.asarray(x, np.float64), fh // h, -2), fw // w, -1)
    blocks = fine.reshape(*x.shape[:-2], shape[0], fh // shape[0], shape[1], fw // shape[1])
    return blocks.mean(axis=(-3, -1))


@pytest.mark.parametrize(
    ("src", "dst", "lead"),
    [
        ((4, 4), (6, 6), (2, 3)),
        ((6, 6), (4, 4), (2, 3)),
        ((7, 7), (11, 11), (2, 3)),
        ((3, 5), (4, 2), (2, 3)),
        # Patch patterns of ViT-B/16 (16x16 grid) and of patch 14 at 518 px (37x37) on the
        # 14x14 grid of patch 14 at 224 px.
        ((31, 31), (27, 27), (2,)),
        ((73, 73), (27, 27), (1,)),
    ],
)
def test_resampling_is_the_area_mean_of_a_supersampled_grid(src, dst, lead):
    x = np.random.default_rng().uniform(0, 1, (*lead, *src)).astype(np.float32)
    got = np.asarray(resample_patterns(x, dst))
    np.testing.assert_allclose(got, _supersampled(x, dst), rtol=1e-5, atol=1e-6)
    # The mean of a map over its area is kept.
    np.testing.assert_allclose(got.mean((-2, -1)), x.mean((-2, -1)), rtol=1e-5)


def test_resampling_to_the_same_grid_changes_nothing():
    x = np.random.default_rng().uniform(0, 1, (5, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(resample_patterns(x, (4, 4))), x)


def test_uniform_attention_reads_alike_on_every_grid():
    """Uniform attention over P patches is 1/P: the common scale gives one value on any grid."""
    values = []
    for grid in ((4, 4), (6, 6), (3, 5)):
        P = grid[0] * grid[1]
        values.append(np.asarray(common_scale(np.full((1, *grid), 1 / P), P, (4, 4), 16)))
    for v in values:
        np.testing.assert_allclose(v, np.log(2) / np.log(32), rtol=1e-6)


def _reference_patterns(bundle, rows, kind, common: tuple[int, int]) -> np.ndarray:
    """One run's patterns by loops over its decoded attention, then the NumPy supersampling
    reference and the log scale written out."""
    config = bundle.meta["config"]
    gh = config["image_size"][0] // config["patch_size"][0]
    gw = config["image_size"][1] // config["patch_size"][1]
    X = len(bundle.meta["special_tokens"])
    P, Pc = gh * gw, common[0] * common[1]
    out = []
    for r in rows:
        a = decode_stored(bundle["attention"], bundle.attention_code, int(r)).astype(np.float64)
        L, H = a.shape[:2]
        if kind == "cls":
            raw = a[:, :, 0, X:].reshape(L, H, gh, gw)
        else:
            raw = np.zeros((L, H, 2 * gh - 1, 2 * gw - 1))
            count = np.zeros((2 * gh - 1, 2 * gw - 1))
            for q in range(P):
                for k in range(P):
                    dr, dc = k // gw - q // gw, k % gw - q % gw
                    raw[:, :, dr + gh - 1, dc + gw - 1] += a[:, :, X + q, X + k]
                    count[dr + gh - 1, dc + gw - 1] += 1
            raw /= count
        shape = common if kind == "cls" else (2 * common[0] - 1, 2 * common[1] - 1)
        c = _supersampled(raw * P, shape) / Pc
        out.append(np.log(np.maximum(c, 1 / (2 * Pc)) * 2 * Pc) / np.log(2 * Pc))
    return np.stack(out)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("cls", dict(grid=(6, 6), num_registers=2, distillation_token=True)),
        ("patch", dict(grid=(6, 6), has_cls=False, num_registers=2, num_classes=0)),
        ("patch", dict(grid=(4, 4))),
    ],
)
def test_a_runs_patterns_match_loops_over_its_decoded_attention(kind, options):
    bundle = synthetic_bundle(
        np.random.default_rng(), num_layers=2, num_heads=2, attention_images=3, **options
    )
    rows = np.array([2, 0])
    shape = (4, 4) if kind == "cls" else (7, 7)
    got = shared_module._run_patterns(bundle, rows, [kind], lambda k: shape, 16)[kind]
    want = _reference_patterns(bundle, rows, kind, (4, 4))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_the_images_every_run_has_come_first():
    rows = choose_attention_rows([["a", "b", "c", "d"], ["x", "d", "b", "y", "z"]], 3)
    assert [r.tolist() for r in rows] == [[1, 3, 0], [2, 1, 0]]
    assert [r.tolist() for r in choose_attention_rows([["a"], ["b", "c"]], 5)] == [[0], [0, 1]]


def test_the_table_counts_heads_per_cluster_and_layer_as_a_loop_does():
    rng = np.random.default_rng()
    k = 4
    clusters = [rng.integers(-1, k, (L, H)) for L, H in ((3, 2), (5, 4))]
    for table, c in zip(kind_table(clusters, k), clusters):
        want = np.zeros((k, c.shape[0]), int)
        for layer in range(c.shape[0]):
            for head in range(c.shape[1]):
                if c[layer, head] >= 0:
                    want[c[layer, head], layer] += 1
        np.testing.assert_array_equal(table, want)


def test_nearest_heads_are_those_a_brute_force_search_finds():
    rng = np.random.default_rng()
    latents = [rng.normal(size=(L, H, 5)) for L, H in ((2, 3), (4, 2), (3, 3))]
    found = nearest_heads(latents, 3)
    assert set(found) == {(a, b) for a in range(3) for b in range(3) if a != b}
    for (a, b), (index, distance) in found.items():
        za, zb = latents[a].reshape(-1, 5), latents[b].reshape(-1, 5)
        for i, z in enumerate(za):
            d = [float(np.sqrt(((z - w) ** 2).sum())) for w in zb]
            want = sorted(range(len(zb)), key=lambda j: (d[j], j))[:3]
            assert index[i].tolist() == want
            np.testing.assert_allclose(distance[i], [d[j] for j in want], rtol=1e-12)


@pytest.fixture(scope="module")
def runs():
    """A ViT with CLS on a 4x4 grid, a backbone without CLS with registers on 6x6 sharing two of
    its images, and a run without stored attention."""
    rng = np.random.default_rng()
    vit = synthetic_bundle(rng, num_layers=3, num_heads=2, grid=(4, 4), attention_images=6)
    ids = vit.meta["image_ids"]
    picked = [ids[int(i)] for i in vit["attention"]["image_index"][:2]]
    others = [f"other-{i}" for i in range(38)]
    dino = synthetic_bundle(
        rng,
        num_layers=4,
        num_heads=2,
        grid=(6, 6),
        has_cls=False,
        num_registers=2,
        num_classes=0,
        num_images=40,
        attention_images=40,  # every image: the two shared ones among them
        image_ids=picked + others,
    )
    bare = synthetic_bundle(rng, num_layers=2, num_heads=2, grid=(3, 3))
    del bare.parts["attention"]
    return {"vit": vit, "dino": dino, "bare": bare}


def _failing_train(*args, **kwargs):
    raise AssertionError("the stored shared pattern space should have been reused")


def test_the_stored_space_is_reused_and_recomputed_when_a_setting_changes(
    runs, tmp_path, monkeypatch
):
    bundles, names = list(runs.values()), list(runs)
    where = tmp_path / "shared"
    notes: list[str] = []
    space = load_or_compute(bundles, names, where, TINY, progress=False, note=notes.append)
    assert not space.reused and notes[-1].startswith("shared pattern space computed")
    assert space.grid == (4, 4)  # the smallest run's grid
    assert space.missing == {"attention": ["bare"]}
    patch = space.kinds["patch"]
    assert patch.runs == [0, 1] and patch.shape == (7, 7)
    # The two images both runs have come first, in the first run's order.
    assert space.image_ids[0][:2] == space.image_ids[1][:2] == runs["dino"].meta["image_ids"][:2]
    assert len(space.image_ids[1]) == TINY.images_per_run
    # Each head's majority cluster, by a loop over its patterns.
    for at, r in enumerate(patch.runs):
        L, H = space.dims[r]
        want = np.zeros((L, H), int)
        for layer in range(L):
            for head in range(H):
                mine = (patch.run == r) & (patch.layer == layer) & (patch.head == head)
                counts = np.bincount(patch.cluster[mine], minlength=patch.k)
                want[layer, head] = int(np.argmax(counts))
        np.testing.assert_array_equal(space.head_clusters("patch")[at], want)

    monkeypatch.setattr(shared_module, "train_autoencoder", _failing_train)
    again = load_or_compute(bundles, names, where, TINY, progress=False, note=notes.append)
    assert again.reused and notes[-1] == f"shared pattern space reused from {where}"
    for name in ("run", "image", "layer", "head", "xy", "cluster", "latent", "representative"):
        np.testing.assert_array_equal(getattr(again.kinds["patch"], name), getattr(patch, name))
    assert again.nearest("patch").keys() == space.nearest("patch").keys()

    # Another setting, or another run, is not the stored space.
    other = dataclasses.replace(TINY, images_per_run=3)
    with pytest.raises(AssertionError, match="should have been reused"):
        load_or_compute(bundles, names, where, other, progress=False)
    swapped = [runs["vit"], runs["vit"], runs["bare"]]
    assert load_shared_space(where, names, run_identities(swapped, names, TINY), TINY) is None


def test_a_stored_space_that_is_not_what_its_index_says_is_refused(runs, tmp_path):
    bundles, names = [runs["vit"], runs["bare"]], ["vit", "bare"]
    where = tmp_path / "shared"
    settings = dataclasses.replace(TINY, images_per_run=6)  # 36 patterns: enough to train on
    space = load_or_compute(bundles, names, where, settings, progress=False)
    assert space.kinds["patch"].runs == [0]
    identities = run_identities(bundles, names, settings)
    assert load_shared_space(where, names, identities, settings).reused
    spare = tmp_path / "spare.npz"
    shutil.copy(where / "patch.npz", spare)
    (where / "patch.npz").write_bytes((where / "patch.npz").read_bytes()[:200])
    with pytest.raises(InputError, match="patch.npz"):
        load_shared_space(where, names, identities, settings)
    arrays = dict(np.load(spare))
    arrays["cluster"] = arrays["cluster"][:-1]
    np.savez(where / "patch.npz", **arrays)
    with pytest.raises(InputError, match="cluster has shape"):
        load_shared_space(where, names, identities, settings)
    (where / SHARED_INDEX).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_shared_space(where, names, identities, settings)
    # Computed again, with a note saying why, rather than read wrong.
    notes: list[str] = []
    again = load_or_compute(bundles, names, where, settings, progress=False, note=notes.append)
    assert not again.reused and "cannot be read" in notes[0]
    assert load_shared_space(where, names, identities, settings).reused


def test_runs_without_stored_attention_give_an_empty_space_the_page_explains(runs):
    from jaxvit_interp.patterns.shared import shared_pattern_space
    from jaxvit_interp.site.comparison import build_patterns_document

    bare = runs["bare"]
    space = shared_pattern_space([bare, bare], ["x", "y"], TINY, progress=False)
    assert space.kinds == {} and space.missing == {"attention": ["x", "y"]}
    doc = build_patterns_document(space, [bare, bare], ["x", "y"])
    note = doc.get_model_by_name("shared_patterns_note").text
    assert "No stored attention, so no patterns: x, y." in note
    assert doc.get_model_by_name("shared_patch") is None
