"""A stage kept in the run folder with what it was computed from (its key), so that a resumed
run reads it back and a run with another key computes it again: the Shapley stage (keyed by its
settings, :data:`~.settings.STAGE_SETTINGS`) and the patching stage (keyed by its pairs), whose
keys are not part of the run's fingerprint.

The bundle's meta of such a part records the key (:data:`KEY`), so that a complete run can tell
whether its bundle's part is still the one asked for (:func:`is_current`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.storage import UnreadableFileError, load_npz, save_npz

# The part's meta holds its key under this name; the run folder's file holds the key as JSON
# and the meta as JSON beside the part's arrays, under these.
KEY = "computed_with"
_KEY_ARRAY, _META_ARRAY = "stage_key", "stage_meta"


def load_or_compute(path: Path, key: dict[str, Any], compute) -> tuple[dict, dict]:
    """``(part, meta)`` kept at ``path`` by an earlier try of this run with the same ``key``,
    else ``compute()`` (which returns them) saved there with it; the meta gets the key."""
    text = json.dumps(key, sort_keys=True)
    if path.exists():
        try:
            held = load_npz(path)
            if str(held.pop(_KEY_ARRAY)) == text:
                return held, json.loads(str(held.pop(_META_ARRAY)))
        except (UnreadableFileError, KeyError, json.JSONDecodeError):
            pass  # a torn file, or another key's: computed again
    part, meta = compute()
    meta = {**meta, KEY: key}
    save_npz(
        path, {**part, _META_ARRAY: np.asarray(json.dumps(meta)), _KEY_ARRAY: np.asarray(text)}
    )
    return part, meta


def is_current(bundle_meta: dict[str, Any], part: str, has_part: bool, key) -> bool:
    """Whether a complete run's bundle holds ``part`` as asked: computed with ``key``, or no
    part where ``key`` is None (the stage is off)."""
    if key is None:
        return not has_part
    return has_part and (bundle_meta.get(part) or {}).get(KEY) == key
