"""The import path of :class:`RunCSVLogger` before ``training/`` was grouped by job.

Every ``config.yaml`` a run recorded before then names ``fellrec.training.run_logger.RunCSVLogger``
as its ``trainer.logger``, and resuming the run reads that file back; this name keeps those
records working. New configs name :mod:`fellrec.training.records.run_logger`.
"""

from fellrec.training.records.run_logger import RunCSVLogger

__all__ = ["RunCSVLogger"]
