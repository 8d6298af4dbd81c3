"""Training objective of the stage-1 autoencoder.

The paper's objective is L1 + 1e-7·KL + 0.025·LSGAN + 0.001·LPIPS. LPIPS needs
pretrained weights that cannot be downloaded here, so it is left out; the adversarial
term is optional (:class:`AdversarialTerm`).
"""

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn


def kl_divergence(mu, sigma):
    """KL(N(mu, sigma²) ‖ N(0, I)) summed over the latent, averaged over the batch.

    Parameters
    ----------
    mu, sigma : torch.Tensor
        Mean and standard deviation of the diagonal Gaussian posterior, shape (B, ...).

    Returns
    -------
    torch.Tensor
        float32 scalar.
    """
    mu, variance = mu.float(), sigma.float().square()
    per_element = mu.square() + variance - torch.log(variance) - 1.0
    return 0.5 * per_element.flatten(1).sum(dim=1).mean()


def autoencoder_loss(autoencoder, x, *, kl_weight=1e-7):
    """Reconstruction loss of an AutoencoderKL on a batch: L1(x̂, x) + kl_weight · KL.

    The reconstruction is decoded from one posterior sample, as in training.

    Parameters
    ----------
    autoencoder : monai.networks.nets.AutoencoderKL
        The network (see :func:`build_autoencoder`).
    x : torch.Tensor
        Volumes, shape (B, 1, D, H, W), intensities in [0, 1].
    kl_weight : float, default=1e-7
        Weight of the KL term.

    Returns
    -------
    loss : torch.Tensor
        float32 scalar.
    reconstruction : torch.Tensor
        x̂, shape of x, in the network's output dtype (feed it to :class:`AdversarialTerm`).
    """
    reconstruction, mu, sigma = autoencoder(x)
    l1 = F.l1_loss(reconstruction.float(), x.float())
    return l1 + kl_weight * kl_divergence(mu, sigma), reconstruction


class AdversarialTerm(nn.Module):
    """Least-squares PatchGAN term of the autoencoder objective.

    Holds a 3-layer 3D :class:`~monai.networks.nets.PatchDiscriminator`; train its
    parameters with their own optimiser, zeroing their gradients before each
    discriminator step (the generator loss also reaches them).

    Parameters
    ----------
    channels : int, default=32
        Width of the discriminator's first layer (doubled at each layer).
    weight : float, default=0.025
        Weight applied to both the generator and the discriminator loss.
    """

    def __init__(self, *, channels=32, weight=0.025):
        super().__init__()
        self.weight = weight
        self.discriminator = PatchDiscriminator(
            spatial_dims=3, num_layers_d=3, channels=channels, in_channels=1, out_channels=1
        )
        self.criterion = PatchAdversarialLoss(criterion="least_squares")

    def _logits(self, volume):
        return self.discriminator(volume.contiguous())[-1].float()

    def generator_loss(self, reconstruction):
        """Weighted loss that pushes the discriminator to call the reconstruction real.

        Parameters
        ----------
        reconstruction : torch.Tensor
            x̂, shape (B, 1, D, H, W), attached to the autoencoder's graph.

        Returns
        -------
        torch.Tensor
            float32 scalar, already multiplied by ``weight``.
        """
        logits = self._logits(reconstruction)
        return self.weight * self.criterion(logits, target_is_real=True, for_discriminator=False)

    def discriminator_loss(self, reconstruction, x):
        """Weighted discriminator loss on detached reconstructions (fake) and real volumes.

        Parameters
        ----------
        reconstruction : torch.Tensor
            x̂, shape (B, 1, D, H, W); detached here.
        x : torch.Tensor
            The real volumes, same shape.

        Returns
        -------
        torch.Tensor
            float32 scalar, the mean of the fake and real losses times ``weight``.
        """
        fake = self.criterion(self._logits(reconstruction.detach()), target_is_real=False, for_discriminator=True)
        real = self.criterion(self._logits(x), target_is_real=True, for_discriminator=True)
        return self.weight * 0.5 * (fake + real)
