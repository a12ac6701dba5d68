"""GET /jobs/{id}/events (Server-Sent Events) against both modes: order, progress, final record, resume."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx

from tests.conftest import Service
from tests.helpers import assert_problem, make_image, wait_job

Event = tuple[str, str | None, dict]


def parse(lines: Iterator[str]) -> Iterator[Event]:
    """(event, id, data) from text/event-stream lines."""
    name, event_id, data = None, None, []
    for line in lines:
        if not line:
            if data:
                yield name or "message", event_id, json.loads("\n".join(data))
            name, data = None, []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def read_events(c: httpx.Client, job_id: str, last_event_id: str | None = None,
                stop_after: int | None = None) -> list[Event]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Event] = []
    with c.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in parse(r.iter_lines()):
            events.append(event)
            if stop_after is not None and len(events) == stop_after:
                break
    return events


def submit_slow(c: httpx.Client, side: int = 256) -> str:
    """A job with many small tiles (side / 32 squared), so that it reports progress several times."""
    r = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
               files={"image": ("slow.png", make_image(side, side, seed=5), "image/png")})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_events_in_order_with_progress_and_final_record(service: Service) -> None:
    with service.client() as c:
        # 256 tiles: on a quiet machine 64 tiles of the tiny x4 network could end between two reads
        # of the record (every 0.2 s), so that no progress was ever seen
        job_id = submit_slow(c, side=512)
        events = read_events(c, job_id)
    names = [e[0] for e in events]
    assert names[0] == "status" and names[-1] == "completed" and names.count("completed") == 1
    assert events[0][2]["id"] == job_id and events[0][2]["status"] in ("queued", "running")
    ids = [e[1] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ids grow with the job's state
    progress = [e[2] for e in events if e[0] == "progress"]
    assert progress, names  # 256 tiles of a x4 network report progress along the way
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and all(0 < v < 1 and round(v, 3) == v for v in values)
    assert all(p["eta_s"] is not None and p["eta_s"] >= 0 for p in progress)
    final = events[-1][2]
    assert final["status"] == "succeeded" and final["progress"] == 1.0
    assert final["links"] == {"self": f"/jobs/{job_id}", "result": f"/jobs/{job_id}/result"}
    assert final["output"]["width"] == 2048 and final["timings"]["inference"] > 0


def test_events_resume_after_a_reconnect(service: Service) -> None:
    with service.client() as c:
        job_id = submit_slow(c)
        first = read_events(c, job_id, stop_after=1)  # the client drops the stream after one event
        rest = read_events(c, job_id, last_event_id=first[0][1])
        assert rest[-1][0] == "completed"
        assert all(e[1] > first[0][1] for e in rest)  # nothing seen before comes again
        # reconnecting once the job ended: the final state is known, nothing is repeated
        assert read_events(c, job_id, last_event_id=rest[-1][1]) == []
        # a fresh connection (no Last-Event-ID) starts with a snapshot: here the final record
        fresh = read_events(c, job_id)
        assert [e[0] for e in fresh] == ["completed"] and fresh[0][2] == rest[-1][2]


def test_events_of_a_cancelled_job_and_an_unknown_one(service: Service) -> None:
    with service.client() as c:
        job_id = submit_slow(c)
        assert c.delete(f"/jobs/{job_id}").status_code == 200
        wait_job(c, job_id)
        events = read_events(c, job_id)
        assert [e[0] for e in events] == ["completed"]
        assert events[0][2]["status"] == "cancelled" and events[0][2]["error"]["code"] == "cancelled"
        assert "result" not in events[0][2]["links"]
        assert_problem(c.get("/jobs/0123456789abcdef0123456789abcdef/events"), 404)
