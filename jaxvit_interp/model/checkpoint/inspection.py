"""``inspect_checkpoint``: what a checkpoint holds against what the model needs, without loading."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxvit_interp.model.checkpoint.errors import shape_str
from jaxvit_interp.model.checkpoint.load import KeyCheck, describe, make_plan
from jaxvit_interp.model.config import ViTConfig

STATUSES = ("ok", "missing", "extra", "mis-shaped", "ignored")


@dataclasses.dataclass(frozen=True)
class CheckpointReport:
    """A checkpoint compared key by key with the model it should fill.

    Attributes:
      path: the file or folder read.
      container: ``"npz"``, ``"safetensors"``, ``"pickle"`` or ``"jaxvit"``.
      family: the family detected, in words, with what it found (e.g. ``"big_vision (scanned
        layers)"``, ``"timm VisionTransformer, DINOv2-style, 4 register tokens, layer scale"``).
      config: the config the checks were made against (the file's image size).
      checks: one :class:`KeyCheck` per file key and per expected key.
      contradictions: fields where a given ``config`` disagrees with the tensors.
      notes: assumptions (guessed heads, square grid, resampling).
    """

    path: Path
    container: str
    family: str
    config: ViTConfig
    checks: tuple[KeyCheck, ...]
    contradictions: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when ``load_checkpoint`` would succeed with the same arguments."""
        return not self.contradictions and all(c.status in ("ok", "ignored") for c in self.checks)

    def keys(self, status: str) -> list[str]:
        """File keys with ``status`` (one of ``ok missing extra mis-shaped ignored``)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        return [c.key for c in self.checks if c.status == status]

    def __str__(self) -> str:
        lines = [
            f"checkpoint: {self.path}",
            f"format: {self.container}",
            f"family: {self.family}",
            f"model: {describe(self.config)}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"contradiction: {c}" for c in self.contradictions]
        if self.checks:
            width = max(len(c.key) for c in self.checks)
            lines.append(
                f"{'key':<{width}}  {'found':<18}  {'expected':<18}  {'status':<10}  action"
            )
            for c in self.checks:
                lines.append(
                    f"{c.key:<{width}}  {shape_str(c.found):<18}  {shape_str(c.expected):<18}  "
                    f"{c.status:<10}  {c.action}"
                )
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
        return "\n".join(lines)


def inspect_checkpoint(
    path, *, config: ViTConfig | None = None, image_size=None, allow_pickle: bool = False
) -> CheckpointReport:
    """List a checkpoint's keys and shapes against what the model needs; never converts.

    Takes the same arguments as :func:`load_checkpoint`, a hub name (``"hf-hub:ORG/NAME"``)
    too, of which only the files read are fetched. Mismatched tensors and contradicting
    config fields are reported rather than raised; ``print(report)`` shows a table and
    ``report.ok`` says whether loading would succeed. Unreadable files and unknown formats
    still raise :class:`CheckpointError`.
    """
    plan = make_plan(path, config=config, image_size=image_size, allow_pickle=allow_pickle)
    return CheckpointReport(
        path=plan.raw.path,
        container=plan.raw.container,
        family=plan.family.description,
        config=plan.file_config,
        checks=tuple(plan.checks),
        contradictions=tuple(plan.contradictions),
        notes=tuple(plan.notes),
    )
