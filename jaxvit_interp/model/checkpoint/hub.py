"""Checkpoints named on the Hugging Face hub: ``hf-hub:ORG/NAME[@REVISION]``.

Hugging Face transformers (``google/vit-base-patch16-224``), timm (``timm/...``: a
``config.json`` with ``architecture`` and ``pretrained_cfg``) and OpenCLIP (``laion/...``:
``open_clip_config.json`` and ``open_clip_model.safetensors``) repositories are fetched through
``huggingface_hub``, so its cache (``HF_HOME``, ``HF_HUB_CACHE``), offline mode
(``HF_HUB_OFFLINE=1``), login and ``HF_TOKEN`` (gated models) and progress bars apply as they
do for every library built on it. Only the files the loader reads are fetched, in this order:

1. the small JSON files (``config.json``, ``preprocessor_config.json``,
   ``open_clip_config.json``), and an architecture this model cannot express is refused from
   them, before anything large is downloaded;
2. the weights: ``model.safetensors``, else a sharded safetensors index and its shards, else
   ``open_clip_model.safetensors``; PyTorch pickles only when allowed.

The result is a folder of the local cache (or a weights file in it), which the ordinary
readers of :mod:`.files` then open, so a hub model follows the same key rules as the same files
loaded by path. Offline, or when the hub cannot be reached, the cache alone answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.files import safetensors_shards

HUB_PREFIX = "hf-hub:"
SIDE_FILES = ("config.json", "preprocessor_config.json", "open_clip_config.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weights the folder reader opens, best first; a pickle only with allow_pickle. OpenCLIP's are
# handed over as the file itself (the reader takes the side files beside it).
SAFE_WEIGHTS = ("model.safetensors", SAFETENSORS_INDEX, "open_clip_model.safetensors")
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pth", "model.pt", "open_clip_pytorch_model.bin")
HANDED_AS_FILE = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# The hub's repository names: ORG/NAME, letters, digits and ``-_.``, no ``--`` or ``..``.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
# timm architectures by their first word: VisionTransformer's entry points are read; the
# others are named with what this model lacks.
TIMM_VIT_WORDS = ("vit", "deit", "deit3", "flexivit")
TIMM_REFUSED_WORDS = {
    "swin": "windowed attention, a relative position bias and patch merging",
    "swinv2": "windowed cosine attention, a relative position bias and patch merging",
    "beit": "a relative position bias in every attention",
    "beitv2": "a relative position bias in every attention",
    "eva": "rotary position embeddings",
    "eva02": "rotary position embeddings",
}
# timm's hybrids put a ResNet before the patches: vit_base_r50_s16_384, vit_small_resnet26d_224.
_HYBRID_STEM = re.compile(r"r\d*|resnet\d+d?")
TIMM_REFUSED_VIT_WORDS = {
    "relpos": "a relative position bias in every attention",
    "srelpos": "a relative position bias in every attention",
    "rope": "rotary position embeddings",
    "samvit": "windowed attention with a relative position bias",
}


@dataclasses.dataclass(frozen=True)
class HubName:
    """A parsed ``hf-hub:ORG/NAME[@REVISION]``.

    Attributes:
      repo_id: ``ORG/NAME``.
      revision: a branch, tag or commit; None for the repository's default branch.
    """

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclasses.dataclass(frozen=True)
class HubSnapshot:
    """A hub checkpoint in the local cache.

    Attributes:
      name: what was asked for.
      commit: the commit the revision resolved to (what a run records, so a resumed run
        knows it is the same model).
      folder: the cache's snapshot folder of that commit.
      local_path: what the folder reader opens: ``folder``, or the OpenCLIP weights file in it.
    """

    name: HubName
    commit: str
    folder: Path
    local_path: Path


def is_hub_name(path: Any) -> bool:
    """Whether ``path`` is a hub name (``hf-hub:...``) rather than a file or folder."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_name(text: str) -> HubName:
    """``hf-hub:ORG/NAME[@REVISION]`` as a :class:`HubName`, or a :class:`CheckpointError`
    saying what is wrong with it."""
    spec = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
    repo_id, at, revision = spec.partition("@")
    parts = repo_id.split("/")
    bad_part = next(
        (p for p in parts if not _REPO_PART.fullmatch(p) or "--" in p or ".." in p or len(p) > 96),
        None,
    )
    if len(parts) != 2 or bad_part is not None:
        why = (
            "expected ORG/NAME"
            if len(parts) != 2
            else f"{bad_part!r} is not a repository name part (letters, digits, '-', '_', '.')"
        )
        raise CheckpointError(
            f"{text!r} is not a hub name: {why}, as in hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION"
        )
    if at and (not revision or any(c.isspace() for c in revision)):
        raise CheckpointError(
            f"{text!r}: the revision after '@' must be a branch, tag or commit, got {revision!r}"
        )
    return HubName(repo_id, revision or None)


