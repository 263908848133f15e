"""The lighter-weight responder of the benchmark: a recorded sync answered again over real TLS,
requests matched to recorded answers, misses counted. No times are checked."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import orjson
from yarl import URL

from agent.testing.bench.replay import Script, key, load, normalise, save
from agent.testing.bench.responder import ResponderProcess
from agent.testing.emulators.common import Call, Exchange
from agent.testing.emulators.stack import EmulatorStack

SNOW = "https://127.0.0.1:1111"
ARM = "https://127.0.0.1:2222"
LIST = "/api/now/table/incident?sysparm_query=sys_updated_on%3E2026-12-06%2008:34:54%5EORDERBYsys_id"
CREATE = "/api/now/table/incident?sysparm_fields=sys_id,number"


def _exchange(
    origin: str, method: str, target: str, body: bytes, response: bytes, status: int = 200
) -> Exchange:
    call = Call("servicenow", method, "table", target.split("?")[0], status)
    headers = (("Content-Type", "application/json"), ("Location", f"{origin}/api/now/table/incident/x"))
    return Exchange(call, origin, target, body, headers, response)


def _recording(path: Path) -> Path:
    save(
        path,
        [
            _exchange(SNOW, "GET", LIST, b"", orjson.dumps({"next": f"{ARM}/subscriptions/s?page=2"})),
            _exchange(SNOW, "POST", CREATE, b'{"correlation_id": "inc-a"}', b'{"number": "INC1"}', 201),
            _exchange(SNOW, "POST", CREATE, b'{"correlation_id": "inc-b"}', b'{"number": "INC2"}', 201),
            _exchange(ARM, "GET", "/subscriptions/s?page=2", b"", b'{"value": []}'),
        ],
    )
    return path


def test_times_and_in_lists_are_normalised_but_identities_are_not() -> None:
    later = LIST.replace("08:34:54", "08:35:01")
    assert normalise(LIST) == normalise(later) != LIST
    arm = "$filter=properties/lastModifiedTimeUtc%20ge%202026-11-06T08:36:54.2720240Z"
    assert normalise(arm) == normalise(arm.replace("54.2720240Z", "57.6894940Z"))
    # The order of an IN list does not change the answer; its values do.
    assert normalise("sysparm_query=element_idINb,a%5Ename") == normalise(
        "sysparm_query=element_idINa,b%5Ename"
    )
    assert normalise("sysparm_query=element_idINa,c%5Ename") != normalise(
        "sysparm_query=element_idINa,b%5Ename"
    )
    one = key(0, "POST", CREATE, b'{"correlation_id": "inc-a", "opened_at": "x"}')
    assert one == key(0, "POST", CREATE, b'{"opened_at": "y", "correlation_id": "inc-a"}')
    assert one != key(0, "POST", CREATE, b'{"correlation_id": "inc-b"}')
    assert key(0, "GET", LIST, b"") != key(1, "GET", LIST, b"")


def test_a_request_without_a_recorded_answer_is_a_counted_miss(tmp_path: Path) -> None:
    origins, exchanges = load(_recording(tmp_path / "rec.json"))
    script = Script(origins, exchanges, {SNOW: "https://127.0.0.1:3333", ARM: "https://127.0.0.1:4444"})
    head, rest = script.answer(0, "GET", "/api/now/table/problem", b"")
    assert head.startswith(b"HTTP/1.1 404 ") and b"no recorded answer" in rest
    assert script.misses == [f"GET {SNOW}/api/now/table/problem"] and script.served == {}
    # A create whose unique key was never recorded is a miss too, not another ticket's answer.
    script.answer(0, "POST", CREATE, b'{"correlation_id": "inc-z"}')
    assert len(script.misses) == 2
    head, rest = script.answer(0, "POST", CREATE, b'{"correlation_id": "inc-b"}')
    assert head.startswith(b"HTTP/1.1 201 Created") and rest.endswith(b'{"number": "INC2"}')
    assert b"Location: https://127.0.0.1:3333/api/now/table/incident/x" in head
    script.reset()
    assert (script.misses, script.served) == ([], {})


async def test_the_responder_answers_recorded_exchanges_over_tls(tmp_path: Path) -> None:
    responder = await ResponderProcess.start(
        _recording(tmp_path / "rec.json"), 0.0, tmp_path / "tls", tmp_path / "responder.log"
    )
    try:
        snow, arm = responder.origins[SNOW], responder.origins[ARM]
        assert snow != arm and snow.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(responder.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            # A later run asks with another time in its query: the same recorded answer.
            target = URL(snow + LIST.replace("08:34:54", "09:00:00"), encoded=True)
            for _ in range(2):  # used up: the last answer again
                async with session.get(target) as resp:
                    assert resp.status == 200
                    assert orjson.loads(await resp.read()) == {"next": f"{arm}/subscriptions/s?page=2"}
                    assert resp.headers["Location"] == f"{snow}/api/now/table/incident/x"
                    assert "Date" in resp.headers
            async with session.post(
                URL(snow + CREATE, encoded=True), json={"correlation_id": "inc-a"}
            ) as resp:
                assert (resp.status, await resp.read()) == (201, b'{"number": "INC1"}')
            async with session.get(f"{arm}/subscriptions/other") as resp:
                assert resp.status == 404
        stats = await responder.stats()
        assert stats["served"] == {"0": 2, "1": 1}
        assert stats["misses"] == 1 and stats["missed"] == [f"GET {ARM}/subscriptions/other"]
        assert stats["cpu"] > 0 and stats["connections"] >= 2  # one per server at least
        await responder.reset()
        assert (await responder.stats())["served"] == {}
    finally:
        await responder.stop()


async def test_the_emulators_keep_whole_exchanges_only_when_switched_on(tmp_path: Path) -> None:
    async with EmulatorStack(directory=tmp_path) as stack:
        assert stack.recorder.exchanges is None
        url = f"{stack.entra_url}/{stack.tenant}/v2.0/.well-known/openid-configuration"
        connector = aiohttp.TCPConnector(ssl=stack.tls.client_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(url) as resp:
                assert resp.status == 200
            assert stack.recorder.count("entra") == 1 and stack.recorder.exchanges is None
            stack.recorder.exchanges = []
            async with session.get(url + "?x=1") as resp:
                body = await resp.read()
        [kept] = stack.recorder.exchanges
        assert (kept.call.system, kept.call.method, kept.call.status) == ("entra", "GET", 200)
        assert kept.origin == stack.entra_url and kept.target.endswith("openid-configuration?x=1")
        assert kept.response == body and ("Content-Type", resp.headers["Content-Type"]) in kept.headers


async def test_a_request_the_responder_cannot_read_is_refused_and_counted(tmp_path: Path) -> None:
    responder = await ResponderProcess.start(
        _recording(tmp_path / "rec.json"), 0.0, tmp_path / "tls", tmp_path / "responder.log"
    )
    try:
        port = int(responder.origins[SNOW].rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(responder.ca_file))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(
            b"POST /api/now/table/incident HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        stats = await responder.stats()
        assert stats["misses"] == 1 and "chunked" in stats["missed"][0] and stats["served"] == {}
    finally:
        await responder.stop()
