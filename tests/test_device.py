import pytest
import torch

from ldae.exceptions import InputError
from ldae.training.device import resolve_precision


def test_auto_precision_is_fp32_even_on_cpus_with_native_bf16(monkeypatch):
    # bf16 rounding is the size of a code's spread across scans: not safe by default
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_unknown_precision_is_named():
    with pytest.raises(InputError, match="precision='fp16'"):
        resolve_precision("fp16", torch.device("cpu"))
