"""The job function every worker runs: fetch blob -> decode -> engine -> encode -> store.

``JobRunner`` holds one model cache per process (a Celery worker child, or the embedded pool);
torch and the engine are imported on first use, never before a worker pool forks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from models import catalog
from models.errors import UnknownModelError
from workers.chunks import ChunkRef, Fanout
from workers.contract import ImageFacts, JobRecord, JobSpec, JobStatus, StageRecord, StageSpec, Timings
from workers.errors import ErrorCode, InputLost, JobTimeout, StoreUnavailable, code_of
from workers.lifecycle import Lifecycle
from workers.settings import Settings
from workers.store import JobStore
from workers.webhooks import WebhookSender

if TYPE_CHECKING:
    from models.engine import RestorationModel

log = logging.getLogger(__name__)
QUEUE_DEVICES = {"cpu": "cpu", "gpu": "cuda"}
_PROGRESS_EVERY_S = 0.25


def preload(torch_threads: int = 0) -> None:
    """Import torch and the engine in a worker process before its first job.

    Called in each pool process after the fork (and in solo/thread workers before they start), so
    a soft time limit can never interrupt the import halfway and leave a broken module behind.
    """
    import torch

    from models import archs, engine, imageio, pipeline
    from models.config import denoise_config

    if torch_threads:
        torch.set_num_threads(torch_threads)
    # one tiny network through the whole path also runs torch's own lazy imports
    config = denoise_config(nf=4, depth=3)
    model = engine.from_network(archs.build(config), config)
    image = imageio.Image(pixels=np.zeros((8, 8, 3), np.float32))
    imageio.encode(pipeline.restore_image(model, image), "png")


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


_OPS_SIDE = 64


@dataclass(frozen=True)
class Loaded:
    """A model and its operation counts on a 64x64 input (every conv's cost scales with pixels)."""

    model: RestorationModel
    ops_64: dict[str, float]

    def facts(self, width: int, height: int) -> dict[str, Any]:
        """The model metadata a job reports: identity, size, cost on this input, where it ran."""
        info = self.model.info
        ratio = width * height / (_OPS_SIDE * _OPS_SIDE)
        ops = {k: self.ops_64[k] * ratio for k in ("flops", "bops", "ops_paper")}
        return {"name": info.name, "task": info.task, "variant": info.variant, "scale": info.scale,
                "params": info.float_params + info.binary_params, "float_params": info.float_params,
                "binary_params": info.binary_params, "ops": {**ops, "height": height, "width": width},
                "sha256": info.sha256, "device": info.device, "backend": info.backend}


class ModelCache:
    """Loaded models by (task, scale, variant, device); each is built once per process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], Loaded] = {}

    def get(self, name: str, sha256: str, device: str) -> Loaded:
        """The catalogue's network ``name``, whose weights must be those the API costed (``sha256``)."""
        key = (name, sha256, device)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                from models import checkpoints
                from models.engine import from_checkpoint

                entry = catalog.by_name(name, self._settings.weights_dir)
                if entry.sha256() != sha256:
                    raise UnknownModelError(f"the weights of {name} changed after the job was accepted "
                                            f"(sha256 {sha256[:12]}... asked, {entry.sha256()[:12]}... here)")
                preload(self._settings.torch_threads)
                model = from_checkpoint(checkpoints.read(entry.path), name=entry.name, device=device,
                                        backend=self._settings.backend, precision=self._precision(device))
                loaded = Loaded(model, model.info.ops(_OPS_SIDE, _OPS_SIDE))
                self._models[key] = loaded
            return loaded

    def _precision(self, device: str) -> str:
        """The configured precision on the CPU; GPUs keep fp32 (their engine has backend fp16)."""
        return self._settings.precision if device == "cpu" else "fp32"


class JobRunner:
    """Runs jobs from a store; one instance per process, shared by that process's threads."""

    def __init__(self, settings: Settings, store: JobStore, webhooks: WebhookSender | None = None,
                 fanout: Fanout | None = None) -> None:
        self.settings = settings
        self.store = store
        self.fanout = fanout  # Celery mode: long clips are spread over the workers in chunks
        self.models = ModelCache(settings)
        self.webhooks = webhooks or WebhookSender(settings)
        self.jobs = Lifecycle(store, self.webhooks.notify)

    def run(self, job_id: str, *, worker: str | None = None,
            limit_errors: tuple[type[BaseException], ...] = ()) -> JobRecord | None:
        """Run one job to a terminal state; a second delivery of a finished job does nothing.

        ``worker`` (the Celery node name) is recorded so the API can tell when that worker is gone.
        """
        rec = self.jobs.start(job_id, worker)
        if rec is None:  # unknown, cancelled while queued, or already taken or finished by another delivery
            return self.store.get(job_id)
        ended: JobRecord | None = None  # the terminal record when this runner ended the job
        over = True  # False when the job is not over: Redis stayed unreachable
        try:
            ended = self._execute(rec)
        except StoreUnavailable:
            # not ended: the input is kept and the record stays running; once Redis is back the
            # sweeper sees that no worker holds the job and queues it again
            over = False
            raise
        except JobCancelled:
            ended = self.jobs.stopped(job_id)
        except limit_errors:
            ended = self._fail(rec, ErrorCode.timeout, self._over_time())
        except Exception as e:
            code = code_of(e)
            if code is ErrorCode.internal:  # a bug or a broken install: keep the traceback visible
                ended = self._fail(rec, code, f"{type(e).__name__}: {e}")
                raise
            ended = self._fail(rec, code, str(e))
        finally:
            if over:  # whoever ended the job sends its webhook (a cancelling API request sends its own)
                self.jobs.settle(job_id, ended)
        return self.store.get(job_id)

    def _over_time(self) -> str:
        return f"the job ran past the time limit of {self.settings.soft_time_limit_s} s"

    def _fail(self, run: JobRecord, code: ErrorCode, detail: str) -> JobRecord | None:
        ended = self.jobs.fail(run, code, detail)
        if ended is not None:
            log.warning("job %s failed (%s): %s", run.id, code.value, detail)
        return ended

    def _execute(self, rec: JobRecord) -> JobRecord | None:
        """Restore the image; the succeeded record, or None when the job ended otherwise meanwhile."""
        from models import imageio, media, pipeline
        from models.media.restore import FrameRestorer, decode_all, encode_all
        from models.media.restore import restore as restore_frames

        spec: JobSpec = rec.spec
        t_start = time.perf_counter()
        data = self.store.input(spec.id)
        if data is None:
            raise InputLost(f"the input was gone when a worker took the job (inputs are kept "
                            f"{self.settings.result_ttl_s} s, or Redis lost it); send the image again")
        t0 = time.perf_counter()
        stages, chroma, budget = self._networks(spec)
        t1 = time.perf_counter()
        # loading a model is a once-per-process cost: the job's own time starts after it
        deadline = t1 + self.settings.soft_time_limit_s
        by_worker: dict[str, int] | None = None
        kind = media.probe(data, max_pixels=self.settings.max_pixels, max_frames=self.settings.max_frames)
        progress = self._progress(spec.id, deadline)
        if kind.kind == "still":
            img = imageio.decode(data, max_pixels=self.settings.max_pixels)
            t2 = time.perf_counter()
            out, reports = pipeline.run_stages([s.model for s in stages], img, tile=spec.tile,
                                               strength=spec.strength, memory_bytes=budget,
                                               progress=progress, chroma=chroma)
            t3 = time.perf_counter()
            self._check(spec.id, deadline)
            encoded = imageio.encode(out, spec.format, quality=spec.quality)
            size = (out.width, out.height)
        else:  # frames are decoded, restored and encoded one after another: all of it is inference
            t2 = time.perf_counter()
            restorer = FrameRestorer([s.model for s in stages], tile=spec.tile, strength=spec.strength,
                                     memory_bytes=budget, chroma=chroma)
            if self.fanout is not None and kind.frames > self.settings.chunk_frames:
                clip = decode_all(data, kind, max_frames=self.settings.max_frames)

                def check() -> None:
                    self._check(spec.id, deadline)

                restored, by_worker, reports = self.fanout.run(rec, clip.frames, restorer, rec.worker or "",
                                                               check, progress)
                encoded = encode_all(clip, restored, data, kind, spec.format, quality=spec.quality)
            else:
                encoded = restore_frames(restorer, data, kind, spec.format, quality=spec.quality,
                                         max_frames=self.settings.max_frames, progress=progress)
                reports = restorer.reports
            t3 = time.perf_counter()
            self._check(spec.id, deadline)
            scale = stages[-1].model.scale
            size = (kind.width * scale, kind.height * scale)
        t4 = time.perf_counter()
        self.store.put_result(spec.id, encoded)
        scale = stages[-1].model.scale
        for loaded in stages:
            self._release_gpu(loaded.model, size[0] * size[1] // (scale * scale))
        ms = 1000.0
        timings = Timings(queue=rec.timings.queue, load=(t1 - t0) * ms, decode=(t2 - t1) * ms,
                          inference=(t3 - t2) * ms, encode=(t4 - t3) * ms,
                          total=(rec.timings.queue or 0.0) + (time.perf_counter() - t_start) * ms)
        output = ImageFacts(width=size[0], height=size[1], bytes=len(encoded), format=spec.format,
                            frames=kind.frames, fps=kind.fps)
        facts = stages[-1].facts(size[0] // scale, size[1] // scale)
        stage_records = [StageRecord(**asdict(r)) for r in reports]
        return self.jobs.succeed(rec, timings=timings, output=output, model=facts, stages=stage_records,
                                 frames_by_worker=by_worker)

    def _networks(self, spec: JobSpec) -> tuple[list[Loaded], RestorationModel | None, int]:
        """The job's stages, the chroma partner (deblock) and the activation budget of a tile."""
        device = QUEUE_DEVICES[spec.queue]
        # exactly the networks the API resolved and costed (a job queued before it did: resolved here)
        planned = spec.stages or [StageSpec.of(e, p) for e, p in catalog.pipeline(
            spec.tasks, spec.scale, spec.variant, self.settings.weights_dir)]
        stages = [self.models.get(s.model, s.sha256, device) for s in planned]
        chroma = next((self.models.get(s.chroma_model, s.chroma_sha256, device).model for s in planned
                       if s.chroma_model and s.chroma_sha256), None)
        budget = self.settings.gpu_tile_memory_mb if device == "cuda" else self.settings.tile_memory_mb
        return stages, chroma, budget << 20

    def run_chunk(self, ref: str, worker: str) -> str:
        """A chunk of a job spread over the workers (Celery mode); what became of it."""
        from models.media.restore import FrameRestorer
        from models.stages import Strength

        if self.fanout is None:
            raise RuntimeError("chunks run only where the runner has a fan-out (Celery mode)")

        def restorer_for(run: JobRecord, strength: Strength | None) -> FrameRestorer:
            stages, chroma, budget = self._networks(run.spec)
            return FrameRestorer([s.model for s in stages], tile=run.spec.tile, strength=strength,
                                 memory_bytes=budget, chroma=chroma)

        return self.fanout.take(ChunkRef.parse(ref), worker, restorer_for)

    def _check(self, job_id: str, deadline: float) -> None:
        if time.perf_counter() > deadline:
            raise JobTimeout(self._over_time())
        rec = self.store.get(job_id)
        if rec is None or rec.status == JobStatus.cancelled:
            raise JobCancelled(job_id)

    def _progress(self, job_id: str, deadline: float) -> Callable[[float, int], None]:
        begun = time.perf_counter()
        last = [0.0]

        def report(done: float, total: int) -> None:
            t = time.perf_counter()
            if t - last[0] < _PROGRESS_EVERY_S and done < total:
                return
            last[0] = t
            self._check(job_id, deadline)
            # the tiles left at the rate measured so far (the encode after the last tile is not counted)
            eta_s = (t - begun) / max(done, 1) * (total - done)
            self.jobs.progress(job_id, 0.99 * done / max(total, 1), eta_s)

        return report

    def _release_gpu(self, model: RestorationModel, pixels: int) -> None:
        if model.device.type == "cuda" and pixels >= self.settings.gpu_release_pixels:
            import torch

            torch.cuda.empty_cache()
