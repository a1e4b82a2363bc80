"""Orchestration: images -> every analysis -> a results bundle on disk, chunked and resumable."""

from jaxvit_interp.pipeline.analyze import RunFolderError, analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings

__all__ = ["AnalysisSettings", "RunFolderError", "analyze"]
