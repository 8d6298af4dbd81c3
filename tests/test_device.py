import copy

import numpy as np
import pytest
import torch
from _generative_model import STEPS, cohort, fitted_encoder
from _small import GRID, small_cohort

from ldae import LDAEEncoder
from ldae import encoder as encoder_module
from ldae.baselines import VoxelDAEEncoder, voxel_dae
from ldae.exceptions import InputError
from ldae.metrics import ssim
from ldae.training import device as device_module
from ldae.training.device import resolve_precision

CPU = torch.device("cpu")
# Tests that simulate a CPU with native bf16 run real bf16 arithmetic, which a CPU without
# it emulates 10-30x slower than fp32: they fit and sample on the 16^3 GRID.


def small_scans(n):
    return small_cohort(2).images[:n]


def small_model(**params):
    return LDAEEncoder(preset="tiny", image_shape=GRID, ae_epochs=1, diffusion_epochs=1,
                       representation_epochs=1, random_state=0, **params)


def small_voxel_dae():
    return VoxelDAEEncoder(preset="tiny", image_shape=GRID, epochs=1, random_state=0)


def dtype_recorder(seen):
    """``recorder(name)``: a forward hook adding each output's dtype to ``seen[name]``."""
    def recorder(name):
        def record(module, args, output):
            seen.setdefault(name, set()).add(output.dtype)
        return record
    return recorder


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_only_on_cpus_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU, "training") is (torch.bfloat16 if native else None)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_encodes_scans_in_bf16_where_native_and_the_rest_in_fp32(
        monkeypatch, native):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU, "encoding") is (torch.bfloat16 if native else None)
    for purpose in ("caching", "embedding", "sampling"):
        assert resolve_precision("auto", CPU, purpose) is None
        assert resolve_precision("bf16", CPU, purpose) is torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
def test_transform_encodes_in_bf16_and_embeds_in_fp32_on_a_native_bf16_cpu(monkeypatch, native):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: native)
    scans = small_scans(4)
    model = small_model().fit(scans)
    seen = {}

    def recorder(name):
        def record(module, args, output):
            seen[name] = output.dtype
        return record

    for name, network in (("autoencoder", model.autoencoder_.encoder),
                          ("semantic encoder", model.semantic_encoder_.features)):
        network.register_forward_hook(recorder(name))
    embeddings = model.transform(scans)
    assert seen == {"autoencoder": torch.bfloat16 if native else torch.float32,
                    "semantic encoder": torch.float32}
    assert embeddings.dtype == "float32"
    fp32 = model.set_params(precision="fp32").transform(scans)
    assert (embeddings == fp32).all() is not native


@pytest.mark.parametrize("purpose", ["training", "caching", "encoding", "embedding", "sampling"])
def test_explicit_precision_applies_to_training_and_inference(purpose):
    assert resolve_precision("bf16", CPU, purpose) is torch.bfloat16
    assert resolve_precision("fp32", CPU, purpose) is None


def test_unknown_precision_is_named():
    with pytest.raises(InputError, match="precision='fp16'"):
        resolve_precision("fp16", CPU, "embedding")
    with pytest.raises(ValueError, match="purpose='inference'"):
        resolve_precision("auto", CPU, "inference")


def test_fit_trains_in_bf16_and_caches_latents_in_fp32_on_a_native_bf16_cpu(monkeypatch):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: True)
    seen = {}

    def recording(name, function, position):
        def wrapper(*args, **kwargs):
            seen[name] = args[position]
            return function(*args, **kwargs)
        return wrapper

    for name, position in (("autoencoder_stage", 3), ("diffusion_stage", 4),
                           ("representation_stage", 6), ("encode_latents", 3)):
        monkeypatch.setattr(encoder_module, name,
                            recording(name, getattr(encoder_module, name), position))
    small_model().fit(small_scans(4))
    assert seen == {"autoencoder_stage": torch.bfloat16, "diffusion_stage": torch.bfloat16,
                    "representation_stage": torch.bfloat16, "encode_latents": None}


