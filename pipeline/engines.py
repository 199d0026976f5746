"""Engines: how a forward pass runs, chosen once from (device, precision, engine name).

Each engine maps an iterator of uint8 NCHW batches to float32 feature arrays, in order, preprocessing on its
own device (`Preprocess`: resize/normalise batched, never per-image PIL). Knows nothing of which model.

- `torch`: CPU or CUDA; fp32 is the exact reference path; bf16/fp16 via autocast, channels_last,
  optional torch.compile; on CUDA, pinned uploads and one batch in flight while the previous is copied back.
- `openvino`: CPU only; the model converted once, run asynchronously (infer requests overlap preprocessing
  of the next batch). Fastest on this kind of CPU (AMX / AVX-512-bf16) in bf16.
"""
from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from pipeline.backbones import Backbone, Normalized
from pipeline.compute import cpu_name, resolve_device  # noqa: F401 - one device parser for every stage
from pipeline.errors import PipelineError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "openvino")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
REQUEST_IMAGES = 32
REQUEST_TIMEOUT_S = 600.0  # one OpenVINO request of 32 images takes well under a second; this means "hung"


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise PipelineError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def make_engine(backbone: Backbone, device: str = "auto", precision: str = "auto", engine: str = "auto",
                compile: bool = False, channels: int = 3) -> TorchEngine | OpenVINOEngine:
    """Pick device, precision and engine once; return an engine ready to `map` batches (of `channels`)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if engine not in ENGINES:
        raise PipelineError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "auto":
        # CPU: OpenVINO, in bf16 where the CPU has it and in f32 elsewhere (7.8x torch's fp32 for Lite0 on an
        # AVX2-only EPYC, cosine to torch's features >= 0.9999998; benchmarks/RESULTS.md). An explicit
        # --precision fp32 asks for the exact reference: torch.
        engine = "openvino" if dev.type == "cpu" and _openvino_available() and (
            precision == "auto" or prec != "fp32") else "torch"
    if engine == "openvino":
        if dev.type != "cpu":
            raise PipelineError("--engine openvino runs on the CPU only; use --engine torch with --device cuda")
        if not _openvino_available():
            raise PipelineError("--engine openvino needs `pip install openvino` (or pipeline's extra: "
                                "`pip install 'pipeline[openvino]'`)")
        return OpenVINOEngine(backbone, prec, channels)
    return TorchEngine(backbone, dev, prec, compile=compile)


class TorchEngine:
    name = "torch"

    def __init__(self, backbone: Backbone, device: torch.device, precision: str, compile: bool = False):
        self.device, self.precision, self.compiled = device, precision, compile
        if device.type == "cpu" and precision == "fp16":
            warnings.warn("fp16 on the CPU is slow and inexact; bf16 or fp32 are better there", stacklevel=2)
        self.preprocess = backbone.preprocess().to(device)
        self.image_size = backbone.image_size
        self.channels_last = precision != "fp32" or device.type == "cuda"
        model = backbone.model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = torch.compile(model) if compile else model

    def default_batch_size(self) -> int:
        """64 on the CPU (measured: larger gains nothing there); on CUDA, by the device's memory."""
        if self.device.type != "cuda":
            return 64
        free, _ = torch.cuda.mem_get_info(self.device)  # what is free now, not what the card has
        gib = free / 2**30 * (224 / self.image_size) ** 2  # activations grow with the image's area
        return 512 if gib >= 40 else 256 if gib >= 16 else 128 if gib >= 6 else 32

    def describe(self) -> dict:
        return {"engine": "torch", "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compiled, "device": self.device.type, "device_name": device_name(self.device)}

    @torch.inference_mode()
    def _forward(self, batch) -> torch.Tensor:
        x = _to_tensor(batch, self.device, self.preprocess)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self.model(x).float()
        with torch.autocast(self.device.type, dtype=_DTYPES[self.precision]):
            return self.model(x).float()

    def map(self, batches: Iterable) -> Iterator[np.ndarray]:
        if self.device.type == "cpu":
            for b in batches:
                yield self._forward(b).numpy()
            return
        # CUDA: copy results back asynchronously and keep the next batch queued behind it.
        pending: deque = deque()
        for b in batches:
            out = self._forward(b)
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            pending.append((host, ev))
            if len(pending) > 1:
                h, e = pending.popleft()
                e.synchronize()
                yield h.numpy()
        while pending:
            h, e = pending.popleft()
            e.synchronize()
            yield h.numpy()


class OpenVINOEngine:
    """Torch resizes each batch exactly (float32, the image's own channels); the OpenVINO graph does the
    rest (channels -> 3, normalise, model): measured fastest here, with features identical to feeding it
    fully preprocessed float input (benchmarks/RESULTS.md)."""

    name = "openvino"

    def __init__(self, backbone: Backbone, precision: str, channels: int = 3):
        import openvino as ov

        self._ov, self.precision, self.device = ov, precision, torch.device("cpu")
        self.preprocess = backbone.preprocess()
        self.graph = Normalized(self.preprocess, backbone.model).eval()
        self.size = backbone.image_size
        self._compiled: dict[int, object] = {}
        self.nreq = 1
        self._compile(channels)

    def _compile(self, channels: int):
        if channels not in self._compiled:
            s = self.size
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = self._ov.convert_model(self.graph, example_input=torch.zeros(1, channels, s, s),
                                               input=[(-1, channels, s, s)])
            hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[self.precision]
            compiled = self._ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                                     "PERFORMANCE_HINT": "THROUGHPUT"})
            self.nreq = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            # what OpenVINO runs, not what was asked: a bf16 hint on a CPU without bf16 runs f32
            ran = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(
                compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
            self.precision = ran or self.precision
            self._compiled[channels] = compiled
        return self._compiled[channels]

    def default_batch_size(self) -> int:
        return 64

    def describe(self) -> dict:
        import openvino

        return {"engine": "openvino", "precision": self.precision, "infer_requests": self.nreq,
                "request_images": REQUEST_IMAGES, "device": "cpu", "device_name": cpu_name(),
                "openvino": openvino.__version__,
                "split": "resize in torch (float32); channels->3, normalise and model in OpenVINO"}

    def map(self, batches: Iterable) -> Iterator[np.ndarray]:
        """Each batch goes out as requests of at most REQUEST_IMAGES images (one per stream); a request
        larger than that gains no speed here and costs ~13 MB of activations per image (measured)."""
        queues: dict[int, object] = {}
        done: dict[tuple[int, int], np.ndarray] = {}
        inputs: dict[tuple[int, int], np.ndarray] = {}  # shared with OpenVINO: alive until their request ends
        chunks: dict[int, int] = {}  # batch index -> number of requests it was split into

        def finished(req, key):
            done[key] = req.get_output_tensor(0).data.copy()

        def ready(i):
            return i in chunks and all((i, j) in done for j in range(chunks[i]))

        def take(i):
            for j in range(chunks[i]):
                inputs.pop((i, j), None)
            return np.concatenate([done.pop((i, j)) for j in range(chunks.pop(i))])

        nxt = 0
        for i, b in enumerate(batches):
            with torch.inference_mode():
                x = _to_tensor(b, self.device, self.preprocess.resize).numpy()
            c = x.shape[1]
            if c not in queues:
                queues[c] = self._ov.AsyncInferQueue(self._compile(c), self.nreq)
                queues[c].set_callback(finished)
            parts = np.array_split(x, max(1, -(-len(x) // REQUEST_IMAGES)))
            chunks[i] = len(parts)
            for j, part in enumerate(parts):
                inputs[(i, j)] = part
                _wait_idle(queues[c])  # start_async would block without a bound while all are busy
                queues[c].start_async({0: part}, (i, j), share_inputs=True)
            while ready(nxt):
                yield take(nxt)
                nxt += 1
        for q in queues.values():
            _wait_all(q)
        while nxt in chunks:
            yield take(nxt)
            nxt += 1

def _hung() -> PipelineError:
    return PipelineError(f"the OpenVINO engine did not finish a request within {REQUEST_TIMEOUT_S:.0f} s (hung); "
                         f"run the same command again to resume, or use --engine torch (which starts the "
                         f"extraction over: the engine is part of the store's settings)")


def _wait_idle(queue) -> None:
    """Until one of the queue's requests is free, at most REQUEST_TIMEOUT_S."""
    import time

    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while not queue.is_ready():
        if time.monotonic() > deadline:
            raise _hung()
        time.sleep(0.0005)


def _wait_all(queue) -> None:
    """Until every request of the queue has finished, at most REQUEST_TIMEOUT_S (OpenVINO's own wait_all
    has no bound: it runs in a helper thread that is abandoned if it never returns)."""
    import threading

    t = threading.Thread(target=queue.wait_all, daemon=True)
    t.start()
    t.join(REQUEST_TIMEOUT_S)
    if t.is_alive():
        raise _hung()


def _to_tensor(batch, device: torch.device, preprocess) -> torch.Tensor:
    """uint8 batch (array, or list of differently sized images) -> preprocessed float on `device`."""
    if isinstance(batch, list):
        xs = [_to_tensor(b[None], device, preprocess) for b in batch]
        if len({x.shape[1] for x in xs}) > 1:  # grayscale and colour mixed (image folders)
            xs = [x.expand(-1, 3, -1, -1) for x in xs]
        return torch.cat(xs)
    x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return preprocess(x)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()

