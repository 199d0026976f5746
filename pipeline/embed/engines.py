"""Engines: how a forward pass runs, chosen once from (device, precision, engine name).

Each engine maps an iterator of uint8 NCHW batches to float32 feature arrays, in order, preprocessing on its
own device (`Preprocess`: resize/normalise batched, never per-image PIL). Knows nothing of which model.

- `torch`: CPU or CUDA; fp32 is the exact reference path; bf16/fp16 via autocast, channels_last,
  optional torch.compile; on CUDA, pinned uploads and one batch in flight while the previous is copied back.
- `openvino`: CPU only; the model converted once, run asynchronously (infer requests overlap preprocessing
  of the next batch). Fastest on this kind of CPU (AMX / AVX-512-bf16) in bf16; int8 (`int8.py`) quantized
  by NNCF on a seeded calibration sample, the rest of the graph in f32.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from pipeline.embed.backbones import Backbone, Normalized
from pipeline.embed.graphcache import cached_model
from pipeline.embed.int8 import Calibration, calibration_batches, import_nncf, int8_layers, quantized, quiet_torch
from pipeline.embed.request import ENGINES, IMAGE_SIZE, PRECISIONS
from pipeline.errors import PipelineError
from pipeline.hardware import auto_precision, cpu_name, device_name, resolve_device

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
REQUEST_IMAGES = 32
REQUEST_TIMEOUT_S = 600.0  # one OpenVINO request of 32 images takes well under a second; this means "hung"


def resolve_precision(precision: str, device: torch.device) -> str:
    """What `--precision` means here: auto is bf16 where the hardware has it (docs/decisions.md#bf16-features),
    fp16 on a GPU without bf16, else fp32."""
    if precision not in PRECISIONS:
        raise PipelineError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return auto_precision(device, half=True) if precision == "auto" else precision


def _openvino_available() -> bool:
    try:
        _import_openvino()
    except ImportError:
        return False
    return True


def _import_openvino():
    """`import openvino`, its usage telemetry declined (its import sends an event unless told otherwise)."""
    with _no_telemetry():
        import openvino

    return openvino


def make_engine(backbone: Backbone, device: str = "auto", precision: str = "auto", engine: str = "auto",
                compile: bool = False, channels: int = 3,
                calibration: Calibration | None = None) -> TorchEngine | OpenVINOEngine:
    """Pick device, precision and engine once; return an engine ready to `map` batches (of `channels`).
    `--precision int8` runs on the CPU through OpenVINO, its model calibrated on `calibration`."""
    if precision == "int8" and device == "auto":
        device = "cpu"  # int8 runs nowhere else
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if engine not in ENGINES:
        raise PipelineError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
    if prec == "int8":
        if dev.type != "cpu" or engine == "torch":
            raise PipelineError("--precision int8 runs on the CPU through OpenVINO: use --device cpu and "
                                "--engine auto or openvino")
        if calibration is None:
            raise PipelineError("--precision int8 needs calibration images (a sample of the training split)")
        engine = "openvino"
    if engine == "auto":
        # CPU: OpenVINO, in bf16 where the CPU has it and in f32 elsewhere (7.8x torch's fp32 for Lite0 on an
        # AVX2-only EPYC, cosine to torch's features >= 0.9999998; docs/decisions.md#openvino-auto). An explicit
        # --precision fp32 asks for the exact reference: torch.
        engine = "openvino" if dev.type == "cpu" and _openvino_available() and (
            precision == "auto" or prec != "fp32") else "torch"
    if engine == "openvino":
        if dev.type != "cpu":
            raise PipelineError("--engine openvino runs on the CPU only; use --engine torch with --device cuda")
        if not _openvino_available():
            raise PipelineError("--engine openvino needs `pip install openvino` (or pipeline's extra: "
                                "`pip install 'transfer-workbench[openvino]'`)")
        return OpenVINOEngine(backbone, prec, channels, calibration)
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
        gib = free / 2**30 * (IMAGE_SIZE / self.image_size) ** 2  # activations grow with the image's area
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
    fully preprocessed float input (docs/decisions.md#openvino-split)."""

    name = "openvino"

    def __init__(self, backbone: Backbone, precision: str, channels: int = 3,
                 calibration: Calibration | None = None):
        ov = _import_openvino()
        self._ov, self.precision, self.device = ov, precision, torch.device("cpu")
        self.asked = precision
        self.backbone, self.calibration = backbone, calibration
        self.preprocess, self.model = backbone.preprocess(), backbone.model.eval()
        self.size = backbone.image_size
        self._compiled: dict[int, object] = {}
        self._int8: dict[int, dict] = {}  # per graph: how its int8 model was had and how much of it ran int8
        self._graphs: dict[int, str] = {}  # per graph: its converted model made now or read from the cache
        self.nreq = 1
        # int8: one 3-channel model, grey input repeated before it, so that one calibrated model serves a
        # store's grey images and anyone's colour photos later (predict, evaluate)
        self._compile(3 if precision == "int8" else channels)

    def _convert(self, channels: int):
        """The backbone as an OpenVINO model for resized float input of `channels`: through torch.export, not
        convert_model's own torch.jit.trace (deprecated: a FutureWarning per call); the batch dimension dynamic
        (an example of 2: export fixes a dimension of size 1)."""
        s = self.size
        graph = Normalized(self.preprocess, self.model, channels).eval()
        try:
            program = torch.export.export(graph, (torch.zeros(2, channels, s, s),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception:  # noqa: BLE001 - a model export cannot capture (data-dependent code): traced
            program = None
        with _no_telemetry(), quiet_torch():  # convert_model imports NNCF where it is installed
            if program is not None:
                return self._ov.convert_model(program, input=[(-1, channels, s, s)])
            with warnings.catch_warnings():  # convert_model's own trace: torch warns, which says nothing to the user
                warnings.simplefilter("ignore")
                return self._ov.convert_model(graph, example_input=torch.zeros(1, channels, s, s),
                                              input=[(-1, channels, s, s)])

    def _graph_recipe(self, channels: int) -> dict:
        """What makes two converted models the same: the cache's key (the weights and the module tree hashed,
        so a fine-tuned or other-weights model of the same name is another entry)."""
        bb, h = self.backbone, hashlib.sha256(repr(self.model).encode())
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
        return {"format": 1, "backbone": bb.name, "layer": bb.layer, "image_size": self.size, "channels": channels,
                "mean": list(bb.mean), "std": list(bb.std), "model_sha256": h.hexdigest(),
                "versions": {"openvino": self._ov.__version__, "torch": torch.__version__}}

    def _compile(self, channels: int):
        if channels not in self._compiled:
            with signal_stack_kept():  # NNCF's calibration compiles models too
                self._compiled[channels] = self._compile_new(channels)
        return self._compiled[channels]

    def _compile_new(self, channels: int):
        model, self._graphs[channels], _ = cached_model(self._ov, "openvino", self._graph_recipe(channels),
                                                        lambda: self._convert(channels), required=False)
        if self.asked == "int8":
            model, how, entry = quantized(self._ov, model, self._int8_recipe(channels),
                                          lambda: calibration_batches(self.calibration, self.preprocess.resize,
                                                                      channels))
        # int8: the layers NNCF left unquantized run in f32
        hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}[self.asked]
        compiled = self._ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                                 "PERFORMANCE_HINT": "THROUGHPUT"})
        self.nreq = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        _first_request(compiled, channels, self.size)
        # what OpenVINO runs, not what was asked: a bf16 hint on a CPU without bf16 runs f32; an int8
        # model on a CPU without int8 kernels runs its layers in f32
        ran = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(
            compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        self.precision = ran or self.precision
        if self.asked == "int8":
            k, n = int8_layers(compiled)
            self._int8[channels] = {"model": how, "recipe": entry.name, "int8_layers": k, "weighted_layers": n}
            if k:
                self.precision = "int8"
        return compiled

    def _int8_recipe(self, channels: int) -> dict:
        """What makes two int8 models the same: the cache's key."""
        nncf, bb = import_nncf(), self.backbone
        return {"format": 1, "backbone": bb.name, "weights_id": bb.weights.get("id"),
                "weights_sha256": bb.weights.get("sha256"), "layer": bb.layer, "image_size": bb.image_size,
                "mean": list(bb.mean), "std": list(bb.std), "channels": channels,
                "calibration": self.calibration.describe(), "quantization": "nncf.quantize, default preset",
                "versions": {"nncf": nncf.__version__, "openvino": self._ov.__version__, "torch": torch.__version__}}

    def default_batch_size(self) -> int:
        return 64

    def describe(self) -> dict:
        import openvino

        out = {"engine": "openvino", "precision": self.precision, "infer_requests": self.nreq,
               "request_images": REQUEST_IMAGES, "device": "cpu", "device_name": cpu_name(),
               "openvino": openvino.__version__,
               "split": "resize in torch (float32); channels->3, normalise and model in OpenVINO",
               "converted_model": {str(c): v for c, v in sorted(self._graphs.items())}}
        if self.asked == "int8":
            out["int8"] = {"calibration": self.calibration.describe(), "nncf": import_nncf().__version__,
                           "rest": "fp32", "graphs": {str(c): v for c, v in sorted(self._int8.items())}}
        return out

    def map(self, batches: Iterable) -> Iterator[np.ndarray]:
        """Each batch goes out as requests of at most REQUEST_IMAGES images (a request larger than that gains
        no speed here and costs ~13 MB of activations per image, measured), run by `nreq` Python threads that
        each own one infer request per graph: `infer` releases the GIL while OpenVINO computes, so they run in
        parallel, one per stream. No Python callback ever runs on OpenVINO's own threads: with AsyncInferQueue
        callbacks, freeing a compiled model while a callback waited for the GIL deadlocked (seen in
        `pipeline evaluate`, which builds one engine after another). Results come back in order; at most
        2 x nreq requests are in flight; every wait is bounded by REQUEST_TIMEOUT_S."""
        workers = _Workers(self.nreq, self._new_request)
        pending: deque = deque()  # (batch's futures), oldest first
        try:
            for b in batches:
                with torch.inference_mode():
                    t = _to_tensor(b, self.device, self.preprocess.resize)
                    if self.asked == "int8" and t.shape[1] == 1:
                        t = t.expand(-1, 3, -1, -1).contiguous()
                    x = t.numpy()
                compiled = self._compile(x.shape[1])
                parts = np.array_split(x, max(1, -(-len(x) // REQUEST_IMAGES)))
                pending.append([workers.submit(compiled, part) for part in parts])
                while sum(map(len, pending)) > 2 * self.nreq:
                    yield _gather(pending.popleft())
            while pending:
                yield _gather(pending.popleft())
        except _Hung:
            workers.hung = True  # abandon the stuck request's thread (a daemon): never wait for it
            raise
        finally:
            workers.stop()

    def _new_request(self, compiled):
        return compiled.create_infer_request()


@contextlib.contextmanager
def signal_stack_kept():
    """The calling thread's alternate signal stack as it was before the block (Linux; elsewhere a no-op).

    OpenVINO's CPU plugin gives the thread a signal stack of its own when it compiles a model, and when the
    model is freed puts back the one it replaced, even when that one has since been freed too: two compiled
    models freed in the order they were made (the audit's grey and colour graphs) left the main thread a signal
    stack in unmapped memory, and the next Ctrl-C, whose Python handler runs there, was a segfault instead of
    exit 130. Kept as it was, the stack OpenVINO records and puts back is always one that still exists."""
    import ctypes
    import sys

    class StackT(ctypes.Structure):  # Linux's stack_t
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None) if sys.platform == "linux" else None
    before = StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


def _first_request(compiled, channels: int, size: int) -> None:
    """One image through a request on this thread before the workers start. The bindings' first calls
    initialise C++ statics, and two threads entering one at once deadlocked: one waited for the GIL inside the
    initialiser while the other, holding the GIL, waited for the initialiser (seen in the audit's engine once
    the converted model came from the cache instead of convert_model, which had made those calls first)."""
    req = compiled.create_infer_request()
    req.infer({0: np.zeros((1, channels, size, size), np.float32)}, share_inputs=True)
    req.get_output_tensor(0).data.copy()


class _Workers:
    """Daemon threads running OpenVINO requests synchronously: a hung request can be abandoned (it never
    blocks the interpreter's exit, as a ThreadPoolExecutor's join would)."""

    def __init__(self, n: int, new_request):
        self.jobs: queue.Queue = queue.Queue()
        self.new_request, self.hung = new_request, False
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def submit(self, compiled, part: np.ndarray):
        from concurrent.futures import Future

        fut: Future = Future()
        self.jobs.put((fut, compiled, part))
        return fut

    def _loop(self):
        requests: dict[int, object] = {}  # this thread's request per compiled graph
        while (job := self.jobs.get()) is not None:
            fut, compiled, part = job
            try:
                req = requests.get(id(compiled))
                if req is None:
                    req = requests[id(compiled)] = self.new_request(compiled)
                req.infer({0: part}, share_inputs=True)
                fut.set_result(req.get_output_tensor(0).data.copy())
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                fut.set_exception(e)

    def stop(self):
        """Let the threads finish and free their requests here, not at interpreter exit (where OpenVINO's
        threads may already be gone: std::terminate)."""
        for _ in self.threads:
            self.jobs.put(None)
        if not self.hung:
            for t in self.threads:
                t.join(REQUEST_TIMEOUT_S)


def _gather(futures) -> np.ndarray:
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        return np.concatenate([f.result(timeout=REQUEST_TIMEOUT_S) for f in futures])
    except FutureTimeout:
        raise _hung() from None


@contextlib.contextmanager
def _no_telemetry():
    """OpenVINO's import and model conversion send usage telemetry over the network unless told otherwise
    (from a forked process, which also upsets numba's TBB pool after a UMAP map in the same process). It
    declines in CI jobs: both run as one here, the variable restored after."""
    old = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = old


class _Hung(PipelineError):
    pass


def _hung() -> PipelineError:
    return _Hung(f"the OpenVINO engine did not finish a request within {REQUEST_TIMEOUT_S:.0f} s (hung); "
                         f"run the same command again to resume, or use --engine torch (which starts the "
                         f"extraction over: the engine is part of the store's settings)")


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


def prefetch(it: Iterable, depth: int = 2) -> Iterator:
    """Produce items in a background thread (decoding, pinning) while the consumer computes."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
