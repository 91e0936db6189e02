"""A write planned but not run: what every writer returns with ``compute=False``.

Like ``xarray.Dataset.to_zarr(compute=False)`` and rechunker's plans, a writer called with
``compute=False`` reads, writes and computes nothing: it returns a :class:`PendingWrite`
that names the destination and says what it will write; :meth:`PendingWrite.compute` then
does the whole write (computing on the scheduler in effect then) and publishes it
atomically, exactly as the direct call would have.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PendingWrite", "deferrable"]


class PendingWrite:
    """A deferred write to ``dest``.

    Parameters
    ----------
    dest
        Where the write will publish (path or URL; for a store member, the member's URL).
    description
        What it will write, in a few words (``"signature store"``, ``"GCTx file"``).
    work
        Runs the write and returns what the writer returns (the published URL).

    Notes
    -----
    :meth:`compute` runs the work once; later calls return the first call's result
    without writing again.
    """

    __slots__ = ("dest", "description", "_work", "_result", "_done")

    def __init__(self, dest, description: str, work: Callable[[], Any]):
        self.dest = str(dest) if dest is not None else None
        self.description = description
        self._work = work
        self._result = None
        self._done = False

    @property
    def done(self) -> bool:
        """Whether :meth:`compute` has run (and published)."""
        return self._done

    def compute(self):
        """Run the write and publish it; return what the writer returns (its URL)."""
        if not self._done:
            self._result = self._work()
            self._done = True
            self._work = None  # drop the inputs the plan held
        return self._result

    def __repr__(self) -> str:
        state = "written" if self._done else "pending"
        return f"<PendingWrite ({state}): {self.description} -> {self.dest}>"


def deferrable(description: str, dest: str | Callable[[Mapping], Any] = "dest"):
    """Make a writer deferrable: called with ``compute=False`` it returns a
    :class:`PendingWrite` instead of writing.

    The writer itself declares ``compute: bool = True`` (keyword-only) and documents it;
    its body runs only when the write is to happen (``compute`` is then always true).
    The arguments are bound at once, so a call the writer would refuse for its arguments'
    names or number fails at once too; nothing else is checked, read or written.

    Parameters
    ----------
    description
        What the writer writes (for the pending write's ``repr``).
    dest
        The name of the writer's destination argument, or a function of the bound
        arguments (defaults applied) returning the destination.
    """

    def wrap(func):
        sig = inspect.signature(func)

        @functools.wraps(func)
        def writer(*args, **kwargs):
            if kwargs.get("compute", True):
                return func(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            where = dest(bound.arguments) if callable(dest) else bound.arguments[dest]
            work = functools.partial(func, *args, **{**kwargs, "compute": True})
            return PendingWrite(where, description, work)

        return writer

    return wrap
