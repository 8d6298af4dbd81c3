"""Stage 3: semantic encoders, the gradient estimator and the PDAE objective."""

from .training_distribution import TrainingDistribution
from .gradient_estimator import GradientEstimator, UNetFeatures, shifted_eps, unet_features, unet_head
from .pdae import code_correlation_penalty, code_steering, pdae_loss
from .semantic_encoder import (CodeStandardization, LatentSemanticEncoder, SliceSemanticEncoder,
                               calibrate_code_statistics)

__all__ = [
    "CodeStandardization",
    "GradientEstimator",
    "LatentSemanticEncoder",
    "SliceSemanticEncoder",
    "TrainingDistribution",
    "UNetFeatures",
    "calibrate_code_statistics",
    "code_correlation_penalty",
    "code_steering",
    "pdae_loss",
    "shifted_eps",
    "unet_features",
    "unet_head",
]
