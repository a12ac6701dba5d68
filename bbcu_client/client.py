"""The client: submit an image as a job, follow it over Server-Sent Events, download the result.

``AsyncClient`` does the work; ``Client`` runs it for synchronous code (one event loop per call).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

Source = str | os.PathLike[str] | bytes
Progress = Callable[[dict[str, Any]], None]
_RECONNECTS = 5  # a dropped event stream is resumed this many times in a row (with Last-Event-ID)
# a submission refused for load (429: the key's rate or job quota; 503: queue or memory full) is sent
# again after the server's Retry-After (at most _BUSY_WAIT_S each time), this many times
_BUSY_RETRIES = 5
_BUSY_WAIT_S = 30.0


class ServiceError(Exception):
    """The service refused a request (a problem details body) or a job did not succeed."""

    def __init__(self, status: int, title: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{title}: {detail}" if detail else title)
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body or {}


@dataclass(frozen=True)
class Restored:
    """A restored image and the facts of its job (the final ``GET /jobs/{id}`` record)."""

    image: bytes
    job: dict[str, Any]
    content_type: str
    server_timing: str | None = None
    name: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the restored image."""
        return int(self.job["output"]["width"]), int(self.job["output"]["height"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.write_bytes(self.image)
        return out


def _problem(response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return ServiceError(response.status_code, str(body.get("title", response.reason_phrase)),
                            str(body["detail"]), body)
    return ServiceError(response.status_code, f"HTTP {response.status_code}", response.text[:200])


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds of a Retry-After header (the service sends whole seconds), or None."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _read(source: Source) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "image"
    path = Path(source)
    return path.read_bytes(), path.name


def _params(task: str, scale: int | None, variant: str | None, format: str | None, tile: int | None,
            device: str | None, options: dict[str, Any]) -> dict[str, Any]:
    given = {"task": task, "scale": scale, "variant": variant, "format": format, "tile": tile,
             "device": device, **options}
    return {k: v for k, v in given.items() if v is not None}


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) of a text/event-stream."""
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event or "message", event_id, json.loads("\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


class AsyncClient:
    """An asyncio client of one service, e.g. ``AsyncClient("http://host:8000")``.

    ``api_key`` is sent as ``Authorization: Bearer <key>`` to a service that requires keys.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout,
                                       headers={**auth, **(headers or {})})

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[dict[str, Any]]:
        """The shipped models (``GET /models``)."""
        answer = await self._http.get("/models")
        if answer.status_code != 200:
            raise _problem(answer)
        return list(answer.json()["models"])

    async def submit(self, source: Source, *, task: str, scale: int | None = None, variant: str | None = None,
                     format: str | None = None, tile: int | None = None, device: str | None = None,
                     options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upload an image as a job; its record (status queued). ``options``: further query parameters."""
        data, name = _read(source)
        for attempt in range(_BUSY_RETRIES + 1):
            answer = await self._http.post(
                "/restore", params=_params(task, scale, variant, format, tile, device, options or {}),
                files={"image": (name, data, "application/octet-stream")},
                headers={"Prefer": "respond-async"})
            wait = _retry_after(answer)
            if answer.status_code not in (429, 503) or wait is None or attempt == _BUSY_RETRIES:
                break
            await asyncio.sleep(min(wait, _BUSY_WAIT_S))
        if answer.status_code != 202:
            raise _problem(answer)
        return dict(answer.json())

    async def events(self, job_id: str, last_event_id: str | None = None,
                     ) -> AsyncIterator[tuple[str, str | None, dict[str, Any]]]:
        """The job's events (``status``, ``progress``, ``completed``) as (event, id, data) while it runs."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        async with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as answer:
            if answer.status_code != 200:
                await answer.aread()
                raise _problem(answer)
            async for item in _sse(answer.aiter_lines()):
                yield item

    async def wait(self, job_id: str, on_progress: Progress | None = None) -> dict[str, Any]:
        """The job's final record, following its events (and resuming the stream if it drops)."""
        last_id: str | None = None
        failures = 0
        while True:
            try:
                async for event, event_id, data in self.events(job_id, last_id):
                    last_id, failures = event_id or last_id, 0
                    if on_progress is not None:
                        on_progress(data)
                    if event == "completed":
                        return data
            except (httpx.TransportError, json.JSONDecodeError):
                failures += 1
                if failures > _RECONNECTS:
                    raise
                await asyncio.sleep(min(2.0, 0.2 * failures))

    async def result(self, job: dict[str, Any], name: str | None = None) -> Restored:
        """Download a succeeded job's image; ``ServiceError`` for a job that failed or was cancelled."""
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise ServiceError(0, f"Job {job['status']}", str(error.get("detail", "")), job)
        answer = await self._http.get(f"/jobs/{job['id']}/result")
        if answer.status_code != 200:
            raise _problem(answer)
        return Restored(answer.content, job, answer.headers.get("content-type", ""),
                        answer.headers.get("server-timing"), name)

    async def restore(self, source: Source, *, task: str, scale: int | None = None,
                      variant: str | None = None, format: str | None = None, tile: int | None = None,
                      device: str | None = None,
                      options: dict[str, Any] | None = None, on_progress: Progress | None = None) -> Restored:
        """Restore one image (a path or its bytes): submit, follow, download."""
        job = await self.submit(source, task=task, scale=scale, variant=variant, format=format, tile=tile,
                                device=device, options=options)
        final = await self.wait(job["id"], on_progress)
        return await self.result(final, None if isinstance(source, bytes) else Path(source).name)

    async def restore_many(self, sources: Iterable[Source], *, task: str, concurrency: int = 4,
                           on_result: Callable[[int, Restored | Exception], None] | None = None,
                           progress_bar: bool = False, **options: Any) -> list[Restored | Exception]:
        """Restore many images, at most ``concurrency`` at a time; per input its result or its error.

        ``options`` are ``restore``'s keyword arguments; ``on_result(index, result)`` is called as each
        one finishes (for example to save it); ``progress_bar`` draws a tqdm bar of files on stderr.
        """
        from tqdm import tqdm

        items = list(sources)
        results: list[Restored | Exception] = [ServiceError(0, "Not run", "")] * len(items)
        queue = iter(enumerate(items))
        bar = tqdm(total=len(items), unit="img", desc="restore", disable=not progress_bar)

        async def lane() -> None:
            for index, source in queue:
                outcome: Restored | Exception
                try:
                    outcome = await self.restore(source, task=task, **options)
                except (ServiceError, httpx.HTTPError, OSError) as e:
                    outcome = e
                results[index] = outcome
                bar.update(1)
                if on_result is not None:
                    on_result(index, outcome)

        try:
            await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, len(items))))))
        finally:
            bar.close()
        return results


