"""metrics.query against a real Prometheus server (Debian's `prometheus` package) on loopback; the failure cases
that need no Prometheus run without it."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from server.runbooks.toolkit_kinds import MetricsQueryInputs
from server.stack import free_port
from tests.support import prometheus_server, serve
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepFailed
from workers.steps.metrics_query import MetricsQuery


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    with prometheus_server(tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def test_instant_query_of_a_scraped_series_with_threshold(prometheus, tmp_path):
    outputs = MetricsQuery().run(MetricsQueryInputs(url=prometheus, query='up{job="prometheus"}', threshold=0.5,
                                                    op="<"), make_ctx(tmp_path))
    assert outputs["result_type"] == "vector"
    assert outputs["value"] == 1.0 and outputs["verdict"] == "ok"
    assert outputs["series"][0]["metric"]["job"] == "prometheus"


def test_breach_fails_only_when_asked(prometheus, tmp_path):
    inputs = dict(url=prometheus, query="vector(7)", threshold=5)
    assert MetricsQuery().run(MetricsQueryInputs(**inputs), make_ctx(tmp_path))["verdict"] == "breach"
    with pytest.raises(StepFailed, match=r"vector\(7\): 7.0 > 5") as failed:
        MetricsQuery().run(MetricsQueryInputs(**inputs, fail_on_breach=True), make_ctx(tmp_path))
    assert failed.value.outputs["value"] == 7.0


def test_range_query_aggregates_every_point(prometheus, tmp_path):
    outputs = MetricsQuery().run(MetricsQueryInputs(url=prometheus, query="vector(3) + 1", range="1m", step="10s",
                                                    aggregate="avg", threshold=4, op=">="), make_ctx(tmp_path))
    assert outputs["result_type"] == "matrix"
    assert len(outputs["series"][0]["values"]) >= 6
    assert outputs["value"] == 4.0 and outputs["verdict"] == "breach"


def test_scalar_and_empty_results(prometheus, tmp_path):
    outputs = MetricsQuery().run(MetricsQueryInputs(url=prometheus, query="scalar(vector(2))"), make_ctx(tmp_path))
    assert (outputs["result_type"], outputs["value"]) == ("scalar", 2.0)
    outputs = MetricsQuery().run(MetricsQueryInputs(url=prometheus, query='up{job="nothing"}', threshold=1),
                                 make_ctx(tmp_path))
    assert outputs["series"] == [] and outputs["verdict"] == "no data"


def test_bad_query_fails_with_prometheus_own_error(prometheus, tmp_path):
    with pytest.raises(StepFailed, match=r"query failed \(400\): bad_data"):
        MetricsQuery().run(MetricsQueryInputs(url=prometheus, query="rate(up["), make_ctx(tmp_path))


def test_unreachable_server_fails_clearly(tmp_path):
    with pytest.raises(StepFailed, match="did not answer"):
        MetricsQuery().run(MetricsQueryInputs(url=f"http://127.0.0.1:{free_port()}", query="up", timeout="2s"),
                           make_ctx(tmp_path))


def test_a_server_that_is_not_prometheus_fails_clearly(tmp_path):
    app = FastAPI()

    @app.post("/api/v1/query")
    def not_prometheus() -> PlainTextResponse:
        return PlainTextResponse("<html>a login page</html>", status_code=200)

    with serve(app) as url, pytest.raises(StepFailed, match="answered 200 without JSON: <html>a login page"):
        MetricsQuery().run(MetricsQueryInputs(url=url, query="up"), make_ctx(tmp_path))
