"""Forward-pass throughput: the jitted JAX ViT next to Hugging Face transformers on PyTorch.

For each size a random-weight ``ViTForImageClassification`` is built, saved with
``save_pretrained`` and loaded through ``load_checkpoint``, so both sides run the same weights
(the script checks their logits agree). Each side is timed twice: logits only, and with every
layer's attention returned (what the analyses need). Times are wall-clock per batch after
warm-up; the table reports the median and best of the repeats, and images per second from the
median.

    python benchmarks/forward_throughput.py    # ViT-S/16 and ViT-B/16, batch 8, 224 px
    python benchmarks/forward_throughput.py --variants Ti/16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.model import VisionTransformer, ViTConfig, run_model
from jaxvit_interp.model.checkpoint import load_checkpoint


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def hf_model(config: ViTConfig, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim,
        image_size=list(config.image_size),
        patch_size=list(config.patch_size),
        num_channels=config.channels,
        num_labels=config.num_classes,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        attn_implementation="eager",
    )
    return transformers.ViTForImageClassification(hf_config).eval()


def benchmark(variant: str, batch: int, image_size: int, warmup: int, repeats: int, seed: int):
    import torch

    config = ViTConfig.from_variant(variant, image_size=image_size)
    model = hf_model(config, seed)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, safe_serialization=True)
        config, params = load_checkpoint(folder)

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, *config.image_size, config.channels)).astype(np.float32)
    x = jnp.asarray(images)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    module = VisionTransformer(config)
    logits_only = jax.jit(lambda p, x: module.apply({"params": p}, x).logits)

    def jax_logits():
        return logits_only(params, x).block_until_ready()

    def jax_all():
        return jax.block_until_ready(run_model(config, params, x))

    def torch_logits():
        with torch.no_grad():
            return model(pixel_values=pixels).logits

    def torch_all():
        with torch.no_grad():
            return model(pixel_values=pixels, output_attentions=True)

    # Same weights, same answer: otherwise the timings would compare different models.
    ours, theirs = np.asarray(jax_logits()), torch_logits().numpy()
    err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    rows = []
    for impl, outputs, fn in [
        ("JAX (jit)", "logits", jax_logits),
        ("JAX (jit)", "logits + attention", jax_all),
        ("transformers (PyTorch eager)", "logits", torch_logits),
        ("transformers (PyTorch eager)", "logits + attention", torch_all),
    ]:
        times = time_calls(fn, warmup, repeats)
        median = statistics.median(times)
        rows.append((f"ViT-{variant}", impl, outputs, median, min(times), batch / median))
    return rows, err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["S/16", "B/16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    import transformers

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads; transformers {transformers.__version__}"
    )
    print(
        f"batch {args.batch}, {args.image_size} px, random weights, median of {args.repeats} "
        f"after {args.warmup} warm-up calls\n"
    )
    print(
        "| model | implementation | outputs | s / batch (median) | s / batch (best) | images / s |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: |")
    errors = {}
    for variant in args.variants:
        rows, errors[variant] = benchmark(
            variant, args.batch, args.image_size, args.warmup, args.repeats, args.seed
        )
        for model, impl, outputs, median, best, rate in rows:
            print(
                f"| {model} | {impl} | {outputs} | {median:.3f} | {best:.3f} | {rate:.1f} |",
                flush=True,
            )
    print()
    for variant, err in errors.items():
        print(f"ViT-{variant}: logits max relative difference JAX vs PyTorch {err:.1e}")


if __name__ == "__main__":
    main()
