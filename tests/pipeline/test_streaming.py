"""Memory that does not grow with the number of images: memory-mapped images read a slice at a
time, patterns gathered into a file of the run folder and read from it a block at a time."""

import importlib
import tracemalloc

import numpy as np
import pytest
from clitools import AE_FAST, TINY

import jaxvit_interp.importance.validate as validate
from jaxvit_interp import ViTConfig, init_params, load_checkpoint, load_image_folder, storage
from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.data.preprocess import thumbnails
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.identity import describe_config, parameter_digest
from jaxvit_interp.patterns import AutoencoderSettings
from jaxvit_interp.patterns.embed import embed_latents
from jaxvit_interp.patterns.extract import normalize_patterns
from jaxvit_interp.pipeline.analyze import CHUNK_DIR, INPUT_DIR, analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.site import build_site

# The settings of the command-line tests' FAST flags and AE_FAST file (clitools.py).
FAST_SETTINGS = dict(
    chunk_images=4,
    partial_images=5,
    attention_images=3,
    pattern_samples=64,
    clusters=3,
    set_images=0,
    projection="tsne",
)
assert "max_epochs = 3, batch_size = 16, latent_dim = 4, features = [8]" in AE_FAST
FAST_AE = AutoencoderSettings(max_epochs=3, batch_size=16, latent_dim=4, features=(8,))
# The module (the package's ``analyze`` is the function).
analyze_module = importlib.import_module("jaxvit_interp.pipeline.analyze")
bundle_stage = importlib.import_module("jaxvit_interp.pipeline.bundle_stage")
pattern_stage = importlib.import_module("jaxvit_interp.pipeline.pattern_stage")
run_folder = importlib.import_module("jaxvit_interp.pipeline.run_folder")