class Client:
    """``AsyncClient``'s operations for synchronous code, e.g. ``Client(url).restore("a.png", task="sr")``.

    Each call runs its own event loop; inside async code use ``AsyncClient``.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self._api_key = api_key
        self._timeout = timeout
        self._headers = headers

    def _run(self, call: Callable[[AsyncClient], Any]) -> Any:
        async def main() -> Any:
            async with AsyncClient(self.url, api_key=self._api_key, timeout=self._timeout,
                                   headers=self._headers) as client:
                return await call(client)

        return asyncio.run(main())

    def models(self) -> list[dict[str, Any]]:
        """The shipped models."""
        return list(self._run(lambda c: c.models()))

    def restore(self, source: Source, *, task: str, **options: Any) -> Restored:
        """Restore one image; keyword arguments as ``AsyncClient.restore``."""
        restored: Restored = self._run(lambda c: c.restore(source, task=task, **options))
        return restored

    def restore_many(self, sources: Sequence[Source], *, task: str, concurrency: int = 4,
                     on_result: Callable[[int, Restored | Exception], None] | None = None,
                     progress_bar: bool = False, **options: Any) -> list[Restored | Exception]:
        """Restore many images concurrently; see ``AsyncClient.restore_many``."""
        results: list[Restored | Exception] = self._run(lambda c: c.restore_many(
            sources, task=task, concurrency=concurrency, on_result=on_result, progress_bar=progress_bar,
            **options))
        return results
