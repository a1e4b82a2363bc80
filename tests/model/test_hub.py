"""``hf-hub:ORG/NAME[@REVISION]`` checkpoints, against a cache laid out here in the hub's format.

No test touches the network. huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HOME`` once, at
import, into ``hub_constants``, and :mod:`jaxvit_interp.model.checkpoint.hub` reads
those constants at call time; so the tests patch the constants in-process (a subprocess per test
would pay this package's import, several seconds of JAX and flax, each time), and
:func:`test_the_environment_sets_what_the_tests_patch` checks once, in a subprocess importing
huggingface_hub alone, that the environment variables set exactly these constants. The cache
itself is checked against huggingface_hub's own reader (``scan_cache_dir``).

The files are this project's name maps run backwards: random arrays under the keys and shapes
each family's rules read (no PyTorch needed); that the maps match the libraries is
``test_parity_*``'s work. Here a hub name must load exactly as the same files loaded by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import types
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
from huggingface_hub import constants as hub_constants
from safetensors.numpy import save as safetensors_bytes

from jaxvit_interp.model import ViTConfig
from jaxvit_interp.model.checkpoint import (
    CheckpointError,
    hf_names,
    inspect_checkpoint,
    load_checkpoint,
    openclip_names,
    timm_names,
)
from jaxvit_interp.model.checkpoint.hub import SAFETENSORS_INDEX, fetch_snapshot, parse_hub_name
from jaxvit_interp.model.checkpoint.rules import expected_sources, expected_targets
from jaxvit_interp.model.identity import hub_identity

SMALL = dict(image_size=(16, 16), patch_size=(8, 8), hidden_size=16, num_layers=2, num_heads=2,
             mlp_dim=32)  # fmt: skip
HF_CONFIG = {
    "model_type": "vit", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "image_size": 16, "patch_size": 8, "num_channels": 3,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True,
    "id2label": {"0": "cat", "1": "dog", "2": "owl"},
}  # fmt: skip
TIMM_CONFIG = {"architecture": "vit_tiny_patch8_16", "num_classes": 3,
               "model_args": {"num_heads": 2}, "pretrained_cfg": {"input_size": [3, 16, 16]}}  # fmt: skip
OPENCLIP_CONFIG = {"model_cfg": {"embed_dim": 6, "vision_cfg": {
    "layers": 2, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}}}  # fmt: skip


def family_tensors(family, config: ViTConfig, rng) -> dict[str, np.ndarray]:
    """Random arrays under every key, of every shape, that ``family``'s names give ``config``."""
    sources = expected_sources(family.rules(config), expected_targets(config))
    return {key: rng.normal(size=shape).astype(np.float32) for key, shape in sources.items()}


def repo_files(kind: str, rng) -> dict[str, bytes]:
    """The files of a hub repository of ``kind``, by name."""
    if kind in ("hf", "hf_sharded"):
        family = hf_names.HuggingFaceFamily("vit", "vit.", HF_CONFIG)
        tensors = family_tensors(family, ViTConfig(**SMALL, num_classes=3), rng)
        files = {"config.json": json.dumps(HF_CONFIG).encode(), "README.md": b"# a model\n"}
        if kind == "hf":
            return {**files, "model.safetensors": safetensors_bytes(tensors)}
        keys = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": keys[::2],
                  "model-00002-of-00002.safetensors": keys[1::2]}  # fmt: skip
        index = {"weight_map": {k: shard for shard, ks in shards.items() for k in ks}}
        files[SAFETENSORS_INDEX] = json.dumps(index).encode()
        for shard, ks in shards.items():
            files[shard] = safetensors_bytes({k: tensors[k] for k in ks})
        return files
    if kind == "timm":
        family = timm_names.TimmFamily(TIMM_CONFIG)
        tensors = family_tensors(family, ViTConfig(**SMALL, num_classes=3), rng)
        return {"config.json": json.dumps(TIMM_CONFIG).encode(),
                "model.safetensors": safetensors_bytes(tensors)}  # fmt: skip
    assert kind == "openclip"
    family = openclip_names.OpenClipFamily("visual.", OPENCLIP_CONFIG)
    config = ViTConfig(**SMALL, num_classes=0, pre_norm=True, patch_bias=False, projection_dim=6)
    return {"open_clip_config.json": json.dumps(OPENCLIP_CONFIG).encode(),
            "open_clip_model.safetensors": safetensors_bytes(family_tensors(family, config, rng)),
            "open_clip_pytorch_model.bin": b"a pickle never read"}  # fmt: skip