@pytest.mark.filterwarnings("ignore:skipped 2 file")
def test_folder_run_through_a_mapped_file_equals_an_in_memory_run(reference_run, tmp_path):
    # The shared run is the command on a folder: its images went through a memory-mapped file
    # in the run folder, removed when the command ended.
    assert not (reference_run.run / INPUT_DIR).exists()
    assert not list((reference_run.run / CHUNK_DIR).glob("*.npy"))
    config, params = load_checkpoint(reference_run.checkpoint)
    loaded = load_image_folder(reference_run.images, config, progress=False)
    assert not isinstance(loaded.images, np.memmap)
    mapped = load_image_folder(reference_run.images, config, progress=False, out=tmp_path / "i.npy")
    assert isinstance(mapped.images, np.memmap) and mapped.images.mode == "r"
    np.testing.assert_array_equal(mapped.images, loaded.images)
    assert mapped.ids == loaded.ids  # the folder's broken files are skipped from both

    settings = AnalysisSettings(**FAST_SETTINGS, autoencoder=FAST_AE)
    # The ImageSet itself: its images, labels, ids, class names and label matching.
    with pytest.raises(InputError, match="ImageSet.*image_ids="):
        analyze(config, params, loaded, tmp_path / "run", image_ids=loaded.ids, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    in_memory = analyze(config, params, loaded, tmp_path / "run", settings=settings, progress=False)
    a, b = load_bundle(reference_run.run), in_memory
    assert sorted(a.parts) == sorted(b.parts)
    for part in a.parts:
        assert sorted(a[part]) == sorted(b[part]), part
        for name, value in a[part].items():
            np.testing.assert_array_equal(b[part][name], value, err_msg=f"{part}/{name}")
    for key in ("image_ids", "class_names", "label_matching"):
        assert b.meta[key] == a.meta[key], key
    # No checkpoint file: the model is named by its config and its parameters' digest, and the
    # site shows that.
    identity = b.meta["checkpoint"]
    assert identity["sha256"] == parameter_digest(params)
    assert identity["description"].startswith(describe_config(config))
    assert identity["sha256"][:12] in identity["description"]
    page = build_site(b, tmp_path / "site").read_text()
    assert identity["description"] in page and "unknown checkpoint" not in page


def test_mapped_images_are_read_a_slice_at_a_time(tmp_path, monkeypatch):
    # What analyze does with the whole image set before and after the chunks (check, hash,
    # thumbnails, pixels, the chunks' slices), on 64 images of 224 px (39 MB) mapped from a file.
    config = ViTConfig.from_variant(
        "mu/56", image_size=(224, 224), num_layers=2, num_heads=2, num_classes=3
    )
    path = tmp_path / "images.npy"
    data = np.random.default_rng(0).standard_normal((64, 224, 224, 3), np.float32)
    np.save(path, data)
    images = np.load(path, mmap_mode="r")
    monkeypatch.setattr(run_folder, "IMAGE_STEP", 4)
    monkeypatch.setattr(validate, "_CHECK_BLOCK", 4)
    tracemalloc.start()
    try:
        rows = analyze_module._Images(
            np.asarray(validate.check_images(config, images)), storage.page_releaser(images)
        )
        digest = run_folder.image_digest(rows, ["x"] * len(rows))
        small = bundle_stage.thumbnails_of(rows, config, 112, step=4)
        pixels = bundle_stage.stream_pixels(rows, config, run_folder.RunFolder(tmp_path), 4)
        chunks = [rows[at : at + 8].sum() for at in range(0, len(rows), 8)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Every array NumPy allocates is traced: one copy of the set (a hash over one bytes object,
    # the thumbnails' float intermediate of every image) would be 39 MB alone; a slice of 4
    # images' float intermediates come to 10 MB.
    assert peak < images.nbytes / 3, (peak, images.nbytes)
    # The same results as from the whole set in memory.
    assert digest == run_folder.image_digest(data, ["x"] * len(data))
    np.testing.assert_array_equal(small, thumbnails(data, config, 112))
    np.testing.assert_array_equal(pixels, thumbnails(data, config, 224))
    np.testing.assert_allclose(sum(chunks), data.sum(dtype=np.float64), rtol=1e-5)


def test_patterns_come_from_a_file_and_are_not_merged(tmp_path, monkeypatch):
    config = TINY
    params = init_params(config, 0)
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).standard_normal((24, 8, 8, 3), np.float32))
    images = np.load(path, mmap_mode="r")
    seen = {}

    def spy(module, name):
        inner = getattr(module, name)

        def wrapped(*args, **kwargs):
            seen[name] = args
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    spy(analyze_module, "build_bundle")
    spy(bundle_stage, "pattern_stage_part")
    out = tmp_path / "run"
    settings = AnalysisSettings(**FAST_SETTINGS, autoencoder=FAST_AE)
    bundle = analyze(config, params, images, out, settings=settings, progress=False)

    # The merged per-image results hold no patterns: the pattern stage read them from files
    # of the chunk folder, removed once the bundle was written.
    merged = seen["build_bundle"][1]
    assert not [k for k in merged if k.endswith("_pattern")]
    _, patterns, models, _, _ = seen["pattern_stage_part"]
    assert sorted(patterns) == ["cls", "patch"]
    assert not list((out / CHUNK_DIR).glob("*.npy"))
    chunks = sorted((out / CHUNK_DIR).glob("chunk-*.npz"))
    for kind, stored in patterns.items():
        assert isinstance(stored, np.memmap) and str(stored.filename).startswith(
            str(out / CHUNK_DIR)
        )
        # The obvious way: every chunk's patterns in memory, normalised and encoded at once.
        whole = np.concatenate([np.load(c)[f"{kind}_pattern"] for c in chunks])
        np.testing.assert_array_equal(stored, whole)
        flat = whole.reshape(-1, *whole.shape[-2:])
        latents = models[kind].encode(np.asarray(normalize_patterns(flat, config.num_patches)))
        # In blocks of 7 patterns (the last padded), the same latents to float32 rounding.
        with monkeypatch.context() as patch:
            patch.setattr(pattern_stage, "ENCODE_BATCH", 7)
            blocks = pattern_stage.encode_patterns(
                models[kind], stored.reshape(flat.shape), config.num_patches
            )
        np.testing.assert_allclose(blocks, latents, rtol=1e-5, atol=1e-6)
        emb = embed_latents(
            models[kind],
            latents.reshape(*whole.shape[:-2], -1),
            lambda index, flat=flat: np.asarray(
                normalize_patterns(flat[index], config.num_patches)
            ),
            projection=settings.projection,
            k=settings.clusters,
            seed=settings.seed,
        )
        part = bundle["patterns"]
        np.testing.assert_array_equal(part[f"{kind}_clusters"], emb.labels)
        np.testing.assert_allclose(part[f"{kind}_positions"], emb.xy, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            part[f"{kind}_representatives"], emb.representative, rtol=1e-6, atol=1e-7
        )
        np.testing.assert_allclose(part[f"{kind}_centres"], emb.decoded_centre, atol=1e-6)


@pytest.mark.parametrize("index", [slice(3, 17), slice(None), np.array([9, 0, 4, 4, 15])])
def test_read_rows_of_a_mapped_file_equal_indexing_it(tmp_path, monkeypatch, index):
    data = np.arange(20 * 6, dtype=np.float32).reshape(20, 2, 3)
    np.save(tmp_path / "a.npy", data)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    monkeypatch.setattr(storage, "READ_BLOCK_BYTES", 2 * 24)  # two rows a block
    rows = storage.read_rows(mapped, index)
    assert type(rows) is np.ndarray
    np.testing.assert_array_equal(rows, data[index])
    np.testing.assert_array_equal(mapped, data)  # released pages read back the same
    assert storage.page_releaser(data) is None
    assert storage.page_releaser(np.load(tmp_path / "a.npy", mmap_mode="c")) is None
