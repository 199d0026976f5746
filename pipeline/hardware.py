"""What this machine has, asked once at the edge and passed down: the `--device` parser, processor and GPU
names, bf16 support and the precision `auto` means, free memory, cores, installed versions, and a Dask client.
torch is imported only by the functions that need it.
"""
from __future__ import annotations

import os
import platform
import sys

from pipeline.errors import PipelineError


def resolve_device(device: str = "auto"):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device: the one parser every stage uses."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise PipelineError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PipelineError(f"--device {device}: no CUDA device is visible to torch here; use --device cpu "
                                f"or auto")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise PipelineError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are "
                                f"visible (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device(device)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device) -> str:
    """The processor or GPU by name, for a torch.device or its string ('cpu', 'cuda:0')."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_label() -> str:
    """The processor as a figure should name it: its name, its widest vector unit, the cores this process has
    ('AMD EPYC with AVX-512-bf16, 2 cores'), since a name such as 'AMD EPYC' alone spans several generations."""
    flags = _cpu_flags()
    isa = next((name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512-bf16"),
                                        ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    return f"{cpu_name()}{f' with {isa}' if isa else ''}, {cores()} cores"


def auto_precision(device, half: bool) -> str:
    """What precision `auto` means on `device` (a torch.device): bf16 where the hardware has it; else, on a
    GPU, fp16 when `half` (inference: no loss scaler needed), fp32 otherwise."""
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16" if half else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_MODULES = {"scikit-learn": "sklearn", "umap-learn": "umap", "openTSNE": "openTSNE", "numpy": "numpy",
            "torch": "torch", "torchvision": "torchvision", "openvino": "openvino", "skops": "skops",
            "matplotlib": "matplotlib"}  # distribution name -> module name


def versions(*packages: str) -> dict:
    """Python's version and each installed package's (by its distribution name); absent ones are left out.
    A package this process has imported says its own `__version__` (what ran, e.g. torch's CUDA build tag
    "2.5.1+cu124"); any other, its installed distribution's."""
    from importlib import metadata

    v = {"python": platform.python_version()}
    for pkg in packages:
        mod = sys.modules.get(_MODULES.get(pkg, pkg))
        own = getattr(mod, "__version__", None) if mod is not None else None
        if isinstance(own, str):
            v[pkg] = own
            continue
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return v


def dask_client(address: str):
    """A client of the Dask scheduler at `address`, or one line saying why not."""
    try:
        from distributed import Client
    except ImportError:
        raise PipelineError("--dask needs Dask's scheduler: `pip install distributed` (or pipeline's extra: "
                            "`pip install 'transfer-workbench[dask]'`)") from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:
        raise PipelineError(f"--dask {address}: cannot reach the Dask scheduler ({e})") from None
