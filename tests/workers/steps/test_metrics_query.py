"""metrics.query against a real Prometheus server (Debian's `prometheus` package) on loopback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from server.runbooks.toolkit_kinds import MetricsQueryInputs
from server.stack import free_port
from tests.support import wait_for
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepFailed
from workers.steps.metrics_query import MetricsQuery

CONFIG = """
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:%d"]}]
"""


def _up(url: str) -> bool:
    try:
        query = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="prometheus"}'}, timeout=1).json()
        return bool(query["data"]["result"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: `apt-get install -y prometheus` (Debian) to run these tests")
    where: Path = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    (where / "prometheus.yml").write_text(CONFIG % port)
    proc = subprocess.Popen([binary, f"--config.file={where / 'prometheus.yml'}",
                             f"--storage.tsdb.path={where / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 30, "Prometheus to scrape itself once")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


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


def test_bad_query_and_unreachable_server_fail_clearly(prometheus, tmp_path):
    with pytest.raises(StepFailed, match="bad_data"):
        MetricsQuery().run(MetricsQueryInputs(url=prometheus, query="rate(up["), make_ctx(tmp_path))
    with pytest.raises(StepFailed, match="did not answer"):
        MetricsQuery().run(MetricsQueryInputs(url=f"http://127.0.0.1:{free_port()}", query="up", timeout="2s"),
                           make_ctx(tmp_path))
