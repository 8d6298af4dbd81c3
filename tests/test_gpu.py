"""On a CUDA device: the three stages train there in bf16 where the GPU supports it,
inference and the generative tools run there, and a model fitted on the GPU embeds the
same scans alike on the CPU. Skipped, saying why, where no CUDA device is present."""

import copy
import pickle

import numpy as np
import pytest
import torch

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.training.device import PURPOSES, resolve_precision

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def scans():
    return make_synthetic_cohort(4, shape=(32, 40, 32), random_state=0).images


@pytest.fixture(scope="module")
def model(scans):
    return LDAEEncoder(preset="tiny", ae_epochs=2, diffusion_epochs=2, representation_epochs=2,
                       device="cuda", random_state=0).fit(scans)


def test_auto_precision_is_bf16_on_a_gpu_that_supports_it_but_for_the_latent_cache():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert all(resolve_precision("auto", CUDA, purpose) is expected
               for purpose in PURPOSES if purpose != "caching")
    assert resolve_precision("auto", CUDA, "caching") is None


def test_fit_trains_every_network_on_the_gpu(model):
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert model.training_device_ == f"cuda, {precision}"
    for network in (model.autoencoder_, model.unet_, model.semantic_encoder_, model.estimator_):
        assert next(network.parameters()).device.type == "cuda"
    assert all(np.isfinite(history["loss"]).all() for history in model.history_.values())


def test_a_gpu_model_embeds_alike_on_the_cpu(model, scans):
    fp32 = copy.deepcopy(model).set_params(precision="fp32")
    on_gpu = fp32.transform(scans)
    moved = copy.deepcopy(fp32).set_params(device="cpu")
    on_cpu = pickle.loads(pickle.dumps(moved))  # weights restored on the asked device
    assert next(on_cpu.unet_.parameters()).device.type == "cpu"
    difference = np.abs(on_cpu.transform(scans) - on_gpu).max() / on_gpu.std()
    # TF32 convolutions on the GPU: the tolerance of benchmarks/bench_precision.py
    assert difference < 0.05


def test_generative_tools_run_on_the_gpu(model, scans):
    reconstructions = model.reconstruct(scans[:2], steps=5)
    assert reconstructions.shape == scans[:2].shape and reconstructions.dtype == np.float32
    assert np.isfinite(reconstructions).all()
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1
    generated = model.generate(model.transform(scans[:1]), n_variations=2, random_state=0,
                               steps=5)
    assert np.isfinite(generated).all() and len(generated) == 1
