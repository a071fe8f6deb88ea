"""The server's catalog of step kinds and the workers' implementations must match exactly."""

from __future__ import annotations

from server.runbooks.catalog import CATALOG
from workers.steps.base import Step, load_step_kinds


def test_every_catalog_kind_has_one_implementation_and_no_more():
    registry = load_step_kinds()
    assert set(registry) == set(CATALOG), (
        f"in the catalog only: {sorted(set(CATALOG) - set(registry))}; "
        f"implemented only: {sorted(set(registry) - set(CATALOG))}")


def test_compensation_flags_agree():
    registry = load_step_kinds()
    for name, spec in CATALOG.items():
        assert registry[name].has_compensation() == spec.compensates, name
        assert issubclass(registry[name], Step)


def test_every_kind_describes_itself():
    for name, spec in CATALOG.items():
        assert spec.description and spec.description.endswith("."), name
        assert spec.inputs.model_config.get("extra") == "forbid", name
