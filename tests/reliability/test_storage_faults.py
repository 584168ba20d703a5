"""Object storage misbehaves: it goes away, answers errors or slowly, or refuses with 403."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from embedded.servers import MotoS3Server, TcpProxy
from tests.reliability.faults import HttpFaultProxy
from tests.reliability.harness import BackgroundTraffic, Scenario, Supervisor, traffic, wait_for

pytestmark = pytest.mark.slow


def _stored(scenario: Scenario) -> int:
    return sum(p.log_path.read_text(errors="replace").count(" stored key=") for p in scenario.processes
               if p.log_path.exists())  # fmt: skip


def storage_outage(scenario_factory: Callable[..., Scenario], moto: MotoS3Server, outage_s: float) -> None:
    """The S3 server is unreachable for ``outage_s`` seconds while traffic flows."""
    host, _, port = moto.endpoint.rpartition(":")
    proxy = TcpProxy(host, int(port)).start()
    try:
        scenario = scenario_factory(endpoint=proxy.address)
        background = BackgroundTraffic(scenario.producer, traffic(seed=51), rate=120).start()
        collector = scenario.collector(MAX_BUFFER_BYTES=str(4 * 1024 * 1024))
        wait_for(lambda: _stored(scenario) > 0, 90, "the first files")
        proxy.pause()
        time.sleep(outage_s)
        assert collector.total("fms_storage_up") == 0 and collector.total("fms_storage_failures_total") > 0
        assert collector.probe("/readyz") == 503 and collector.probe("/healthz") == 200
        proxy.resume()
        sent = background.stop()
        scenario.wait_caught_up(collector, timeout=240)
        report = scenario.finish()
        print(f"storage outage {outage_s:.0f} s: {sent} messages; {report.summary()}")
    finally:
        proxy.stop()


def test_storage_unreachable_for_a_while(scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server) -> None:
    storage_outage(scenario_factory, moto_server, float(os.environ.get("STORAGE_OUTAGE_S", "10")))


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_storage_unreachable_for_60_s(scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server) -> None:
    storage_outage(scenario_factory, moto_server, 60.0)


def test_storage_errors_and_slow_responses(
    scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server
) -> None:
    """A third of the requests fail with 503 SlowDown or 500, the rest are slow, for a while."""
    host, _, port = moto_server.endpoint.rpartition(":")
    with HttpFaultProxy(host, int(port), seed=7) as proxy:
        scenario = scenario_factory(endpoint=proxy.address)
        background = BackgroundTraffic(scenario.producer, traffic(seed=53), rate=150).start()
        collector = scenario.collector()
        wait_for(lambda: _stored(scenario) > 0, 90, "the first files")
        proxy.delay, proxy.error_rate = 0.05, 0.33
        for status in (503, 500):
            proxy.error_status = status
            time.sleep(6)
        proxy.clear()
        sent = background.stop()
        scenario.wait_caught_up(collector, timeout=180)
        assert collector.proc is not None and collector.proc.poll() is None, "transient errors must not stop it"
        assert proxy.answered["503"] > 0 and proxy.answered["500"] > 0
        report = scenario.finish()
    print(f"storage errors: {dict(proxy.answered)} answers, {sent} messages; {report.summary()}")


def test_storage_403_is_never_taken_as_written(
    scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server
) -> None:
    """Every upload is refused with 403 AccessDenied for a while (a revoked key, a bucket policy): nothing
    may be committed or counted as stored; restarted as Kubernetes would, the collector stores it all later."""
    host, _, port = moto_server.endpoint.rpartition(":")
    with HttpFaultProxy(host, int(port)) as proxy:
        scenario = scenario_factory(endpoint=proxy.address)
        scenario.produce(traffic(seed=55).generate(1500))
        proxy.error_status, proxy.error_methods, proxy.error_rate = 403, frozenset({"PUT"}), 1.0
        started = time.monotonic()
        supervisor = Supervisor(scenario)
        wait_for(lambda: bool(supervisor.exits), 90, "a 403 to stop the collector (it is fatal)")
        time.sleep(max(0.0, 12 - (time.monotonic() - started)))  # and restarted ones meet it too
        during = scenario.committed()
        assert not any(during.values()) or all(v <= 0 for v in during.values()), f"committed during 403s: {during}"
        assert _stored(scenario) == 0
        proxy.clear()
        # Still supervised: an upload answered 403 just before the clear stops one more collector.
        scenario.wait_caught_up(None, timeout=120)
        supervisor.stop()
        report = scenario.finish()
    print(f"storage 403: collector exits {supervisor.exits}, proxy {dict(proxy.answered)}; {report.summary()}")
