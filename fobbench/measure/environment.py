"""The environment every result row records, and what ``fobbench info`` prints.

GPU facts come from NVML (``pynvml``); a machine without a driver or device yields
``"no CUDA device"`` instead of an error.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import fobbench

NO_CUDA = "no CUDA device"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it."""

    name: str
    total_memory_bytes: int
    driver: str
    cuda_driver: str


def gpu_info() -> list[GpuInfo]:
    """All NVML-visible GPUs; an empty list when there is no driver or no device."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no driver or no device: all mean "no GPU"
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda_version = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda_text = f"{cuda_version // 1000}.{(cuda_version % 1000) // 10}"
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_memory_bytes=int(memory.total),
                    driver=driver.decode() if isinstance(driver, bytes) else str(driver),
                    cuda_driver=cuda_text,
                )
            )
        return gpus
    except Exception:  # noqa: BLE001 - a half-working driver is reported as "no GPU", not a crash
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(short commit, dirty flag) of the checkout fobbench runs from; ("", False) outside one."""
    root = Path(fobbench.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(status.strip())


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict[str, str]:
    """Provenance columns for result rows (all strings, CSV-ready).

    Args:
        device: ``"cpu"`` or ``"cuda"``: the device the measurement ran on; ``device_name``
            names the CPU model or the GPU accordingly.
    """
    import torch

    commit, dirty = git_state()
    gpus = gpu_info()
    if device.startswith("cuda") and gpus:
        device_name = gpus[0].name
    elif device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = cpu_model()
    return {
        "fobbench_version": fobbench.__version__,
        "git_commit": commit,
        "git_dirty": str(dirty).lower() if commit else "",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "device_name": device_name,
        "threads": str(torch.get_num_threads()),
        "cuda": torch.version.cuda or "",
        "driver": gpus[0].driver if gpus else "",
        "host": socket.gethostname(),
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def describe() -> list[tuple[str, str]]:
    """(label, value) lines for ``fobbench info``."""
    import torch

    commit, dirty = git_state()
    lines = [
        ("fobbench", fobbench.__version__),
        ("git commit", f"{commit}{' (dirty)' if dirty else ''}" if commit else "not a git checkout"),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("cpu", cpu_model()),
        ("cpu threads", str(torch.get_num_threads())),
        ("cpu cores", str(os.cpu_count())),
    ]
    gpus = gpu_info()
    if not gpus:
        lines.append(("cuda", NO_CUDA))
    for index, gpu in enumerate(gpus):
        lines.append((f"cuda:{index}", gpu.name))
        lines.append((f"cuda:{index} memory", f"{gpu.total_memory_bytes / 2**30:.1f} GiB"))
        lines.append((f"cuda:{index} driver", f"{gpu.driver} (CUDA {gpu.cuda_driver})"))
    if gpus:
        lines.append(("torch cuda build", torch.version.cuda or "none (CPU-only torch)"))
    return lines
