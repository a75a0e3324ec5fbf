"""``Closing``: ``with obj:`` closes ``obj`` at the end (databases, caches, selections)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing:
    """A resource used as a context manager: ``__enter__`` gives it, ``__exit__`` calls its
    :meth:`close` (however the block ends)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
