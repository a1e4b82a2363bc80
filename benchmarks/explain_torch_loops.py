"""Explanation maps and faithfulness curves: our batched calls against the one-image-at-a-time
PyTorch loops people write today, side by side in one run.

One random-weight Hugging Face ``ViTForImageClassification`` (ViT-S/16 or B/16 sizes, 1000
classes, eager attention, float32) is saved to safetensors and loaded into jaxvit_interp with
``load_checkpoint``: both sides run the same weights on the same random pixels and labels.

Ours: one ``explain`` call per method over every image, and one ``faithfulness`` call per mode
(the library's defaults: batches planned from the memory budget, default execution).

Theirs, written out in plain PyTorch in the style of the library each follows, image by image:

- ``grad_rollout``: Chefer et al.'s Transformer-Explainability recipe: forward hooks on each
  block's attention save the probabilities and register a tensor hook for their gradient; one
  forward and one backward of the label's logit per image; ``R += mean_h relu(grad * A) @ R``.
- ``gradcam``: pytorch-grad-cam's ViT example: hooks on the last block's ``layernorm_before``
  and a ``reshape_transform`` to ``[C, 14, 14]``, one image per call; channel weights are the
  spatial mean of the gradient. The hook reads the LayerNorm's input (the residual stream our
  Grad-CAM reads) rather than its output (the same tokens normalised), so the two sides compute
  the same map; pytorch-grad-cam's min-max scaling and resize to pixels are left out (cheap, and
  they would hide differences).
- ``integrated_gradients``: captum's ``IntegratedGradients`` with ``method="riemann_middle"``
  and ``return_convergence_delta=True``: the ``--ig-steps`` path points of one image as one batch
  (``internal_batch_size`` = the steps, ``--ig-internal-batch`` to cut it), the gradient of the
  label's logit, then a forward of the image and its baseline for the completeness gap.
- ``occlusion``: captum's ``Occlusion`` with 16x16 windows at stride 16 (one per patch), zero
  baseline, the softmax probability of the label as the output, ``perturbations_per_eval`` =
  the patches of one image (``--occlusion-per-eval`` to cut it); the value of each window is the
  probability drop (captum would spread it over the window's pixels).
- ``deletion+insertion``: Petsiuk et al.'s ``CausalMetric`` (RISE) per image, with the steps
  of one image batched (one forward per image and mode, not one per step): the curve of the map
  and that of a random patch order (ours always computes that reference too), zero baseline.
  The map is our ``gradcam`` map; the random orders are ours
  (:func:`~jaxvit_interp.explain.faithfulness.random_orders_maps`), so both follow the same ones.

Before timing, the warm-up round's outputs of both sides are compared (max difference over the
reference's largest magnitude). Each side is then timed for ``--rounds`` rounds; images/s is
``--images`` over the median round. PyTorch gets as many threads as the cores JAX's CPU backend
uses (all the process may run on), unless ``--torch-threads`` says otherwise: on a CPU that other
jobs keep busy, PyTorch's OpenMP threads wait on each other at every parallel region, and one
thread can run faster than two.

Run:  python benchmarks/explain_torch_loops.py --variant S/16 --images 2 --rounds 1 --ig-steps 8 \
        --parts grad_rollout gradcam integrated_gradients deletion+insertion
      python benchmarks/explain_torch_loops.py --variant S/16 --images 1 --rounds 1 --parts occlusion
(``--variant B/16`` for ViT-B/16; on a 2-core CPU a full run takes tens of minutes.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import transformers

from jaxvit_interp import Execution
from jaxvit_interp.explain import explain, faithfulness
from jaxvit_interp.explain.faithfulness import MODES, random_orders_maps, removal_counts
from jaxvit_interp.model.checkpoint import load_checkpoint

# Hugging Face ViTConfig sizes of the variants (224 px, 16 px patches, 12 layers).
VARIANTS = {
    "S/16": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "B/16": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
PARTS = ("grad_rollout", "gradcam", "integrated_gradients", "occlusion", "deletion+insertion")


def hf_classifier(variant: str, seed: int) -> transformers.ViTForImageClassification:
    """A random-weight ViTForImageClassification of the variant's sizes: Hugging Face's own
    initialisation (truncated normal, std 0.02) from ``seed``, exact GELU, eps 1e-12."""
    config = transformers.ViTConfig(
        **VARIANTS[variant],
        num_hidden_layers=12,
        image_size=224,
        patch_size=16,
        num_labels=1000,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config).eval()


def ours_loaded(model, folder: str):
    """Our ``(config, params)`` of ``model``, through its safetensors checkpoint."""
    model.save_pretrained(folder, safe_serialization=True)
    return load_checkpoint(folder)


def _pixels(images: np.ndarray, device) -> torch.Tensor:
    """``[image, H, W, C]`` -> ``[image, C, H, W]`` float32 on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


