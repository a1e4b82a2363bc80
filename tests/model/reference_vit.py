"""A plainly written NumPy ViT forward pass, one image and one head at a time, used as a reference."""

import math

import numpy as np


def _layer_norm(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def reference_forward(config, params, image, head_mask=None, keep=None):
    """One image ``[H, W, C]`` -> (logits, attention [L, heads, N, N]) in float64.

    ``keep`` is ``[L, heads, N, N]`` multipliers on the attention probabilities.
    """
    p = {k: v for k, v in params.items()}
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    ph, pw = config.patch_size
    gh, gw = config.grid
    kernel = f64(p["embedding"]["kernel"])  # [ph, pw, C, D]
    tokens = []
    for r in range(gh):
        for c in range(gw):
            patch = f64(image[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw, :])
            tokens.append(np.einsum("ijc,ijcd->d", patch, kernel) + f64(p["embedding"]["bias"]))
    x = np.stack(tokens)
    if config.has_cls_token:
        x = np.concatenate([f64(p["cls"])[0], x], axis=0)
    enc = p["Transformer"]
    x = x + f64(enc["posembed_input"]["pos_embedding"])[0]
    L, H, hd = config.num_layers, config.num_heads, config.head_dim
    attentions = np.zeros((L, H, len(x), len(x)))
    for layer in range(L):
        blk = enc[f"encoderblock_{layer}"]
        y = _layer_norm(
            x, {k: f64(v) for k, v in blk["LayerNorm_0"].items()}, config.layer_norm_eps
        )
        mha = blk["MultiHeadDotProductAttention_1"]
        out = np.zeros_like(x)
        for h in range(H):
            proj = {}
            for name in ("query", "key", "value"):
                w = f64(mha[name]["kernel"])[:, h, :]
                b = f64(mha[name]["bias"])[h] if "bias" in mha[name] else 0.0
                proj[name] = y @ w + b
            scores = proj["query"] @ proj["key"].T / math.sqrt(hd)
            scores = scores - scores.max(-1, keepdims=True)
            probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
            if keep is not None:
                probs = probs * keep[layer, h]
            attentions[layer, h] = probs
            head_out = probs @ proj["value"]
            if head_mask is not None:
                head_out = head_out * head_mask[layer, h]
            out += head_out @ f64(mha["out"]["kernel"])[h]
        x = x + out + f64(mha["out"]["bias"])
        y = _layer_norm(
            x, {k: f64(v) for k, v in blk["LayerNorm_2"].items()}, config.layer_norm_eps
        )
        mlp = blk["MlpBlock_3"]
        y = _gelu(
            y @ f64(mlp["Dense_0"]["kernel"]) + f64(mlp["Dense_0"]["bias"]), config.gelu_approximate
        )
        x = x + y @ f64(mlp["Dense_1"]["kernel"]) + f64(mlp["Dense_1"]["bias"])
    x = _layer_norm(x, {k: f64(v) for k, v in enc["encoder_norm"].items()}, config.layer_norm_eps)
    pooled = x[0] if config.has_cls_token else x.mean(0)
    if config.representation_size is not None:
        pooled = np.tanh(pooled @ f64(p["pre_logits"]["kernel"]) + f64(p["pre_logits"]["bias"]))
    logits = pooled @ f64(p["head"]["kernel"]) + f64(p["head"]["bias"])
    return logits, attentions
