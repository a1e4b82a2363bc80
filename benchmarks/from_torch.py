"""``from_torch`` against saving the model and loading the file, at full size.

For each model a random-weight PyTorch module is built: transformers' ViT-B/16
(``ViTForImageClassification``, 1,000 classes) and timm's ``vit_base_patch16_224``. The table
times ``from_torch(model)`` next to what it replaces, the library's save (``save_pretrained``;
timm's ``save_for_hf``) plus ``load_checkpoint`` from a temporary folder, each the median of the
repeats after one warm-up call; checks that both give the same config and the same arrays; and
reports the largest relative difference between our logits and the module's on random images.

    python benchmarks/from_torch.py                # both models, 3 repeats, 2 images
    python benchmarks/from_torch.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
from flax import traverse_util

import jaxvit_interp as jvi


def hf_vit_b16():
    import transformers

    config = transformers.ViTConfig(num_labels=1000, attn_implementation="eager")
    return transformers.ViTForImageClassification(config).eval(), lambda m, f: m.save_pretrained(f)


def timm_vit_b16():
    import timm
    from timm.models._hub import save_for_hf

    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    return model, lambda m, f: save_for_hf(m, f, safe_serialization=True)


MODELS = {"transformers ViT-B/16": hf_vit_b16, "timm vit_base_patch16_224": timm_vit_b16}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: imports, first allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, save, repeats: int, num_images: int) -> tuple[float, float, float]:
    """(from_torch seconds, save + load_checkpoint seconds, max relative logit difference)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "saved"

        def save_and_load():
            save(model, folder)
            return jvi.load_checkpoint(folder)

        live_s = median_seconds(lambda: jvi.from_torch(model), repeats)
        file_s = median_seconds(save_and_load, repeats)
        config, params = jvi.from_torch(model)
        file_config, file_params = save_and_load()
    assert config == file_config
    ours, theirs = (traverse_util.flatten_dict(p, sep="/") for p in (params, file_params))
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
    images = np.random.default_rng(0).normal(size=(num_images, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    reference = (out.logits if hasattr(out, "logits") else out).numpy()
    with jax.default_matmul_precision("float32"):
        logits = jvi.run_model(config, params, images.transpose(0, 2, 3, 1)).logits
    diff = np.abs(np.asarray(logits) - reference).max() / np.abs(reference).max()
    return live_s, file_s, float(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    print(
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, jax {jax.__version__}"
    )
    print("| model | from_torch (s) | save + load_checkpoint (s) | max relative logit difference |")
    print("| --- | ---: | ---: | ---: |")
    for name, build in MODELS.items():
        torch.manual_seed(0)
        model, save = build()
        live_s, file_s, diff = measure(model, save, args.repeats, args.images)
        print(f"| {name} | {live_s:.2f} | {file_s:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