def test_baselines_train_with_the_training_precision(monkeypatch):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: True)
    seen = []
    original = voxel_dae.voxel_dae_stage

    def recording(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(voxel_dae, "voxel_dae_stage", recording)
    small_voxel_dae().fit(small_scans(4))
    assert seen == [torch.bfloat16]


def test_reconstruct_samples_in_fp32_under_auto_and_in_bf16_within_tolerance_of_it(monkeypatch):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: True)
    model = copy.deepcopy(fitted_encoder())
    scans = cohort().images[:1]  # one: without native bf16, bf16 sampling at 32x40x32 is slow
    seen = {}
    recorder = dtype_recorder(seen)

    model.unet_.out.register_forward_hook(recorder("denoiser"))
    model.autoencoder_.decoder.register_forward_hook(recorder("decoder"))
    fp32 = model.set_params(precision="auto").reconstruct(scans, steps=STEPS)
    assert seen == {"denoiser": {torch.float32}, "decoder": {torch.float32}}
    seen.clear()
    bf16 = model.set_params(precision="bf16").reconstruct(scans, steps=STEPS)
    assert seen == {"denoiser": {torch.bfloat16}, "decoder": {torch.bfloat16}}
    assert not np.array_equal(bf16, fp32)
    # the tolerance of benchmarks/bench_precision.py: the same reconstruction quality
    assert abs(ssim(bf16, scans).mean() - ssim(fp32, scans).mean()) < 0.005
    assert ssim(bf16, fp32).min() > 0.99


def test_the_voxel_dae_samples_at_the_sampling_precision(monkeypatch):
    monkeypatch.setattr(device_module, "has_native_bf16", lambda: True)
    scans = small_scans(2)
    model = small_voxel_dae().fit(scans)
    seen = {}
    recorder = dtype_recorder(seen)

    model.denoiser_.register_forward_hook(recorder("denoiser"))
    model.semantic_encoder_.register_forward_hook(recorder("semantic encoder"))
    model.reconstruct(scans, steps=2)
    assert seen == {"denoiser": {torch.float32}, "semantic encoder": {torch.float32}}
    seen.clear()
    model.set_params(precision="bf16").reconstruct(scans, steps=2)
    assert seen == {"denoiser": {torch.bfloat16}, "semantic encoder": {torch.bfloat16}}


def test_a_cpu_bf16_convolution_over_a_shallow_input_computes_in_fp32_and_its_gradient_is_right():
    # oneDNN's bf16 weight gradient of a 3x3x3 convolution over a depth of 2 is off by up
    # to 1e37 or NaN on CPUs with AVX-512 BF16: it made fits of the same random_state differ
    torch.manual_seed(0)
    shallow, deep = torch.nn.Conv3d(8, 8, 3, padding=1), torch.nn.Conv3d(8, 8, 3, padding=1)
    x, weights = torch.randn(2, 8, 2, 4, 4), torch.randn(2, 8, 2, 4, 4)
    (shallow(x) * weights).sum().backward()
    expected = shallow.weight.grad.clone()
    shallow.zero_grad()
    with device_module.autocast(CPU, torch.bfloat16):
        output = shallow(x)
        after = deep(torch.randn(2, 8, 4, 4, 4))  # autocast resumes after the shallow one
    (output * weights).sum().backward()
    assert output.dtype == torch.float32 and after.dtype == torch.bfloat16
    torch.testing.assert_close(shallow.weight.grad, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the guard left with its context
        assert deep(torch.randn(2, 8, 2, 4, 4)).dtype == torch.bfloat16


@pytest.mark.parametrize("kernel, depth, unsound", [(3, 2, True), (3, 1, False), (3, 3, False),
                                                    (5, 4, True), (1, 2, False)])
def test_shallow_convolutions_are_named_by_kernel_and_input_depth(kernel, depth, unsound):
    convolution = torch.nn.Conv3d(1, 1, kernel, padding=kernel // 2)
    volume = torch.zeros(1, 1, depth, 8, 8)
    assert device_module.is_unsound_cpu_bf16_convolution(convolution, volume) is unsound