def lay_out(cache: Path, repo_id: str, files: dict[str, bytes], ref: str | None = "main") -> str:
    """Put ``files`` into ``cache`` as huggingface_hub does: content in ``blobs/<sha256>``,
    ``snapshots/<commit>/<name>`` a relative symlink to it, ``refs/<ref>`` the commit.
    Returns the (random) commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = secrets.token_hex(20)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, offline: what ``HF_HOME=<tmp> HF_HUB_OFFLINE=1`` sets."""
    folder = tmp_path / "hf_home" / "hub"
    folder.mkdir(parents=True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    # Should anything still ask the network, it is refused at once rather than reached.
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    return folder


def same_tree(a, b) -> bool:
    equal = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(jax.tree.leaves(equal))


def test_the_cache_is_laid_out_as_huggingface_hub_reads_it(cache, rng):
    files = repo_files("hf", rng)
    commit = lay_out(cache, "org/vit", files)
    info = huggingface_hub.scan_cache_dir(cache)
    assert info.warnings == []
    (repo,) = info.repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.commit_hash, revision.refs) == ("org/vit", commit, {"main"})
    assert {f.file_name for f in revision.files} == set(files)


@pytest.mark.parametrize("kind", ["hf", "hf_sharded", "timm", "openclip"])
def test_a_hub_name_loads_as_the_same_files_by_path(cache, rng, kind):
    commit = lay_out(cache, f"org/{kind}", repo_files(kind, rng))
    snapshot = fetch_snapshot(f"hf-hub:org/{kind}")
    folder = cache / f"models--org--{kind}" / "snapshots" / commit
    by_path = folder / "open_clip_model.safetensors" if kind == "openclip" else folder
    assert (snapshot.commit, snapshot.folder, snapshot.local_path) == (commit, folder, by_path)
    config, params = load_checkpoint(f"hf-hub:org/{kind}")
    expected_config, expected_params = load_checkpoint(by_path)
    assert config == expected_config and same_tree(params, expected_params)
    assert config.hidden_size == 16 and config.num_heads == 2
    if kind.startswith("hf"):
        assert config.class_names == ("cat", "dog", "owl")  # config.json was read
    report = inspect_checkpoint(f"hf-hub:org/{kind}")
    assert report.ok and report.path == by_path


def test_a_revision_picks_its_snapshot_and_the_identity_its_commit(cache, rng):
    from jaxvit_interp.cli import _load_model

    main = lay_out(cache, "org/vit", repo_files("hf", rng))
    tagged = lay_out(cache, "org/vit", repo_files("hf", rng), ref="v1")
    unnamed = lay_out(cache, "org/vit", repo_files("hf", rng), ref=None)
    folders = cache / "models--org--vit" / "snapshots"
    for name, commit in [("", main), ("@main", main), ("@v1", tagged), (f"@{unnamed}", unnamed)]:
        config, params = load_checkpoint(f"hf-hub:org/vit{name}")
        assert same_tree(params, load_checkpoint(folders / commit)[1]), name
    assert not same_tree(load_checkpoint("hf-hub:org/vit@v1")[1], params)
    # A run records the repository and commit, however the revision was named.
    identity = _load_model(f"hf-hub:org/vit@{main}").identity
    assert identity == _load_model("hf-hub:org/vit").identity == hub_identity("org/vit", main)
    assert identity["path"] == f"hf-hub:org/vit@{main}" and identity["revision"] == main
    assert _load_model("hf-hub:org/vit@v1").identity["sha256"] != identity["sha256"]