class TorchLoops:
    """The per-image PyTorch loops (module docstring), each ``(images, labels, ...) -> maps
    [image, Gh, Gw]`` as NumPy."""

    def __init__(self, model, device):
        self.model = model.to(device)
        self.device = device
        config = model.config
        self.grid = config.image_size // config.patch_size
        self.patch = config.patch_size
        self.blocks = model.vit.encoder.layer

    def grad_rollout(self, images, labels) -> np.ndarray:
        """Chefer et al.: hooks save each block's attention and its gradient."""
        saved = []

        def keep_attention(module, inputs, outputs):
            probs = outputs[1]  # [1, head, N, N]
            entry = {"attention": probs}
            probs.register_hook(lambda grad: entry.__setitem__("gradient", grad))
            saved.append(entry)

        hooks = [b.attention.attention.register_forward_hook(keep_attention) for b in self.blocks]
        maps = []
        try:
            for image, label in zip(images, labels, strict=True):
                saved.clear()
                logits = self.model(pixel_values=_pixels(image[None], self.device)).logits
                self.model.zero_grad()
                logits[0, int(label)].backward()
                n = saved[0]["attention"].shape[-1]
                relevance = torch.eye(n, device=self.device)
                for entry in saved:
                    weighted = (entry["gradient"] * entry["attention"]).clamp(min=0)
                    relevance = relevance + weighted[0].mean(dim=0) @ relevance
                maps.append(relevance[0, 1:].reshape(self.grid, self.grid).detach().cpu())
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(maps).numpy()

    def _reshape_transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """pytorch-grad-cam's ViT ``reshape_transform``: drop CLS, ``[B, C, h, w]``."""
        result = tokens[:, 1:, :].reshape(len(tokens), self.grid, self.grid, tokens.shape[2])
        return result.transpose(2, 3).transpose(1, 2)

    def gradcam(self, images, labels) -> np.ndarray:
        """pytorch-grad-cam's ViT recipe on the last block's ``layernorm_before`` (its input)."""
        store = {}

        def keep_tokens(module, inputs):
            tokens = inputs[0]
            store["activations"] = self._reshape_transform(tokens.detach())
            tokens.register_hook(
                lambda grad: store.__setitem__("gradients", self._reshape_transform(grad))
            )

        hook = self.blocks[-1].layernorm_before.register_forward_pre_hook(keep_tokens)
        maps = []
        try:
            for image, label in zip(images, labels, strict=True):
                logits = self.model(pixel_values=_pixels(image[None], self.device)).logits
                self.model.zero_grad()
                logits[0, int(label)].backward()
                weights = store["gradients"].mean(dim=(2, 3), keepdim=True)  # [1, C, 1, 1]
                cam = (weights * store["activations"]).sum(dim=1).clamp(min=0)
                maps.append(cam[0].detach().cpu())
        finally:
            hook.remove()
        return torch.stack(maps).numpy()

    def integrated_gradients(self, images, labels, steps: int, internal_batch: int):
        """captum-style IG, ``riemann_middle``, zero baseline: maps and completeness gaps."""
        maps, gaps = [], []
        alphas = (torch.arange(steps, dtype=torch.float32, device=self.device) + 0.5) / steps
        for image, label in zip(images, labels, strict=True):
            x = _pixels(image[None], self.device)
            x0 = torch.zeros_like(x)
            summed = torch.zeros_like(x)
            for start in range(0, steps, internal_batch):
                a = alphas[start : start + internal_batch].view(-1, 1, 1, 1)
                path = (x0 + a * (x - x0)).requires_grad_(True)
                logits = self.model(pixel_values=path).logits
                (gradient,) = torch.autograd.grad(logits[:, int(label)].sum(), path)
                summed += gradient.sum(dim=0, keepdim=True)
            attribution = ((x - x0) * summed / steps)[0]  # [C, H, W]
            with torch.no_grad():
                ends = self.model(pixel_values=torch.cat([x, x0])).logits[:, int(label)]
            gaps.append(float(attribution.sum() - (ends[0] - ends[1])))
            p = self.patch
            per_patch = attribution.reshape(3, self.grid, p, self.grid, p).sum(dim=(0, 2, 4))
            maps.append(per_patch.detach().cpu())
        return torch.stack(maps).numpy(), np.asarray(gaps, np.float32)

    def _window_masks(self) -> torch.Tensor:
        """``[patch, 1, H, W]``: 1 inside each 16x16 window (row-major), 0 elsewhere."""
        size, p = self.grid * self.patch, self.patch
        masks = torch.zeros(self.grid * self.grid, 1, size, size, device=self.device)
        for index in range(self.grid * self.grid):
            row, col = divmod(index, self.grid)
            masks[index, :, row * p : (row + 1) * p, col * p : (col + 1) * p] = 1.0
        return masks

    @torch.no_grad()
    def occlusion(self, images, labels, per_eval: int) -> np.ndarray:
        """captum-style occlusion, zero baseline: p(label) drop per window."""
        masks = self._window_masks()
        maps = []
        for image, label in zip(images, labels, strict=True):
            x = _pixels(image[None], self.device)
            clean = self.model(pixel_values=x).logits.softmax(-1)[0, int(label)]
            drops = []
            for start in range(0, len(masks), per_eval):
                occluded = x * (1.0 - masks[start : start + per_eval])
                probs = self.model(pixel_values=occluded).logits.softmax(-1)[:, int(label)]
                drops.append(clean - probs)
            maps.append(torch.cat(drops).reshape(self.grid, self.grid).cpu())
        return torch.stack(maps).numpy()

    @torch.no_grad()
    def curves(self, images, labels, maps, random_maps, mode: str, steps: int):
        """RISE-style causal metric per image, zero baseline, the steps of one image batched:
        curves ``[image, 2, steps + 1]`` of the map and of the random order."""
        counts = removal_counts(self.grid * self.grid, steps)
        masks = self._window_masks()[:, 0]  # [patch, H, W]
        out = []
        for image, label, one_map, random_map in zip(
            images, labels, maps, random_maps, strict=True
        ):
            x = _pixels(image[None], self.device)[0]  # [C, H, W]
            both = []
            for values in (one_map.ravel(), random_map):
                order = torch.from_numpy(np.argsort(-values, kind="stable")).to(self.device)
                batch = []
                for count in counts:
                    replaced = masks[order[:count]].sum(dim=0).clamp(max=1.0)  # [H, W]
                    keep = 1.0 - replaced if mode == "deletion" else replaced
                    batch.append(x * keep)
                probs = self.model(pixel_values=torch.stack(batch)).logits.softmax(-1)
                both.append(probs[:, int(label)].cpu())
            out.append(torch.stack(both))
        return torch.stack(out).numpy()


