"""Keep the api process's long-lived heap out of the garbage collector's way.

A full (generation 2) collection walks every tracked object in the process. After start-up that is a few
hundred thousand objects (modules, classes, routes, schemas, templates), which live until the process ends,
so walking them finds nothing to free, yet it held every request up for tens of ms on each full collection.
Requests that allocate many objects (the flags list: 350 flags and their specs) trigger one every few
requests: that was the flags list's p95 tail in bench/ui_pages.py. gc.freeze() moves the start-up heap to the
permanent generation, which collections skip; what requests allocate is collected as before."""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then freeze what survived: called once the app has started, before it serves."""
    gc.collect()
    gc.freeze()