def test_offline_with_an_empty_cache_says_why_and_how_to_fix_it(cache, capsys):
    from jaxvit_interp.cli import main

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint("hf-hub:org/absent@v2")
    message = str(caught.value)
    for needed in ("hf-hub:org/absent@v2", "HF_HUB_OFFLINE is set", str(cache), "HF_HOME"):
        assert needed in message, needed
    # On the command line: one line, status 2.
    assert main(["inspect", "hf-hub:org/absent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxvit-interp: error: hf-hub:org/absent: not in")


@pytest.mark.parametrize(
    "config_file, config, named",
    [
        ("config.json", {"model_type": "swin"}, "'swin' is not supported: it needs windowed"),
        ("config.json", {"model_type": "convnext"}, "model_type 'convnext' is not supported"),
        ("config.json", {"architecture": "swin_tiny_patch4_window7_224"}, "windowed attention"),
        ("config.json", {"architecture": "convnext_tiny.in12k"}, "'convnext_tiny.in12k'"),
        ("config.json", {"architecture": "vit_base_patch16_rope_224"}, "rotary position"),
        ("config.json", {"architecture": "vit_base_r50_s16_384.orig_in21k"}, "a ResNet stem"),
        ("open_clip_config.json", {"model_cfg": {"vision_cfg": {"timm_model_name": "convnext_base"}}},
         "timm's 'convnext_base'"),
        ("open_clip_config.json", {"model_cfg": {"vision_cfg": {"layers": [3, 4, 6, 3]}}}, "ResNet"),
    ],
)  # fmt: skip
def test_an_unsupported_architecture_is_refused_from_its_config_alone(
    cache, config_file, config, named
):
    # Only the JSON file is cached: the refusal cannot have needed the weights.
    lay_out(cache, "org/other", {config_file: json.dumps(config).encode()})
    with pytest.raises(CheckpointError, match="not supported") as caught:
        load_checkpoint("hf-hub:org/other")
    assert str(caught.value).startswith("hf-hub:org/other: ") and named in str(caught.value)


# The timm architectures test_parity_families loads (and checks against timm itself), with
# hub tags: none may be refused by its name.
TIMM_READ = ["vit_base_patch16_224.augreg2_in21k_ft_in1k", "deit_tiny_distilled_patch16_224",
             "vit_small_patch14_dinov2.lvd142m", "vit_giant_patch14_dinov2",
             "vit_small_patch14_reg4_dinov2", "vit_base_patch16_clip_224.openai",
             "vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_siglip_224.webli"]  # fmt: skip


def test_the_timm_vits_the_loader_reads_are_not_refused_by_name(cache):
    for i, architecture in enumerate(TIMM_READ):
        lay_out(
            cache,
            f"timm/m{i}",
            {"config.json": json.dumps({"architecture": architecture}).encode()},
        )
        # Past the names, to the weights, which this cache does not hold.
        with pytest.raises(CheckpointError, match="cache holds no weights"):
            load_checkpoint(f"hf-hub:timm/m{i}")


def test_a_repository_of_pickles_needs_allow_pickle(cache):
    files = {"config.json": json.dumps(HF_CONFIG).encode(), "pytorch_model.bin": b"never read"}
    commit = lay_out(cache, "org/old", files)
    with pytest.raises(CheckpointError, match=r"only as a PyTorch pickle \(pytorch_model.bin\)"):
        load_checkpoint("hf-hub:org/old")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        inspect_checkpoint("hf-hub:org/old")
    allowed = fetch_snapshot("hf-hub:org/old", allow_pickle=True)
    assert allowed.local_path == cache / "models--org--old" / "snapshots" / commit
    # Offline, a cache holding a supported config but not its weights says so.
    lay_out(cache, "org/part", {"config.json": json.dumps(HF_CONFIG).encode()})
    with pytest.raises(
        CheckpointError, match=r"cache holds no weights of it \(only: config.json\)"
    ):
        load_checkpoint("hf-hub:org/part")


def test_online_a_repository_without_weights_lists_what_it_holds(fake_hub):
    fake_hub("org/empty", {"README.md": b"no weights", "tokenizer.json": b"{}"})
    with pytest.raises(CheckpointError, match="no weights this loader reads.*README.md, tok"):
        load_checkpoint("hf-hub:org/empty")


@pytest.mark.parametrize(
    "name, why",
    [
        ("hf-hub:", "expected ORG/NAME"),
        ("hf-hub:vit-base", "expected ORG/NAME"),
        ("hf-hub:org/a/b", "expected ORG/NAME"),
        ("hf-hub:org/-vit", "'-vit' is not a repository name part"),
        ("hf-hub:org--x/vit", "'org--x' is not"),
        ("hf-hub:org/vit@", "revision after '@'"),
        ("hf-hub:org/vit@a b", "revision after '@'"),
    ],
)
def test_a_malformed_hub_name_is_refused_before_any_lookup(cache, name, why):
    with pytest.raises(CheckpointError, match=why) as caught:
        load_checkpoint(name)
    assert repr(name) in str(caught.value)


def test_parse_hub_name():
    assert parse_hub_name("hf-hub:timm/vit_small_patch16_224.augreg_in21k").revision is None
    name = parse_hub_name("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@refs/pr/3")
    assert (name.repo_id, name.revision) == ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "refs/pr/3")
    assert str(name) == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@refs/pr/3"


