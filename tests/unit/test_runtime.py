"""The servers keep their start-up heap out of later garbage collections (pipeline/runtime.py)."""

from __future__ import annotations

import gc
import weakref

import pipeline.serving.transformer  # noqa: F401  (the heap of a server: pandas, scikit-learn, KServe)
from pipeline.runtime import freeze_startup_heap


def test_the_start_up_heap_is_frozen_and_garbage_is_not():
    class Cycle:
        pass

    gc.disable()  # no automatic collection frees the cycle before the function does
    garbage = Cycle()
    garbage.self = garbage  # only a collection frees a cycle
    alive = weakref.ref(garbage)
    del garbage
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 100_000  # the imports' objects, which full collections walked before
        assert alive() is None  # collected first: frozen garbage would never be freed
    finally:
        gc.unfreeze()
        gc.enable()
