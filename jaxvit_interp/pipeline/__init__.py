"""Orchestration: images -> every analysis -> a results bundle on disk, chunked and resumable.

:func:`analyze` runs the library's own public functions chunk by chunk (``head_importance``,
``partial_pruning``, ``model_strength_over_images``, ``collect_patterns``,
``attention_over_images``), then builds the bundle's parts with :mod:`.parts`, which adds each
reduction over images from the analysis package that owns it. Nothing is computed here.
"""

from jaxvit_interp.pipeline.analyze import RunFolderError, analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings

__all__ = ["AnalysisSettings", "RunFolderError", "analyze"]
