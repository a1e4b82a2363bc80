"""A plainly written double loop over patches: the slow, obvious reference for the kernels.

It follows the definitions in :mod:`.kernels` word for word, one head at a time, in pure Python,
so that tests and benchmarks can compare the vectorised kernels against something that shares no
code or tricks with them.
"""

from __future__ import annotations

import math


def hop_strength_loop(
    attention, grid, *, has_cls_token: bool = True, patch_size=(1, 1), num_prefix_tokens=None
) -> dict:
    """Hop strength of one head ``[N, N]`` by looping over query and key patches.

    ``num_prefix_tokens``: special tokens before the patches (CLS first), by default CLS alone.

    Returns:
      dict with ``strength`` and ``mass`` (lists over hops), ``patch_to_cls``,
      ``cls_to_patch``, ``distance``, ``head_entropy`` (floats; NaN where undefined) and
      ``query_hop_mass`` (list over query patches of lists over hops).
    """
    a = attention.tolist() if hasattr(attention, "tolist") else attention
    gh, gw = grid
    ph, pw = patch_size
    num_patches = gh * gw
    num_hops = max(gh, gw)
    first = (1 if has_cls_token else 0) if num_prefix_tokens is None else num_prefix_tokens

    query_hop_mass = []
    strength_sum = [0.0] * num_hops
    queries_with_hop = [0] * num_hops
    distances = []
    for i in range(num_patches):
        ri, ci = divmod(i, gw)
        hop_mass = [0.0] * num_hops
        keys_at_hop = [0] * num_hops
        weighted_distance = 0.0
        for j in range(num_patches):
            rj, cj = divmod(j, gw)
            hop = max(abs(ri - rj), abs(ci - cj))
            value = a[first + i][first + j]
            hop_mass[hop] += value
            keys_at_hop[hop] += 1
            weighted_distance += value * math.hypot((ri - rj) * ph, (ci - cj) * pw)
        query_hop_mass.append(hop_mass)
        for k in range(num_hops):
            if keys_at_hop[k] > 0:
                strength_sum[k] += hop_mass[k] / keys_at_hop[k]
                queries_with_hop[k] += 1
        patch_mass = sum(hop_mass)
        if patch_mass > 0:
            distances.append(weighted_distance / patch_mass)

    strength = [s / n for s, n in zip(strength_sum, queries_with_hop, strict=True)]
    mass = [sum(row[k] for row in query_hop_mass) / num_patches for k in range(num_hops)]

    total = sum(strength)
    if total > 0:
        head_entropy = -sum(s / total * math.log(s / total) for s in strength if s > 0)
    else:
        head_entropy = math.nan

    if has_cls_token:
        patch_to_cls = sum(a[first + i][0] for i in range(num_patches)) / num_patches
        cls_to_patch = sum(a[0][first + j] for j in range(num_patches))
    else:
        patch_to_cls = cls_to_patch = math.nan

    return {
        "strength": strength,
        "mass": mass,
        "patch_to_cls": patch_to_cls,
        "cls_to_patch": cls_to_patch,
        "distance": sum(distances) / len(distances) if distances else math.nan,
        "head_entropy": head_entropy,
        "query_hop_mass": query_hop_mass,
    }


def special_token_mass_loop(attention, num_special: int) -> dict:
    """Attention mass to and from each special token of one head ``[N, N]``, by loops.

    Returns:
      dict with ``to_token`` and ``from_token`` (lists over special tokens) and ``between``
      (list over query special tokens of lists over key special tokens), as defined in
      :mod:`jaxvit_interp.strength.special`.
    """
    a = attention.tolist() if hasattr(attention, "tolist") else attention
    patches = range(num_special, len(a))
    to_token, from_token = [], []
    for t in range(num_special):
        to_token.append(sum(a[i][t] for i in patches) / len(patches))
        from_token.append(sum(a[t][j] for j in patches))
    between = [[a[q][k] for k in range(num_special)] for q in range(num_special)]
    return {"to_token": to_token, "from_token": from_token, "between": between}
