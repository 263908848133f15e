"""The remote write gate: once the lease's own deadline passed, no write leaves the agent."""

from __future__ import annotations

from typing import Any

import pytest

from agent.connectors.pacing import ArmBuckets
from agent.errors import LeaseLost
from agent.store.lease import Lease
from agent.testing.emulators.common import TLSMaterial
from tests.test_http import client, ok, sequence, serve, tls  # noqa: F401  (fixtures)
from tests.test_lease import FAST, Clock


async def test_after_the_deadline_writes_are_refused_and_reads_go_on(tls: TLSMaterial, serve: Any) -> None:  # noqa: F811
    srv = await serve(sequence(ok()))
    clock = Clock()
    lease = Lease("postgresql://sync@127.0.0.1/sync", None, FAST, clock=clock)
    lease.epoch, lease.deadline = 1, clock.now + FAST.ttl - FAST.margin  # as after a take-over
    async with client(tls) as http:
        http.write_gate = lease.check
        await http.request("PATCH", srv.url, json={"severity": "High"})
        clock.now += FAST.ttl  # no renewal came back in time
        with pytest.raises(LeaseLost, match="no longer holds the lease"):
            await http.request("PATCH", srv.url, json={"severity": "Low"})
        with pytest.raises(LeaseLost, match="no longer holds the lease"):
            await http.request("POST", srv.url, json={"comment": "x"})
        await http.request("GET", srv.url)
    assert [r.method for r in srv.requests] == ["PATCH", "GET"]


async def test_a_write_refused_by_the_gate_is_not_left_in_flight_in_the_arm_buckets(
    tls: TLSMaterial,  # noqa: F811
) -> None:
    clock = Clock()
    lease = Lease("postgresql://sync@127.0.0.1/sync", None, FAST, clock=clock)
    lease.epoch, lease.deadline = 1, clock.now - 1  # the lease's own deadline passed
    buckets = ArmBuckets()
    url = "https://127.0.0.1:9/subscriptions/s1/resourceGroups/rg/providers/x/incidents/a"
    async with client(tls) as http:
        http.write_gate, http.buckets = lease.check, buckets
        with pytest.raises(LeaseLost, match="no longer holds the lease"):
            await http.request("PUT", url, json={})
    assert buckets.bucket("s1", "writes").flight == set()
    assert buckets.bucket("s1", "global-writes").flight == set()
