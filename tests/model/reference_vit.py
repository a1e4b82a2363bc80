"""A plainly written NumPy ViT forward pass, one image and one head at a time, used as a reference.

It reads the parameter tree by its names and follows each architecture option as the papers and
libraries describe it (layer scale as a factor after the projection, SwiGLU as gate times value,
sin-cos positions from big_vision's formula, ...), sharing no code with the model.
"""

import math

import numpy as np


def _f64(a):
    return np.asarray(a, np.float64)


def _layer_norm(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _f64(p["scale"]) + _f64(p["bias"])


def _gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _mlp(config, p, y):
    h = y @ _f64(p["Dense_0"]["kernel"]) + _f64(p["Dense_0"]["bias"])
    if config.mlp_activation == "swiglu":
        gate, value = np.split(h, 2, axis=-1)
        h = gate / (1 + np.exp(-gate)) * value
    elif config.mlp_activation == "quick_gelu":
        h = h / (1 + np.exp(-1.702 * h))
    else:
        h = _gelu(h, config.gelu_approximate)
    return h @ _f64(p["Dense_1"]["kernel"]) + _f64(p["Dense_1"]["bias"])


def _head_attention(p, queries, keys, h, head_dim):
    """One head: (probs [query, key], values [key, head_dim])."""
    proj = {}
    for name, x in (("query", queries), ("key", keys), ("value", keys)):
        w = _f64(p[name]["kernel"])[:, h, :]
        b = _f64(p[name]["bias"])[h] if "bias" in p[name] else 0.0
        proj[name] = x @ w + b
    scores = proj["query"] @ proj["key"].T / math.sqrt(head_dim)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    return probs, proj["value"]


def sincos_table(grid, width):
    """big_vision's posemb_sincos_2d, written out: [Gh*Gw, width]."""
    gh, gw = grid
    quarter = width // 4
    omega = 1.0 / 10_000.0 ** (np.arange(quarter) / (quarter - 1))
    rows = []
    for r in range(gh):
        for c in range(gw):
            x, y = c * omega, r * omega
            rows.append(np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)]))
    return np.stack(rows)