def relative_difference(ours, theirs) -> float:
    """``max|ours - theirs| / max|theirs|``."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def timed(run, rounds: int) -> tuple[float, object]:
    """The median seconds of ``rounds`` calls of ``run`` after one warm-up call, and the
    warm-up's result."""
    result = run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def jax_cores() -> int:
    """The cores JAX's CPU backend runs on: every core this process may use."""
    return len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="S/16")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--ig-internal-batch", type=int, default=None, help="default: the steps")
    parser.add_argument("--occlusion-per-eval", type=int, default=None, help="default: P")
    parser.add_argument("--curve-steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--device", default="cpu", help="PyTorch's device (ours: JAX's default)")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="default: the cores JAX uses"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("images", "ig_steps", "curve_steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    threads = args.torch_threads or jax_cores()
    torch.set_num_threads(threads)
    model = hf_classifier(args.variant, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        config, params = ours_loaded(model, folder)
    loops = TorchLoops(model, torch.device(args.device))
    rng = np.random.default_rng(args.seed)
    images = rng.standard_normal((args.images, 224, 224, 3)).astype(np.float32)
    labels = rng.integers(0, 1000, size=args.images)
    quiet = Execution(progress=False)
    ig_batch = args.ig_internal_batch or args.ig_steps
    per_eval = args.occlusion_per_eval or config.num_patches

    def ours(method):
        options = dict(methods=(method,), execution=quiet, ig_steps=args.ig_steps)
        return lambda: explain(config, params, images, labels, **options)

    # The maps the curves follow: our Grad-CAM's, computed once, outside the timing.
    curve_maps = ours("gradcam")().maps["gradcam"] if "deletion+insertion" in args.parts else None

    def ours_curves():
        return [
            faithfulness(
                config,
                params,
                images,
                labels,
                curve_maps,
                mode=mode,
                steps=args.curve_steps,
                execution=quiet,
            )
            for mode in MODES
        ]

    def theirs_curves():
        random = random_orders_maps(config, len(images), None)
        return [
            loops.curves(images, labels, curve_maps, random, mode, args.curve_steps)
            for mode in MODES
        ]

    sides = {
        "grad_rollout": (ours("grad_rollout"), lambda: loops.grad_rollout(images, labels)),
        "gradcam": (ours("gradcam"), lambda: loops.gradcam(images, labels)),
        "integrated_gradients": (
            ours("integrated_gradients"),
            lambda: loops.integrated_gradients(images, labels, args.ig_steps, ig_batch),
        ),
        "occlusion": (ours("occlusion"), lambda: loops.occlusion(images, labels, per_eval)),
        "deletion+insertion": (ours_curves, theirs_curves),
    }
    loads = os.getloadavg()
    print(
        f"{args.variant}, {args.images} images, ig_steps {args.ig_steps} (torch internal batch "
        f"{ig_batch}), occlusion {per_eval} windows a forward, curve steps {args.curve_steps}; "
        f"medians of {args.rounds} rounds after a warm-up one; torch {torch.__version__} on "
        f"{args.device} with {threads} threads (JAX uses {jax_cores()} cores); load average "
        f"{loads[0]:.1f} {loads[1]:.1f} {loads[2]:.1f} at the start",
        flush=True,
    )
    rows = []
    for part in args.parts:
        ours_run, theirs_run = sides[part]
        ours_s, ours_out = timed(ours_run, args.rounds)
        theirs_s, theirs_out = timed(theirs_run, args.rounds)
        if part == "deletion+insertion":
            got = np.stack(
                [np.concatenate([c.curves[:, None], c.random_curves[:, None]], 1) for c in ours_out]
            )
            difference = relative_difference(got, np.stack(theirs_out))
        elif part == "integrated_gradients":
            theirs_maps, theirs_gap = theirs_out
            difference = relative_difference(ours_out.maps[part], theirs_maps)
            gap = relative_difference(ours_out.integrated_gradients_gap, theirs_gap)
            print(f"  integrated_gradients gap: relative difference {gap:.1e}", flush=True)
        else:
            difference = relative_difference(ours_out.maps[part], theirs_out)
        ours_rate, theirs_rate = args.images / ours_s, args.images / theirs_s
        rows.append((part, ours_rate, theirs_rate, difference))
        print(
            f"  {part}: ours {ours_rate:.3f} images/s, torch loop {theirs_rate:.3f} images/s, "
            f"ours/theirs {ours_rate / theirs_rate:.2f}x, max difference {difference:.1e}",
            flush=True,
        )
    loads = os.getloadavg()
    print(f"load average {loads[0]:.1f} {loads[1]:.1f} {loads[2]:.1f} at the end")
    print("| part | ours images/s | torch loop images/s | ours / torch | max rel. difference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for part, ours_rate, theirs_rate, difference in rows:
        print(
            f"| {part} | {ours_rate:.3f} | {theirs_rate:.3f} | {ours_rate / theirs_rate:.2f}x | "
            f"{difference:.1e} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
