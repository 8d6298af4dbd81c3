"""A supervised reference encoder: LDAE's semantic encoder design trained on the labels.

The upper line of a probe table: how good an embedding of this design gets when it
is trained for the very target the probes read out. Being supervised, it must be
fitted inside each training fold (e.g. as the first step of a Pipeline) so that
test labels never shape the embedding.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target
from torch import nn

from ..exceptions import InputError
from ..representation import SliceSemanticEncoder
from ..training.device import autocast
from ..training.ema import exponential_moving_average
from ..training.loop import Stage, optimisation_step, train_stage
from ..training.stages import as_volume_batch
from ._base import VolumeEncoderBase, frozen

STAGE = "supervised"
TASKS = ("auto", "classification", "regression")


class _LabelledVolumes(torch.utils.data.Dataset):
    def __init__(self, volumes, targets):
        self.volumes, self.targets = volumes, targets

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, i):
        return torch.as_tensor(self.volumes[i]), self.targets[i]


def supervised_stage(semantic_encoder, head, task, config, device, dtype):
    """Training of the encoder and its prediction head on (volume, target) batches.

    Parameters
    ----------
    semantic_encoder : torch.nn.Module
    head : torch.nn.Linear
        From the embedding to the class logits or to the standardised target.
    task : {"classification", "regression"}
        Cross-entropy or mean squared error.
    config : BaselineConfig
    device : torch.device
    dtype : torch.dtype or None
        Autocast dtype.

    Returns
    -------
    Stage
        EMA of the encoder and of the head.
    """
    parameters = [*semantic_encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    encoder_average = exponential_moving_average(semantic_encoder, config.ema_decay)
    head_average = exponential_moving_average(head, config.ema_decay)

    def loss_of(batch):
        volumes, targets = as_volume_batch(batch[0], device), batch[1].to(device)
        with autocast(device, dtype):
            output = head(semantic_encoder(volumes)).float()
        if task == "classification":
            return F.cross_entropy(output, targets)
        return F.mse_loss(output[:, 0], targets)

    def step(batch, generator):
        semantic_encoder.train()
        loss = loss_of(batch)
        optimisation_step(loss, optimizer, parameters,
                          averages=[(encoder_average, semantic_encoder), (head_average, head)])
        return loss.item()

    def evaluate(batch, generator):
        semantic_encoder.eval()
        return loss_of(batch).item()

    state = {"semantic_encoder": semantic_encoder, "head": head, "optimizer": optimizer,
             "semantic_encoder_ema": encoder_average, "head_ema": head_average}
    return Stage(STAGE, step, evaluate, state, config.epochs,
                 averages={"semantic_encoder": encoder_average, "head": head_average})


class SupervisedEncoder(VolumeEncoderBase):
    """LDAE's 2.5D semantic encoder trained end to end on labels: a reference encoder.

    ``fit(X, y)`` trains the slice encoder with a linear head, by cross-entropy
    for class labels or by mean squared error on the standardised target for
    continuous ones. ``transform`` returns the penultimate layer: the embedding
    the head reads, the same kind of output as :meth:`ldae.LDAEEncoder.transform`,
    so that linear probes on it give the supervised upper line of a probe table.
    Fit it inside each training fold (in a Pipeline), never on the test scans.

    Every parameter left at ``None`` takes the value of ``preset`` (the grid,
    encoder widths, embedding size and batch size of LDAEEncoder's preset).

    Parameters
    ----------
    preset : {"tiny", "small", "paper"}, default="small"
    task : {"auto", "classification", "regression"}, default="auto"
        "auto": classification for binary or multiclass ``y``, regression for
        continuous ``y`` (scikit-learn's ``type_of_target``).
    image_shape : tuple of 3 int, optional
    embedding_dim : int, optional
    encoder_channels : tuple of int, optional
    epochs : int, optional
    batch_size : int, optional
    lr : float, optional
    preprocessing : ldae.imaging.Preprocessing, optional
    cache_dir : str or Path, optional
    device : str, default="auto"
    precision : {"auto", "bf16", "fp32"}, default="auto"
        As in :class:`~ldae.LDAEEncoder` (bf16 training on CPUs with native bf16).
    num_workers : int, default=0
    random_state : int, RandomState instance or None, default=None
        On the CPU, the same integer gives the same embeddings.
    verbose : int, default=0

    Attributes
    ----------
    config_ : BaselineConfig
    task_ : {"classification", "regression"}
    classes_ : ndarray
        The class labels (classification only).
    target_mean_, target_scale_ : float
        Standardisation of the target (regression only).
    semantic_encoder_, head_ : torch.nn.Module
        EMA weights of the trained networks.
    history_ : dict
        ``{"supervised": {"loss": [...], "val_loss": []}}``.
    fit_seconds_ : dict
    n_scans_ : int

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from ldae.baselines import SupervisedEncoder
    >>> model = make_pipeline(SupervisedEncoder(preset="tiny", random_state=0),
    ...                       LogisticRegression())
    """

    def __init__(self, *, preset="small", task="auto", image_shape=None, embedding_dim=None,
                 encoder_channels=None, epochs=None, batch_size=None, lr=None, preprocessing=None,
                 cache_dir=None, device="auto", precision="auto", num_workers=0,
                 random_state=None, verbose=0):
        self.preset = preset
        self.task = task
        self.image_shape = image_shape
        self.embedding_dim = embedding_dim
        self.encoder_channels = encoder_channels
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.preprocessing = preprocessing
        self.cache_dir = cache_dir
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    def _config_overrides(self):
        return dict(image_shape=self.image_shape, embedding_dim=self.embedding_dim,
                    encoder_channels=self.encoder_channels, epochs=self.epochs,
                    batch_size=self.batch_size, lr=self.lr)

    def fit(self, X, y):
        """Train the encoder and its head to predict ``y`` from the scans ``X``.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans: NIfTI files, images, or an array (n, D, H, W) / (n, 1, D, H, W).
        y : array-like of shape (n_scans,)
            Class labels or a continuous target, one per scan.

        Returns
        -------
        self : SupervisedEncoder
        """
        if self.task not in TASKS:
            raise InputError(f"task={self.task!r} is not one of {TASKS}")
        dataset, device, dtype, seed = self._start_fit(X)
        targets, n_outputs = self._encode_targets(y, len(dataset))
        config = self.config_
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            semantic_encoder = SliceSemanticEncoder(embedding_dim=config.embedding_dim,
                                                    channels=config.encoder_channels).to(device)
            head = nn.Linear(config.embedding_dim, n_outputs).to(device)
            stage = supervised_stage(semantic_encoder, head, self.task_, config, device, dtype)
            start = time.perf_counter()
            history = train_stage(stage, self._training_loader(_LabelledVolumes(dataset, targets), seed),
                                  None, generator=torch.Generator(device=device).manual_seed(seed),
                                  verbose=self.verbose)
            seconds = time.perf_counter() - start
        semantic_encoder.load_state_dict(stage.averages["semantic_encoder"].module.state_dict())
        head.load_state_dict(stage.averages["head"].module.state_dict())
        self.semantic_encoder_ = frozen(semantic_encoder)
        self.head_ = frozen(head)
        self.history_ = {STAGE: history}
        self.fit_seconds_ = {STAGE: seconds}
        self.n_scans_ = len(dataset)
        return self

    def _encode_targets(self, y, n_scans):
        """Training targets as a tensor, and the number of head outputs."""
        if y is None:
            raise InputError("y is required: SupervisedEncoder trains on labels")
        y = np.asarray(y)
        if y.shape != (n_scans,):
            raise InputError(f"y has shape {y.shape}; expected one label per scan ({n_scans},)")
        kind = type_of_target(y, input_name="y")
        task = self.task
        if task == "auto":
            task = "regression" if kind == "continuous" else "classification"
        self.task_ = task
        if task == "classification":
            encoder = LabelEncoder().fit(y)
            if len(encoder.classes_) < 2:
                raise InputError(f"y holds a single class ({encoder.classes_[0]!r}); "
                                 "classification needs at least two")
            self.classes_ = encoder.classes_
            return torch.as_tensor(encoder.transform(y), dtype=torch.long), len(encoder.classes_)
        values = y.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError("y holds NaN or infinite values")
        self.target_mean_ = float(values.mean())
        self.target_scale_ = float(values.std()) or 1.0
        standardised = (values - self.target_mean_) / self.target_scale_
        return torch.as_tensor(standardised, dtype=torch.float32), 1

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
