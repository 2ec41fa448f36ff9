"""``fobbench info`` with and without a GPU (the GPU path mocked at the NVML boundary only)."""

from __future__ import annotations

import sys
import types

import pytest
import torch


def test_info_without_gpu(cli, monkeypatch) -> None:
    def fail_init() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake = types.SimpleNamespace(nvmlInit=fail_init, nvmlShutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    code, out, err = cli("info")
    assert code == 0, err
    assert torch.__version__ in out
    assert "no CUDA device" in out
    assert "cpu threads" in out


def test_info_on_this_machine_reports_two_threads(cli) -> None:
    code, out, _ = cli("info")
    assert code == 0
    threads = [line for line in out.splitlines() if line.startswith("cpu threads")]
    assert threads and threads[0].split()[-1] == str(torch.get_num_threads())


class _Memory:
    total = 80 * 2**30


def test_info_with_mocked_nvml_gpu(cli, monkeypatch) -> None:
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlSystemGetCudaDriverVersion=lambda: 12040,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: ("handle", index),
        nvmlDeviceGetName=lambda handle: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda handle: _Memory(),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    code, out, err = cli("info")
    assert code == 0, err
    assert "NVIDIA H100 80GB HBM3" in out
    assert "80.0 GiB" in out
    assert "550.54.15" in out and "CUDA 12.4" in out
    assert "no CUDA device" not in out


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_environment_columns_are_strings(device: str, monkeypatch) -> None:
    from fobbench.measure.environment import environment

    env = environment(device)
    assert all(isinstance(v, str) for v in env.values())
    assert env["torch"] == torch.__version__ and env["device"] == device