def fetch_snapshot(name, *, allow_pickle: bool = False, progress: bool = True) -> HubSnapshot:
    """Put the files of hub checkpoint ``name`` that the loader reads into the local cache.

    Args:
      name: ``hf-hub:ORG/NAME[@REVISION]`` (or a :class:`HubName`).
      allow_pickle: fetch PyTorch pickles when the repository has no safetensors weights.
      progress: huggingface_hub's progress bar per file downloaded.

    Returns:
      the :class:`HubSnapshot`: the resolved commit and the local files.

    Raises:
      CheckpointError: a malformed name; a repository that is not found, gated or private
        without a token; offline (``HF_HUB_OFFLINE``) or unreachable and not cached; an
        architecture this model cannot express (from the JSON files, before the weights are
        fetched); only pickles without ``allow_pickle``; no weights this loader reads.
    """
    from huggingface_hub import constants

    name = name if isinstance(name, HubName) else parse_hub_name(name)
    cache = Path(constants.HF_HUB_CACHE)
    with _progress_bars(progress):
        listing = _remote_listing(name)
        offline = listing if isinstance(listing, str) else None
        if offline is not None:
            folder = _cached_snapshot(name, cache, why_not_online=offline)
            files = _files_under(folder)
            fetch = _from_cache(name, folder, why_not_online=offline)
        else:
            # The JSON files through snapshot_download, which also records which commit the
            # revision names (the cache's refs/), so that offline the same name finds it.
            folder = _download_side_files(name, listing, cache)
            files = listing
            fetch = _downloader(name, folder.name, cache)
        refuse_unsupported_config(name, folder)
        weights = choose_weights(name, files, allow_pickle, offline)
        if weights == SAFETENSORS_INDEX:
            fetch(SAFETENSORS_INDEX)
            for shard in safetensors_shards(folder / SAFETENSORS_INDEX):
                fetch(shard)
        else:
            fetch(weights)
    local_path = folder / weights if weights in HANDED_AS_FILE else folder
    return HubSnapshot(name, folder.name, folder, local_path)


def choose_weights(name: HubName, files, allow_pickle: bool, offline: str | None = None) -> str:
    """The weights file to read among a repository's ``files`` (its safetensors first), or a
    :class:`CheckpointError` naming ``--allow-pickle`` when it has only pickles. ``offline``:
    why only the cache's ``files`` are known (they may be a part of the repository's)."""
    present = set(files)
    safe = next((f for f in SAFE_WEIGHTS if f in present), None)
    if safe is not None:
        return safe
    pickle = next((f for f in PICKLE_WEIGHTS if f in present), None)
    if pickle is not None and allow_pickle:
        return pickle
    if pickle is not None:
        raise CheckpointError(
            f"{name}: the repository holds its weights only as a PyTorch pickle ({pickle}); "
            "unpickling can run code stored in the file, so it is refused. Pass --allow-pickle "
            "(allow_pickle=True) if you trust the repository."
        )
    shown = ", ".join(sorted(present)[:12]) or "nothing"
    if offline is not None:
        raise CheckpointError(
            f"{name}: the local cache holds no weights of it (only: {shown}) and {offline}, so "
            "they cannot be downloaded; " + _how_to_get_it(offline)
        )
    raise CheckpointError(
        f"{name}: no weights this loader reads (looked for {', '.join(SAFE_WEIGHTS)}, or with "
        f"--allow-pickle {', '.join(PICKLE_WEIGHTS)}); the repository holds: {shown}"
    )


def refuse_unsupported_config(name: HubName, folder: Path) -> None:
    """Refuse, from the JSON files in ``folder``, an architecture this model cannot express:
    a Hugging Face ``model_type``, a timm ``architecture`` or an OpenCLIP image tower."""
    from jaxvit_interp.model.checkpoint.torch_names import refuse_unsupported

    config = _read_json(name, folder, "config.json") or {}
    try:
        refuse_unsupported((), config)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e} (from its config.json)") from None
    why = _timm_refusal(config.get("architecture"))
    if why is None:
        openclip = _read_json(name, folder, "open_clip_config.json") or {}
        why = _openclip_refusal(openclip)
    if why is not None:
        raise CheckpointError(f"{name}: {why}")


def _timm_refusal(architecture) -> str | None:
    if not isinstance(architecture, str) or not architecture:
        return None
    words = architecture.rpartition("/")[2].partition(".")[0].split("_")
    source = f"timm architecture {architecture!r} (config.json) is not supported"
    if words[0] not in TIMM_VIT_WORDS and words[0] not in TIMM_REFUSED_WORDS:
        vits = ", ".join(w + "_*" for w in TIMM_VIT_WORDS)
        return f"{source}: only timm's VisionTransformer ({vits}) is read"
    lacks = TIMM_REFUSED_WORDS.get(words[0]) or next(
        (TIMM_REFUSED_VIT_WORDS[w] for w in words if w in TIMM_REFUSED_VIT_WORDS), None
    )
    if lacks is None and any(_HYBRID_STEM.fullmatch(w) for w in words[1:]):
        lacks = "a ResNet stem before the patches (a hybrid ViT)"
    return f"{source}: it needs {lacks}, which this ViT does not have" if lacks else None