def reference_forward(config, params, image, head_mask=None, keep=None, details=False, add=None):
    """One image ``[H, W, C]`` -> (logits, attention [L, heads, N, N]) in float64.

    ``keep`` is ``[L, heads, N, N]`` multipliers on the attention probabilities.  ``add`` maps
    ``(layer, head)`` to an array ``[N, head_dim]`` added to that head's output (its
    probabilities times its values, after ``keep`` and ``head_mask``) before the output
    projection.  With ``details`` a third value is returned: ``{"pooled": [pooled],
    "pool_attention": [heads, 1, patch] or None, "mixed": [L, heads, N, head_dim] each head's
    output after ``keep``, before ``head_mask`` and ``add``, "block_outputs": [L, N, hidden]
    each attention block's output, before the residual add}``.
    """
    p = params
    c = config
    ph, pw = c.patch_size
    gh, gw = c.grid
    kernel = _f64(p["embedding"]["kernel"])  # [ph, pw, C, D]
    bias = _f64(p["embedding"]["bias"]) if "bias" in p["embedding"] else 0.0
    tokens = []
    for r in range(gh):
        for col in range(gw):
            patch = _f64(image[r * ph : (r + 1) * ph, col * pw : (col + 1) * pw, :])
            tokens.append(np.einsum("ijc,ijcd->d", patch, kernel) + bias)
    patches = np.stack(tokens)
    special = []
    for name in ("cls", "distillation", "registers"):
        if name in p:
            special.extend(_f64(p[name])[0])
    num_special = len(special)
    assert num_special == c.num_prefix_tokens
    enc = p["Transformer"]
    if c.position_embedding == "sincos2d":
        patch_pos, special_pos = sincos_table(c.grid, c.hidden_size), []
    else:
        table = _f64(enc["posembed_input"]["pos_embedding"])[0]
        covered = (
            c.num_prefix_tokens if c.position_prefix_tokens is None else c.position_prefix_tokens
        )
        patch_pos, special_pos = table[covered:], list(table[:covered])
    special = [t + (special_pos[i] if i < len(special_pos) else 0.0) for i, t in enumerate(special)]
    x = np.concatenate([np.stack(special), patches + patch_pos]) if special else patches + patch_pos
    if "pre_norm" in enc:
        x = _layer_norm(x, enc["pre_norm"], c.layer_norm_eps)

    L, H, hd = c.num_layers, c.num_heads, c.head_dim
    attentions = np.zeros((L, H, len(x), len(x)))
    mixed = np.zeros((L, H, len(x), hd))
    block_outputs = np.zeros((L, *x.shape))
    for layer in range(L):
        blk = enc[f"encoderblock_{layer}"]
        y = _layer_norm(x, blk["LayerNorm_0"], c.layer_norm_eps)
        mha = blk["MultiHeadDotProductAttention_1"]
        out = np.zeros_like(x)
        for h in range(H):
            probs, values = _head_attention(mha, y, y, h, hd)
            if keep is not None:
                probs = probs * keep[layer, h]
            attentions[layer, h] = probs
            head_out = probs @ values
            mixed[layer, h] = head_out
            if head_mask is not None:
                head_out = head_out * head_mask[layer, h]
            if add is not None and (layer, h) in add:
                head_out = head_out + _f64(add[(layer, h)])
            out += head_out @ _f64(mha["out"]["kernel"])[h]
        out = out + _f64(mha["out"]["bias"])
        if "LayerScale_1" in blk:
            out = out * _f64(blk["LayerScale_1"]["scale"])
        block_outputs[layer] = out
        x = x + out
        y = _mlp(c, blk["MlpBlock_3"], _layer_norm(x, blk["LayerNorm_2"], c.layer_norm_eps))
        if "LayerScale_3" in blk:
            y = y * _f64(blk["LayerScale_3"]["scale"])
        x = x + y

    if "encoder_norm" in enc:
        x = _layer_norm(x, enc["encoder_norm"], c.layer_norm_eps)
    pool_attention = None
    if c.classifier == "token":
        pooled = x[0]
    elif c.classifier == "gap":
        pooled = x[num_special:].mean(0)
    else:
        m = p["MAPHead_0"]
        mha = m["MultiHeadDotProductAttention_0"]
        probe = _f64(m["probe"])[0]  # [1, D]
        pooled = np.zeros((1, c.hidden_size))
        pool_attention = np.zeros((H, 1, len(x) - num_special))
        for h in range(H):
            probs, values = _head_attention(mha, probe, x[num_special:], h, hd)
            pool_attention[h] = probs
            pooled += (probs @ values) @ _f64(mha["out"]["kernel"])[h]
        pooled = pooled + _f64(mha["out"]["bias"])
        pooled = pooled + _mlp(
            c, m["MlpBlock_0"], _layer_norm(pooled, m["LayerNorm_0"], c.layer_norm_eps)
        )
        pooled = pooled[0]
    if "fc_norm" in p:
        pooled = _layer_norm(pooled, p["fc_norm"], c.layer_norm_eps)
    if c.representation_size is not None:
        pooled = np.tanh(pooled @ _f64(p["pre_logits"]["kernel"]) + _f64(p["pre_logits"]["bias"]))
    if c.projection_dim is not None:
        pooled = pooled @ _f64(p["projection"]["kernel"])
    if "head" in p:
        logits = pooled @ _f64(p["head"]["kernel"]) + _f64(p["head"]["bias"])
    else:
        logits = np.zeros((0,))
    if "head_dist" in p:
        dist_logits = x[1] @ _f64(p["head_dist"]["kernel"]) + _f64(p["head_dist"]["bias"])
        logits = (logits + dist_logits) / 2
        pooled = (pooled + x[1]) / 2
    if details:
        more = {
            "pooled": pooled,
            "pool_attention": pool_attention,
            "mixed": mixed,
            "block_outputs": block_outputs,
        }
        return logits, attentions, more
    return logits, attentions
