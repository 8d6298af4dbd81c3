"""ldae: Latent Diffusion Autoencoders for 3D brain MRI, as a scikit-learn transformer.

The data's path through the package::

    imaging/         paths, images or arrays -> validated, preprocessed volumes
    autoencoder/     stage 1: 3D AutoencoderKL, volume -> latent
    diffusion/       stage 2: noise schedule, latent denoising UNet, DDIM sampler
    representation/  stage 3: semantic encoder + gradient estimator (PDAE objective)
    encoder.py       LDAEEncoder, the scikit-learn transformer that trains all three
    stats.py, ...    analysis of the embeddings

Heavy modules (torch, MONAI) are imported only when first used.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["LDAEEncoder", "__version__"]


# Public submodules reachable as ``ldae.<name>`` after a bare ``import ldae``.
SUBMODULES = ("autoencoder", "baselines", "brain_age", "cohort_map", "datasets", "diffusion",
              "exceptions", "generation", "imaging", "imputation", "longitudinal", "metrics",
              "model_selection", "plotting", "presets", "probes", "quality_control",
              "representation", "retrieval", "site_effects", "stats", "training")


def __getattr__(name):
    if name == "LDAEEncoder":
        from .encoder import LDAEEncoder

        return LDAEEncoder
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ldae' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "LDAEEncoder", *SUBMODULES])