def _openclip_refusal(openclip_config) -> str | None:
    vision = (openclip_config.get("model_cfg") or {}).get("vision_cfg") or {}
    source = "OpenCLIP image tower (open_clip_config.json) is not supported"
    if vision.get("timm_model_name"):
        return f"{source}: it is timm's {vision['timm_model_name']!r}, not a plain ViT tower"
    if isinstance(vision.get("layers"), list):
        return f"{source}: it is a ResNet (ModifiedResNet), not a ViT"
    if vision.get("attentional_pool"):
        return f"{source}: it needs the attentional pooler (CoCa), which this ViT does not have"
    return None


def _read_json(name: HubName, folder: Path, file: str) -> dict[str, Any] | None:
    path = folder / file
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: {file} ({str(path)!r}) is not valid JSON: {e}") from None
    return value if isinstance(value, dict) else None


def _remote_listing(name: HubName) -> set[str] | str:
    """The repository's files at ``name``'s revision, from the hub; or, where the hub is off or
    out of reach, why (the cache then answers, as in huggingface_hub's own downloads)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        info = HfApi().model_info(name.repo_id, revision=name.revision)
    except GatedRepoError:
        raise CheckpointError(
            f"{name}: the repository is gated: accept its terms on "
            f"https://huggingface.co/{name.repo_id}, then log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{name}: no such repository on the hub, or it is private: check the name, or log "
            "in (`hf auth login`) or set HF_TOKEN to a token that can read it"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{name}: the repository has no revision {name.revision!r} (a branch, tag or commit)"
        ) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise CheckpointError(
                f"{name}: the hub refused access (HTTP {status}): log in (`hf auth login`) or "
                "set HF_TOKEN to a token that can read the repository"
            ) from None
        return f"the hub answered with an error ({str(e).splitlines()[0]})"
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except _network_errors() as e:
        return f"the hub cannot be reached ({type(e).__name__})"
    return {sibling.rfilename for sibling in info.siblings or ()}


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: an ``OSError`` where huggingface_hub uses requests
    (before 1.0), httpx's transport errors where it uses httpx."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.TransportError)


def _download_side_files(name: HubName, files: set[str], cache: Path) -> Path:
    """Download the JSON files among ``files``; the snapshot folder of the resolved commit."""
    from huggingface_hub import snapshot_download

    wanted = [f for f in SIDE_FILES if f in files]
    try:
        folder = snapshot_download(
            name.repo_id, revision=name.revision, cache_dir=cache, allow_patterns=wanted
        )
    except _network_errors() as e:
        raise _download_failed(name, ", ".join(wanted) or "the commit", e) from None
    return Path(folder)


def _cached_snapshot(name: HubName, cache: Path, why_not_online: str) -> Path:
    """The cache's snapshot folder of ``name``'s revision, or a :class:`CheckpointError`
    saying why it cannot be downloaded and how to fix it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        # With local_files_only, huggingface_hub resolves the revision through the cache's
        # refs and returns the snapshot folder, touching nothing.
        folder = snapshot_download(
            name.repo_id, revision=name.revision, cache_dir=cache, local_files_only=True
        )
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{name}: not in the local cache ({cache}) and {why_not_online}, so it cannot be "
            "downloaded; " + _how_to_get_it(why_not_online)
        ) from None
    return Path(folder)


def _how_to_get_it(why_not_online: str) -> str:
    where = "or point HF_HOME (or HF_HUB_CACHE) at a cache that holds it"
    if "HF_HUB_OFFLINE" in why_not_online:
        return f"unset HF_HUB_OFFLINE on a machine with network to download it, {where}"
    return f"check the network connection (and HF_ENDPOINT), {where}"


def _from_cache(name: HubName, folder: Path, why_not_online: str):
    """A fetch that only checks the cache holds the file."""

    def fetch(file: str) -> Path:
        path = folder / file
        if not path.exists():
            raise CheckpointError(
                f"{name}: the local cache holds {file} of commit {folder.name} only partly or "
                f"not at all ({str(path)!r} is missing) and {why_not_online}; "
                + _how_to_get_it(why_not_online)
            )
        return path

    return fetch


def _downloader(name: HubName, commit: str, cache: Path):
    """A fetch that downloads a file of ``commit`` into the cache (a no-op once cached)."""
    from huggingface_hub import hf_hub_download

    def fetch(file: str) -> Path:
        try:
            return Path(hf_hub_download(name.repo_id, file, revision=commit, cache_dir=cache))
        except _network_errors() as e:  # the network failed after the listing
            raise _download_failed(name, file, e) from None

    return fetch


def _download_failed(name: HubName, what: str, error: BaseException) -> CheckpointError:
    first = (str(error).splitlines() or [""])[0]
    return CheckpointError(
        f"{name}: downloading {what} failed ({type(error).__name__}: {first}); rerun the same "
        "command to resume it"
    )


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _repo_folder(repo_id: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="model")


@contextlib.contextmanager
def _progress_bars(on: bool):
    """huggingface_hub's progress bars off for a while when ``on`` is False, then as before."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    turn_off = not on and not are_progress_bars_disabled()
    if turn_off:
        disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            enable_progress_bars()