class FakeHub:
    """The hub's side of huggingface_hub, in memory: ``model_info`` lists a repository, the two
    downloads lay files out in the cache as the real ones do, and every file asked for is
    recorded in order."""

    def __init__(self, cache: Path, repo_id: str, files: dict[str, bytes]):
        self.cache, self.repo_id, self.files = cache, repo_id, files
        self.commit = secrets.token_hex(20)
        self.fetched: list[str] = []
        self.error: Exception | None = None
        self.real_snapshot_download = huggingface_hub.snapshot_download

    def model_info(self, repo_id, revision=None, **_):
        if self.error is not None:
            raise self.error
        siblings = [types.SimpleNamespace(rfilename=f) for f in self.files]
        return types.SimpleNamespace(sha=self.commit, siblings=siblings)

    def _put(self, names) -> Path:
        repo = self.cache / ("models--" + self.repo_id.replace("/", "--"))
        for name in names:
            self.fetched.append(name)
            data = self.files[name]
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / self.commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, link.parent))
        return repo / "snapshots" / self.commit

    def snapshot_download(self, repo_id, *, revision=None, cache_dir, allow_patterns=None, **kw):
        if kw.get("local_files_only"):  # the cache alone: huggingface_hub's own lookup
            return self.real_snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, **kw
            )
        folder = self._put([f for f in self.files if f in allow_patterns])
        refs = folder.parent.parent / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / (revision or "main")).write_text(self.commit)
        return str(folder)

    def hf_hub_download(self, repo_id, filename, *, revision, cache_dir, **_):
        assert revision == self.commit  # every weights file from the one listed commit
        return str(self._put([filename]) / filename)


@pytest.fixture
def fake_hub(cache, monkeypatch):
    def make(repo_id: str, files: dict[str, bytes]) -> FakeHub:
        hub = FakeHub(cache, repo_id, files)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", hub.model_info)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
        return hub

    return make


def test_online_the_json_comes_first_and_only_the_files_read(cache, rng, fake_hub, monkeypatch):
    files = repo_files("openclip", rng)
    hub = fake_hub("laion/tiny", files)
    config, params = load_checkpoint("hf-hub:laion/tiny")
    assert hub.fetched == ["open_clip_config.json", "open_clip_model.safetensors"]
    # Afterwards, offline, the same name finds the same commit in the cache.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert fetch_snapshot("hf-hub:laion/tiny").commit == hub.commit
    assert same_tree(load_checkpoint("hf-hub:laion/tiny")[1], params)

    sharded = fake_hub("org/sharded", repo_files("hf_sharded", rng))
    load_checkpoint("hf-hub:org/sharded")
    assert sharded.fetched == ["config.json", SAFETENSORS_INDEX,
                               "model-00001-of-00002.safetensors",
                               "model-00002-of-00002.safetensors"]  # fmt: skip

    swin = fake_hub(
        "org/swin", {"config.json": b'{"model_type": "swin"}', "model.safetensors": b""}
    )
    with pytest.raises(CheckpointError, match="swin"):
        load_checkpoint("hf-hub:org/swin")
    assert swin.fetched == ["config.json"]  # refused before any weights were asked for


@pytest.mark.parametrize(
    "error, says",
    [
        ("GatedRepoError", "gated: accept its terms on https://huggingface.co/org/private, then log in"),
        ("RepositoryNotFoundError", "no such repository on the hub, or it is private"),
        ("RevisionNotFoundError", "has no revision"),
        ("ConnectionError", "not in the local cache"),
    ],
)  # fmt: skip
def test_hub_refusals_name_the_repository_and_the_fix(cache, fake_hub, error, says):
    hub = fake_hub("org/private", {})
    errors = {**vars(huggingface_hub.utils), "ConnectionError": ConnectionError}
    hub.error = (
        errors[error]("refused")
        if error == "ConnectionError"
        else errors[error]("x", response=None)
    )
    with pytest.raises(CheckpointError, match=says) as caught:
        load_checkpoint("hf-hub:org/private")
    message = str(caught.value)
    assert message.startswith("hf-hub:org/private")
    if error != "RevisionNotFoundError":
        assert "HF_TOKEN" in message or "the hub cannot be reached" in message


def test_the_environment_sets_what_the_tests_patch(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    shown = subprocess.run(
        [sys.executable, "-c", "from huggingface_hub import constants as c; "
         "print(c.HF_HUB_OFFLINE, c.HF_HUB_CACHE)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert shown == ["True", str(tmp_path / "hub")]


def test_a_site_spec_names_a_hub_model_as_is(tmp_path):
    from jaxvit_interp.site.spec import SiteSpecError, load_site_spec

    spec = tmp_path / "site.toml"
    spec.write_text('model = "hf-hub:org/vit@v1"\nimages = "builtin:digits"\n')
    assert load_site_spec(spec).model == "hf-hub:org/vit@v1"  # not a path beside the spec
    spec.write_text('model = "hf-hub:vit"\nimages = "builtin:digits"\n')
    with pytest.raises(SiteSpecError, match=r"site.toml: model = 'hf-hub:vit': .*ORG/NAME"):
        load_site_spec(spec)
