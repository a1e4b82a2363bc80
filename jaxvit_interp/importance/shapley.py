"""Shapley values of heads: each head's fair share of what removing a group of heads does.

A head's single-ablation drop ignores the other heads: two heads that cover for each other each
look unimportant alone (the pairwise interactions show it).  The Shapley value of head ``h``
averages its marginal effect over every order in which the heads could be removed.  The game
is, for a set ``S`` of the players (the chosen heads, by default all),

    v(S) = mean over images of metric(heads in S ablated together)

with the set-ablation metrics of :func:`~jaxvit_interp.importance.ablate` (``prob_drop``: ``p_y -
p'_y``, the default; ``kl``; ``repr``), so ``v({}) = 0``, and

    phi_h = sum over S without h of |S|! (n - |S| - 1)! / n! * (v(S + h) - v(S)).

Efficiency: the values of the players add up to ``v(all players)``.

- **Exact**: every one of the ``2^n - 1`` non-empty subsets is one set ablation, and the
  formula above weighs them; at most :data:`EXACT_MAX_PLAYERS` players.
- **Sampled**: each random permutation of the players is one cumulative ablation path (its
  prefixes, sizes 1 to ``n``); the differences of consecutive prefixes are the permutation's
  marginals, and they add up to ``v(all players)``, so the estimate keeps efficiency exactly.
  All the prefixes of a round of permutations go to the set engine in one call, whose tree of
  streams runs each prefix from the layer where it leaves the nearest other set (the prefix
  before it in its permutation differs only at the added head's layer), and every set's value
  is kept, so a set that recurs (the full set, small prefixes) is ablated once.
  ``sampling="antithetic"`` pairs each permutation with its reverse: a head removed early in
  one is removed late in the other, so the pair's two marginals vary less together than two
  independent ones (``benchmarks/RESULTS.md`` measures the error per set ablation).  Rounds of
  :data:`ROUND_PERMUTATIONS` permutations run until every player's standard error is below
  ``target_stderr`` (checked from :data:`MIN_PERMUTATIONS_TO_STOP` permutations on) or
  ``permutations`` have run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution, check_positive
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.importance.aggregate import rank_heads
from jaxvit_interp.importance.sets import ablate
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import Progress, start_progress
from jaxvit_interp.summary import TOP_HEADS, Summarized, number, sizes

__all__ = [
    "EXACT_MAX_PLAYERS",
    "SHAPLEY_METRICS",
    "SHAPLEY_SAMPLINGS",
    "HeadShapley",
    "disagreement",
    "head_shapley",
    "shapley_from_subsets",
]

# The games a set ablation defines: metrics that are 0 for the unpruned model and measure the
# change of the model's output.  ``layer`` is not one: a set's ``layer`` is read at its own
# lowest pruned layer, so two sets' values are changes of different blocks.
SHAPLEY_METRICS: tuple[str, ...] = ("prob_drop", "kl", "repr")
# How permutations are drawn: in pairs of a permutation and its reverse, or each on its own.
SHAPLEY_SAMPLINGS: tuple[str, ...] = ("antithetic", "independent")
# Exact values enumerate 2^n - 1 head sets: 4,095 for 12 players.
EXACT_MAX_PLAYERS = 12
# Permutations per round: one set-engine call; the stopping rule is checked after each.  Rounds
# of one size have stream counts of a few sizes, so the engine's compiled programs serve them all.
ROUND_PERMUTATIONS = 8
# The stopping rule waits for this many permutations: a standard error from fewer is too rough
# to stop on.
MIN_PERMUTATIONS_TO_STOP = 16
# A head's Shapley value and its single-ablation effect disagree when they differ by more than
# this many of the value's standard errors (sampling noise: about 95% of sampled values lie
# within 2 of the exact one) ...
DISAGREE_STDERRS = 2.0
# ... plus this share of the largest of either over the heads: a nonlinear model never makes
# them equal, and a difference too small to see beside the largest head is not worth reading.
DISAGREE_SHARE = 0.1


@dataclasses.dataclass(frozen=True, repr=False)
class HeadShapley(Summarized):
    """Shapley values of the players (heads) of the game ``v(S)`` = the mean over images of
    ``metric`` with the heads of ``S`` ablated (see :mod:`~jaxvit_interp.importance.shapley`).

    Heads that are not players have NaN in ``values``, ``per_image`` and ``stderr``.

    Attributes:
      heads: ``[player, 2]`` int ``(layer, head)`` of the players, in the order given.
      values: ``[layer, head]`` float64 Shapley value of each player; ``np.nansum(values)`` is
        ``v_all`` (efficiency).
      per_image: ``[image, layer, head]`` float64 the same for each image's own game (the
        same permutations for every image); ``values`` is its mean over the images.
      stderr: ``[layer, head]`` float64 standard error of each sampled value over the
        permutations (over the pairs, for antithetic sampling); 0 for exact values.
      v_all: ``v(all players)``, the mean effect of ablating every player at once.
      metric: the set-ablation metric of the game (one of :data:`SHAPLEY_METRICS`).
      ablation: the ablation kind (``"zero"``: a head's output times 0).
      exact: True when every subset was enumerated.
      sampling: how permutations were drawn (:data:`SHAPLEY_SAMPLINGS`); None for exact values.
      permutations: permutations sampled (0 for exact values).
      set_ablations: distinct head sets ablated (``2^n - 1`` for exact values).
      converged: every player's ``stderr`` is below the ``target_stderr`` asked for (True for
        exact values; False when no target was given).
      labels: ``[image]`` the class ``y`` of ``prob_drop`` (-1 for a backbone).
      labels_are_predictions: True when no labels were given and ``y`` is the unpruned top-1.
    """

    heads: np.ndarray
    values: np.ndarray
    per_image: np.ndarray
    stderr: np.ndarray
    v_all: float
    metric: str
    ablation: str
    exact: bool
    sampling: str | None
    permutations: int
    set_ablations: int
    converged: bool
    labels: np.ndarray
    labels_are_predictions: bool

    def _top(self) -> str:
        """The players of highest value, ``(layer, head) value`` (``± stderr`` when sampled)."""
        ranked = rank_heads(np.where(np.isnan(self.values), -np.inf, self.values))
        shown = []
        for layer, head in ranked[: min(TOP_HEADS, len(self.heads))]:
            error = "" if self.exact else f" ± {number(self.stderr[layer, head])}"
            shown.append(f"({layer}, {head}) {number(self.values[layer, head])}{error}")
        return ", ".join(shown)

    def _summary(self):
        images = len(self.per_image)
        if self.exact:
            method = f"exact, {self.set_ablations:,} set ablations"
        else:
            method = (
                f"{self.permutations:,} {self.sampling} permutations, {self.set_ablations:,} "
                f"set ablations; largest stderr {number(np.nanmax(self.stderr))}"
                + ("" if self.converged else " (target not reached)")
            )
        rows = [
            ("game", f"mean {self.metric} with heads ablated ({self.ablation})"),
            ("method", method),
            (
                "v(all)",
                f"{number(self.v_all)} = sum of the values {number(np.nansum(self.values))}",
            ),
            ("top heads", self._top()),
        ]
        return sizes(images=images, players=len(self.heads)), rows


def shapley_from_subsets(v: np.ndarray) -> np.ndarray:
    """Exact Shapley values from every subset's value.

    Args:
      v: ``[subset, ...]`` the game's value of each subset of ``n`` players, indexed by its
        bit mask (bit ``i`` set: player ``i`` in the subset), ``2^n`` of them, ``v[0]`` the
        empty set's.

    Returns:
      ``[n, ...]`` float64, player ``i``'s
      ``sum over S without i of |S|! (n - |S| - 1)! / n! * (v[S + i] - v[S])``.
    """
    v = np.asarray(v, np.float64)
    n = int(len(v)).bit_length() - 1
    if len(v) != 1 << n:
        raise InputError(f"v has {len(v)} subsets; expected 2^n, one per subset of n players")
    subsets = np.arange(len(v))
    size = np.asarray([bin(s).count("1") for s in subsets])
    weight = np.asarray(
        [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    )
    out = np.empty((n, *v.shape[1:]))
    for i in range(n):
        without = subsets[(subsets >> i) & 1 == 0]
        gain = v[without | (1 << i)] - v[without]
        out[i] = np.tensordot(weight[size[without]], gain, axes=1)
    return out


def _check_sampling(sampling: str, permutations, target_stderr) -> tuple[int, float | None]:
    """``(permutations, target_stderr)`` checked: enough permutations for a standard error, in
    whole pairs for antithetic sampling."""
    if sampling not in SHAPLEY_SAMPLINGS:
        raise InputError(
            f"unknown sampling {sampling!r}; expected one of {', '.join(SHAPLEY_SAMPLINGS)}"
        )
    permutations = check_positive("permutations", permutations)
    pair = 2 if sampling == "antithetic" else 1
    if permutations % pair or permutations < 2 * pair:
        raise InputError(
            f"permutations={permutations} with sampling={sampling!r}: a standard error needs "
            + (
                "at least two pairs of a permutation and its reverse, an even number >= 4"
                if pair == 2
                else "at least 2 permutations"
            )
        )
    return permutations, check_positive("target_stderr", target_stderr, float)


def head_shapley(
    config: ViTConfig,
    params: Any,
    images,
    labels=None,
    *,
    heads=None,
    exact: bool | None = None,
    metric: str = "prob_drop",
    ablation: str | Ablation = "zero",
    reference=None,
    permutations: int = 128,
    target_stderr: float | None = 0.01,
    sampling: str = "antithetic",
    seed: int = 0,
    execution: Execution | None = None,
) -> HeadShapley:
    """Shapley values of heads for the game ``v(S)`` = mean over images of ``metric`` with the
    heads of ``S`` ablated together (see :mod:`~jaxvit_interp.importance.shapley`).

    Args:
      config, params: the model.
      images: ``[image, height, width, channels]`` preprocessed pixels.
      labels: ``[image]`` int class ids, or None to measure against the unpruned prediction.
      heads: the players, ``[(layer, head), ...]``; None: every head of the model.
      exact: True: enumerate every subset of the players (at most :data:`EXACT_MAX_PLAYERS`);
        False: sample permutations; None: exact where it takes no more set ablations than
        ``permutations`` permutations could (``2^n - 1 <= permutations * n``) and ``n`` is at
        most :data:`EXACT_MAX_PLAYERS`, sampled otherwise.
      metric: ``prob_drop`` (the default), ``kl`` or ``repr`` (a backbone: ``repr``).
      ablation: what takes an ablated head's place, as in
        :func:`~jaxvit_interp.importance.ablate`.
      reference: the reference images of an ablation kind that takes them, passed on to
        :func:`~jaxvit_interp.importance.ablate`; None: none.
      permutations: the most permutations to sample (an even number for antithetic sampling).
      target_stderr: stop once every player's standard error is below this; None: run all
        ``permutations``.
      sampling: ``"antithetic"`` (each permutation and its reverse) or ``"independent"``.
      seed: the permutations' random seed.
      execution: as in :func:`~jaxvit_interp.importance.head_importance`; its progress counts
        the permutations (the subsets, for exact values).

    Returns:
      :class:`HeadShapley`.

    Raises:
      InputError: before any model work, for unknown or repeated heads, more players than
        exact values take, an unknown metric or sampling, too few permutations, and the
        inputs :func:`~jaxvit_interp.importance.ablate` refuses.
    """
    validate.check_unpruned(config, "head_shapley")
    if metric not in SHAPLEY_METRICS:
        what = (
            "metric 'layer' makes no game: a set's layer change is read at its own lowest "
            "pruned layer, so two sets' values are changes of different blocks"
            if metric == "layer"
            else f"unknown Shapley metric {metric!r}"
        )
        raise InputError(f"{what}; expected one of {', '.join(SHAPLEY_METRICS)}")
    validate.check_classifier(config, (metric,), labels, "head_shapley")
    players = validate.check_heads(config, heads)
    n = len(players)
    if exact not in (None, True, False):
        raise InputError(f"exact must be True, False or None, got {exact!r}")
    permutations, target_stderr = _check_sampling(sampling, permutations, target_stderr)
    if exact and n > EXACT_MAX_PLAYERS:
        raise InputError(
            f"exact Shapley values of {n} heads enumerate 2^{n} - 1 = {2**n - 1:,} head sets; "
            f"exact=True takes at most {EXACT_MAX_PLAYERS} players ({2**EXACT_MAX_PLAYERS - 1:,} "
            "sets): pass heads= with fewer heads, or exact=False to sample permutations"
        )
    if exact is None:
        exact = n <= EXACT_MAX_PLAYERS and 2**n - 1 <= permutations * n
    kind = as_ablation(ablation).kind
    execution = as_execution(execution)
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])

    reference = validate.check_reference(config, as_ablation(ablation), reference, images)
    options = {"ablation": ablation, "reference": reference}
    game = _Game(config, params, images, labels, players, metric, options, execution)
    if exact:
        with start_progress(
            execution.progress, total=2**n - 1, desc="head shapley", unit="set"
        ) as bar:
            per_player = _exact(game, bar)
        stderr = np.zeros(n)
        used, converged = 0, True
    else:
        with start_progress(
            execution.progress, total=permutations, desc="head shapley", unit="permutation"
        ) as bar:
            per_player, stderr, used, converged = _sampled(
                game, bar, sampling, permutations, target_stderr, seed
            )
    L, H = config.num_layers, config.num_heads
    layer, head = np.asarray(players).T
    values = np.full((L, H), np.nan)
    values[layer, head] = per_player.mean(axis=0)
    per_image = np.full((len(images), L, H), np.nan)
    per_image[:, layer, head] = per_player
    errors = np.full((L, H), np.nan)
    errors[layer, head] = stderr
    return HeadShapley(
        heads=np.asarray(players, np.int32),
        values=values,
        per_image=per_image,
        stderr=errors,
        v_all=float(game.value(np.ones(n, bool)).mean()),
        metric=metric,
        ablation=kind,
        exact=bool(exact),
        sampling=None if exact else sampling,
        permutations=used,
        set_ablations=len(game.values),
        converged=converged,
        labels=game.targets,
        labels_are_predictions=labels is None,
    )


class _Game:
    """The game's value of subsets of the players, per image: each subset ablated once, by
    :func:`~jaxvit_interp.importance.ablate`, and kept."""

    def __init__(self, config, params, images, labels, players, metric, options, execution):
        self.config, self.params, self.images, self.labels = config, params, images, labels
        self.players = np.asarray(players)  # [player, 2]
        self.metric, self.options, self.execution = metric, options, execution
        self.values: dict[bytes, np.ndarray] = {}  # packed subset -> [image] float64
        self.targets = np.full(len(images), -1, np.int32)

    def evaluate(self, subsets: np.ndarray, bar: Progress, steps: float) -> None:
        """Ablate each of ``subsets`` ``[subset, player]`` bool (each non-empty) not yet known,
        all in one call, as ``steps`` steps of ``bar``."""
        new = {}
        for subset in subsets:
            new.setdefault(np.packbits(subset).tobytes(), subset)
        new = {key: subset for key, subset in new.items() if key not in self.values}
        if not new:
            bar.update(steps)
            return
        masks = np.ones((len(new), self.config.num_layers, self.config.num_heads), np.float32)
        for i, subset in enumerate(new.values()):
            layer, head = self.players[subset].T
            masks[i, layer, head] = 0.0
        result = ablate(
            self.config,
            self.params,
            self.images,
            masks,
            self.labels,
            metrics=(self.metric,),
            execution=self.execution.with_progress(bar.share(steps)),
            **self.options,
        )
        self.targets = result.labels
        self.values.update(zip(new, np.asarray(result[self.metric], np.float64).T))

    def value(self, subset: np.ndarray) -> np.ndarray:
        """``[image]`` the value of ``subset`` ``[player]`` bool (0 for the empty set)."""
        if not subset.any():
            return np.zeros(len(self.images))
        return self.values[np.packbits(subset).tobytes()]


def _exact(game: _Game, bar) -> np.ndarray:
    """``[image, player]`` exact Shapley values: every subset ablated."""
    n = len(game.players)
    subsets = (np.arange(1 << n)[:, None] >> np.arange(n)) & 1 == 1  # [subset, player]
    game.evaluate(subsets[1:], bar, len(subsets) - 1)
    v = np.stack([game.value(s) for s in subsets])  # [subset, image]
    return shapley_from_subsets(v).T


def _marginals(game: _Game, order: np.ndarray) -> np.ndarray:
    """``[image, player]`` each player's marginal along the permutation ``order`` (its prefixes
    already evaluated): ``v(prefix up to it) - v(prefix before it)``; they add up to
    ``v(all players)``."""
    n = len(order)
    out = np.empty((len(game.images), n))
    before = np.zeros(len(game.images))
    taken = np.zeros(n, bool)
    for player in order:
        taken[player] = True
        after = game.value(taken)
        out[:, player] = after - before
        before = after
    return out


def prefix_sets(order: np.ndarray) -> np.ndarray:
    """``[n, player]`` bool: the prefixes of sizes 1 to ``n`` of the permutation ``order``."""
    n = len(order)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank[None, :] <= np.arange(n)[:, None]


def draw_unit(rng: np.random.Generator, n: int, sampling: str) -> list[np.ndarray]:
    """One sampling unit's permutations of ``n`` players: a random one and, for antithetic
    sampling, its reverse."""
    order = rng.permutation(n)
    return [order, order[::-1]] if sampling == "antithetic" else [order]


def _sampled(game: _Game, bar, sampling, permutations, target_stderr, seed):
    """``(per image [image, player], stderr [player], permutations used, converged)`` by
    permutation sampling in rounds, stopped by ``target_stderr``."""
    n = len(game.players)
    rng = np.random.default_rng(seed)
    pair = 2 if sampling == "antithetic" else 1
    most = permutations // pair  # units: a pair or a single permutation
    units: list[np.ndarray] = []  # each [image, player]: the unit's mean marginals
    stderr = np.full(n, np.inf)
    while len(units) < most:
        count = min(most - len(units), ROUND_PERMUTATIONS // pair)
        orders = [draw_unit(rng, n, sampling) for _ in range(count)]
        subsets = np.concatenate([prefix_sets(o) for unit in orders for o in unit])
        game.evaluate(subsets, bar, count * pair)
        units += [np.mean([_marginals(game, o) for o in unit], axis=0) for unit in orders]
        per_unit = np.stack(units).mean(axis=1)  # [unit, player]: the game over the images
        stderr = per_unit.std(axis=0, ddof=1) / np.sqrt(len(units))
        bar.note(stderr=f"{stderr.max():.3g}")
        enough = len(units) * pair >= MIN_PERMUTATIONS_TO_STOP
        if enough and target_stderr is not None and stderr.max() < target_stderr:
            break
    converged = target_stderr is not None and bool(stderr.max() < target_stderr)
    return np.stack(units).mean(axis=0), stderr, len(units) * pair, converged


def disagreement(values, stderr, single) -> np.ndarray:
    """``[layer, head]`` bool: the heads whose Shapley value and single-ablation effect disagree.

    A head's single ablation is its marginal with no other head removed, ``v({h})``; its Shapley
    value averages its marginals over every set of others removed first. They differ where the
    head interacts: a head that others back up has a small single drop and a larger value, one
    that matters only beside heads that are already gone the other way round. A head disagrees
    when

        |value - single| > DISAGREE_STDERRS * stderr + DISAGREE_SHARE * max(|value|, |single|)

    with the maximum over every head of both: beyond the value's sampling noise, and large
    enough to see at the scale of the most important head. NaN (a head that is no player) never
    disagrees.

    Args:
      values, stderr: ``[layer, head]`` :attr:`HeadShapley.values` and ``stderr``.
      single: ``[layer, head]`` the same game's single-head values, ``v({h})``: the mean over
        the same images of the metric with that head alone ablated.
    """
    values, stderr, single = (np.asarray(a, np.float64) for a in (values, stderr, single))
    scale = np.nanmax(np.abs(np.concatenate([values.ravel(), single.ravel()])), initial=0.0)
    gap = np.abs(values - single)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(gap - DISAGREE_STDERRS * stderr - DISAGREE_SHARE * scale) > 0
