"""The ``fasthystrix`` logger: silent by default (a ``NullHandler``), like hystrix-go's NoopLogger."""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("fasthystrix")
logger.addHandler(logging.NullHandler())
