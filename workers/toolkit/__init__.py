"""Helpers shared by the debugging-toolkit step kinds: subprocesses, targets, artifacts, SVG, log search."""
