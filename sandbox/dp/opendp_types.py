"""The typed face of the OpenDP objects this package builds.

OpenDP's ``Measurement`` and ``Transformation`` declare no parameter or return types for
``map`` and ``__call__``; the constructors here cast them to these protocols once, so the
rest of :mod:`sandbox.dp` is checked by mypy."""

from __future__ import annotations

from typing import Any, Protocol


class PrivacyMap(Protocol):
    """An OpenDP measurement or transformation: ``map`` gives the privacy loss (or output
    distance) for an input distance; calling it releases (or transforms) ``arg``."""

    def map(self, d_in: Any) -> Any: ...

    def __call__(self, arg: Any) -> Any: ...
