"""LDAEEncoder: the Latent Diffusion Autoencoder as a scikit-learn transformer."""

import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import DataLoader, Subset, TensorDataset

from ._documentation import DocumentationLinkMixin
from .autoencoder.network import build_autoencoder
from .diffusion.schedule import NoiseSchedule
from .diffusion.unet import build_latent_unet, check_latent_shape
from .exceptions import CheckpointError, InputError, OutOfDistributionWarning
from .generation import GenerativeMixin
from .imaging import Preprocessing, as_volume_dataset, model_preprocessing
from .imaging.inputs import SKIPPED_COLUMNS
from .presets import ModelConfig, resolve_config
from .representation.training_distribution import TrainingDistribution
from .representation.gradient_estimator import GradientEstimator
from .representation.semantic_encoder import (LatentSemanticEncoder, SliceSemanticEncoder,
                                              calibrate_code_statistics)
from .training import distributed
from .training.checkpoint import StageCheckpoints, load_checkpoint, save_checkpoint
from .training.device import autocast, resolve_device, resolve_precision
from .training.latents import latent_array, scale_in_place, standard_deviation
from .training.loop import train_stage
from .training.stages import (
    as_volume_batch,
    autoencoder_stage,
    diffusion_stage,
    encode_latents,
    mean_volume,
    representation_stage,
)

NETWORKS = ("autoencoder_", "unet_", "semantic_encoder_", "estimator_")
FILE_FORMAT = "ldae.LDAEEncoder"
FILE_VERSION = 2


class LDAEEncoder(DocumentationLinkMixin, GenerativeMixin, ClassNamePrefixFeaturesOutMixin,
                  TransformerMixin, BaseEstimator):
    """Latent Diffusion Autoencoder (Lozupone et al. 2025) as a scikit-learn transformer.

    ``fit`` trains three stages without labels: a 3D AutoencoderKL that compresses
    each scan to a latent, an unconditional DDPM in that latent space, and a semantic
    encoder with a gradient estimator trained with the PDAE objective so that the
    embedding steers the diffusion. ``transform`` returns the semantic embedding of
    each scan: a (n_scans, embedding_dim) array for linear probes, clustering,
    longitudinal models, ...

    Every parameter left at ``None`` takes the value of ``preset``
    (see :mod:`ldae.presets`).

    Parameters
    ----------
    preset : {"tiny", "small", "paper"}, default="small"
        Architecture and training budget. "tiny" is for tests, "small" trains on a
        CPU in minutes, "paper" is the published architecture (for GPUs).
    image_shape : tuple of 3 int, optional
        Shape (D, H, W) of the model grid every scan is resampled into.
    field_of_view : tuple of 3 float, optional
        Extent (mm) of the model grid along x, y and z, centred on the MNI brain
        (:func:`ldae.imaging.grid.grid_affine`); the voxel size is
        ``field_of_view / image_shape``. Every preset spans 176 x 220 x 176 mm:
        5.5 mm voxels for "tiny" and "small", 1.375 mm for "paper".
    embedding_dim : int, optional
        Size of the semantic embedding.
    semantic_encoder : {"latent", "slice"}, optional
        "latent": a 3D CNN over the stage-1 latent (cheap). "slice": the paper's 2.5D
        encoder, a 2D CNN over every axial slice with attention read-out.
    code_decorrelation : float, optional
        Weight of the stage-3 penalty on correlated embedding dimensions
        (:func:`ldae.representation.code_correlation_penalty`); 0 trains the plain
        PDAE objective.
    code_timesteps : int, optional
        Stage 3 trains the code and the gradient estimator on the diffusion
        timesteps t < code_timesteps, and the estimator shifts the denoiser there
        only; 1000 (the paper, every preset) is every timestep. A lower bound is
        an ablation: with it the code cannot move what a DDIM trajectory fixes at
        high noise, such as ventricle size (docs/benchmarks.md).
    encoder_warmup_fraction : float, optional
        Fraction of the stage-3 epochs, at their start, during which the semantic
        encoder keeps its initial weights and only the gradient estimator trains,
        learning to read the code before the encoder starts following its gradient.
    encoder_input_noise : float, optional
        SD of the Gaussian noise added to what the semantic encoder reads in each
        stage-3 training step (the scaled latent, SD about 1, for the "latent"
        encoder); 0 (the paper, every preset) adds none. Not applied by ``transform``.
        An ablation: 0.25 on ``small`` cost ROC-AUC and age MAE (docs/benchmarks.md).
    ae_template : bool, optional
        True: stage 1 codes each scan's deviation from the mean training scan (kept
        with the weights), so the latent spends its values on what differs between
        scans; False: the paper's plain AutoencoderKL.
    lr_schedule : {"constant", "cosine"}, optional
        Learning rate of every stage over its steps: constant (the paper), or a
        short warm-up then a cosine decay to 0, which ends a fixed budget converged.
    ae_channels, unet_channels : tuple of int, optional
        Channels per level of the autoencoder and of the latent denoiser.
    latent_channels : int, optional
        Channels of the autoencoder's latent.
    ae_epochs, diffusion_epochs, representation_epochs : int, optional
        Epochs of each stage.
    batch_size : int, optional
        Scans (or latents) per optimisation step of stages 2 and 3, and per
        inference batch.
    ae_batch_size : int, optional
        Scans per optimisation step of stage 1.
    ae_lr, diffusion_lr, representation_lr : float, optional
        Adam learning rates of each stage.
    ddim_steps : int, optional
        DDIM steps of the generative methods.
    adversarial_weight : float, optional
        Weight of the LSGAN PatchGAN term of stage 1 (0 disables it).
    preprocessing : ldae.imaging.Preprocessing, optional
        How files and arrays become volumes (resampling, intensity scaling, mask).
        Default: every scan resampled from its own affine into the model grid
        (``image_shape`` voxels over ``field_of_view``, MNI-aligned; anti-aliased
        when the scan has finer voxels), percentile scaling to [0, 1]. Arrays
        without an affine are taken to lie on the model grid.
    validation_fraction : float, default=0.2
        Fraction of subjects held out to report a validation loss per epoch; only
        used when ``groups`` are passed to ``fit``. Held-out scans are not trained on.
    checkpoint_dir : str or Path, optional
        Folder where each stage writes its weights when it completes (and every 10
        epochs). A new ``fit`` with the same settings and data resumes from there.
    cache_dir : str or Path, optional
        Folder caching preprocessed volumes of files between passes.
    on_error : {"raise", "skip"}, default="raise"
        What an unusable scan (unreadable, corrupt, NaN voxels, wrong grid...)
        does. "raise": an InputError naming it. "skip": a SkippedScanWarning
        naming it; ``fit`` reads every scan once first and trains on the usable
        ones (listed in ``skipped_scans_``), ``transform`` gives a row of NaN for
        each unusable scan, keeping rows aligned with X.
    device : str, default="auto"
        "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    precision : {"auto", "bf16", "fp32"}, default="auto"
        "auto": bfloat16 autocast on GPUs; on CPUs with native bf16 (AVX-512 BF16,
        AMX), bfloat16 for the training steps and the autoencoder's encoding of scans
        in transform, float32 for the semantic encoder, the DDIM steps and decoding;
        float32 on other CPUs. On every device, fit caches the latents its diffusion
        and representation stages train on in float32 (trained on bf16 latents, the
        embedding separated AD from CN less well).
    num_workers : int, default=0
        DataLoader worker processes that load and preprocess scans.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and diffusion noise. On the CPU, the same
        integer gives the same embeddings.
    verbose : int, default=0
        1 or more shows a progress bar with the running loss for each stage.

    Attributes
    ----------
    config_ : ModelConfig
        The resolved settings.
    preprocessing_ : Preprocessing
    affine_ : ndarray of shape (4, 4)
        World (MNI mm) affine of the model grid; every output image carries it, so
        reconstructions and generated scans overlay on the inputs in any viewer.
    scale_factor_ : float
        1 / std of the training latents (``z0 = scale_factor_ * latent``).
    autoencoder_, unet_, semantic_encoder_, estimator_ : torch.nn.Module
        The trained networks (the EMA weights for the last three).
    history_ : dict
        Per stage, ``{"loss": [...], "val_loss": [...]}`` one value per epoch; stage 3
        (``"representation"``) also has ``"val_loss_shuffled_codes"``, the validation
        loss on the same noise with the code of another scan of the batch: its ratio
        to ``"val_loss"`` is how much the code steers the denoiser on held-out subjects
        (both for the weights being trained, which the EMA weights kept at the end follow).
    fit_seconds_ : dict
        Wall time of each stage.
    training_device_ : str
        Where and in what precision the stages trained, e.g. ``"cpu, bf16"`` (a
        stage that fell back to fp32 says so in a warning).
    n_scans_ : int
        Number of scans trained on.
    training_distribution_ : ldae.representation.TrainingDistribution or None
        Robust summary of the training scans' embeddings: :meth:`transform` warns
        (:class:`~ldae.exceptions.OutOfDistributionWarning`) about scans whose
        embedding lies far from them (None for model files written before it).
    skipped_scans_ : pandas.DataFrame
        Scans of X left out of ``fit`` with ``on_error="skip"``: ``position`` in
        X, ``scan`` (its name) and ``error``. Empty when none was.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> from ldae import LDAEEncoder
    >>> model = make_pipeline(LDAEEncoder(preset="tiny", random_state=0), LogisticRegression())
    """

    def __init__(
        self,
        *,
        preset="small",
        image_shape=None,
        field_of_view=None,
        embedding_dim=None,
        semantic_encoder=None,
        code_decorrelation=None,
        code_timesteps=None,
        encoder_warmup_fraction=None,
        encoder_input_noise=None,
        ae_template=None,
        lr_schedule=None,
        ae_channels=None,
        latent_channels=None,
        unet_channels=None,
        ae_epochs=None,
        diffusion_epochs=None,
        representation_epochs=None,
        batch_size=None,
        ae_batch_size=None,
        ae_lr=None,
        diffusion_lr=None,
        representation_lr=None,
        ddim_steps=None,
        adversarial_weight=None,
        preprocessing=None,
        validation_fraction=0.2,
        checkpoint_dir=None,
        cache_dir=None,
        on_error="raise",
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=0,
    ):
        self.preset = preset
        self.image_shape = image_shape
        self.field_of_view = field_of_view
        self.embedding_dim = embedding_dim
        self.semantic_encoder = semantic_encoder
        self.code_decorrelation = code_decorrelation
        self.code_timesteps = code_timesteps
        self.encoder_warmup_fraction = encoder_warmup_fraction
        self.encoder_input_noise = encoder_input_noise
        self.ae_template = ae_template
        self.lr_schedule = lr_schedule
        self.ae_channels = ae_channels
        self.latent_channels = latent_channels
        self.unet_channels = unet_channels
        self.ae_epochs = ae_epochs
        self.diffusion_epochs = diffusion_epochs
        self.representation_epochs = representation_epochs
        self.batch_size = batch_size
        self.ae_batch_size = ae_batch_size
        self.ae_lr = ae_lr
        self.diffusion_lr = diffusion_lr
        self.representation_lr = representation_lr
        self.ddim_steps = ddim_steps
        self.adversarial_weight = adversarial_weight
        self.preprocessing = preprocessing
        self.validation_fraction = validation_fraction
        self.checkpoint_dir = checkpoint_dir
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    # requested by default: meta-estimators with metadata routing pass the subjects
    __metadata_request__fit = {"groups": True}

    # ------------------------------------------------------------------ fit

    def fit(self, X, y=None, groups=None):
        """Train the three stages on the scans ``X``.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans: NIfTI files, images, or an array (n, D, H, W) / (n, 1, D, H, W).
        y : ignored
            Present for pipeline compatibility; training uses no labels.
        groups : array-like of shape (n_scans,), optional
            Subject of each scan. When given, ``validation_fraction`` of the subjects
            is held out to report a validation loss.

        Returns
        -------
        self : LDAEEncoder

        Notes
        -----
        Launched by ``torchrun --nproc_per_node=N`` (one or several machines), fit
        trains data-parallel (see :mod:`ldae.training.distributed`): each process
        takes ``batch_size`` scans per step from its share of the data, gradients are
        averaged over the processes (NCCL on GPUs, gloo on CPUs), and process 0
        writes the checkpoints, which must be in a folder every process sees.
        """
        config = self._resolve_config()
        self._check_runtime_params()
        preprocessing = model_preprocessing(self.preprocessing, config.image_shape,
                                            config.grid_affine)
        dataset, groups = self._usable_scans(X, groups, preprocessing)
        device = resolve_device(self.device)
        parallel = distributed.start(device)  # a torchrun launch: data-parallel training
        device = device if parallel is None else parallel.device
        dtype = resolve_precision(self.precision, device, "training")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        train_index, val_index = self._split(len(dataset), groups, seed)
        checkpoints = self._checkpoints(config, preprocessing, dataset, seed, train_index)

        self.config_ = config
        self.preprocessing_ = preprocessing
        self.affine_ = np.asarray(dataset.affine, dtype=float)
        self.history_, self.fit_seconds_ = {}, {}
        self.training_device_ = f"{device.type}, {'bf16' if dtype == torch.bfloat16 else 'fp32'}"
        self.skipped_scans_ = dataset.skipped_
        with torch.random.fork_rng(devices=[]):
            self._fit_stages(dataset, train_index, val_index, device, dtype, seed, checkpoints)
        self.n_scans_ = len(train_index)
        self._n_features_out = config.embedding_dim
        distributed.stop(parallel)
        return self

    def _usable_scans(self, X, groups, preprocessing):
        """The dataset of X and the subject of each of its scans; with
        ``on_error="skip"``, every scan is read once and the unusable ones left out."""
        dataset = as_volume_dataset(X, preprocessing, cache_dir=self.cache_dir,
                                    on_error=self.on_error)
        if self.on_error == "skip":
            dataset = dataset.screen(num_workers=self.num_workers)
            if groups is not None and len(groups) == dataset.n_inputs:
                groups = np.asarray(groups)[dataset.positions]
        return dataset, groups

    def _fit_stages(self, dataset, train_index, val_index, device, dtype, seed, checkpoints):
        config = self.config_
        schedule = NoiseSchedule()
        loaders = _LoaderFactory(config.batch_size, self.num_workers, seed)

        torch.manual_seed(seed)
        autoencoder = _build_autoencoder(config).to(device)
        train_loader = loaders.volumes(dataset, train_index, config.ae_batch_size)
        if config.ae_template:
            autoencoder.set_template(mean_volume(loaders.in_order(Subset(dataset, train_index)),
                                                 device))
        self._run_stage(
            {"autoencoder": autoencoder},
            lambda: autoencoder_stage(autoencoder, config, device, dtype,
                                      steps_per_epoch=len(train_loader)),
            train_loader, loaders.volumes(dataset, val_index, config.ae_batch_size), checkpoints,
            device, seed,
        )
        with latent_array((len(dataset), *config.latent_shape), self.cache_dir) as z0:
            encode_latents(autoencoder, loaders.in_order(dataset), device,
                           resolve_precision(self.precision, device, "caching"), out=z0)
            self.scale_factor_ = 1.0 / standard_deviation(z0, train_index)
            scale_in_place(z0, self.scale_factor_)
            self._fit_latent_stages(z0, dataset, train_index, val_index, device, dtype, seed,
                                    checkpoints, loaders, schedule)
            self.autoencoder_ = _frozen(autoencoder)
            self.training_distribution_ = TrainingDistribution.of(
                self._embed_scans(z0, dataset, train_index))

    def _embed_scans(self, z0, dataset, index):
        """Embeddings (float32) of the scans ``index`` of ``dataset`` whose scaled latents
        are ``z0``: a latent encoder reads ``z0``, so the autoencoder does not run again."""
        if self.config_.semantic_encoder != "latent":
            return torch.cat(list(self._batches(Subset(dataset, index), self._embed_batch))).numpy()
        return self._embed_latents(z0, index).numpy()

    @torch.no_grad()
    def _embed_latents(self, z0, index):
        """Embeddings (CPU, float32) of the latents ``z0[index]`` for a latent semantic
        encoder, a batch at a time (``z0`` may be a memory-mapped cache)."""
        device = next(self.semantic_encoder_.parameters()).device
        size = self.config_.batch_size * 2
        with autocast(device, resolve_precision(self.precision, device, "embedding")):
            return torch.cat([
                self.semantic_encoder_(z0[torch.as_tensor(index[start:start + size])].to(device))
                .float().cpu() for start in range(0, len(index), size)])

    def _fit_latent_stages(self, z0, dataset, train_index, val_index, device, dtype, seed,
                           checkpoints, loaders, schedule):
        """Stages 2 and 3 on the scaled latents ``z0`` of every scan."""
        config = self.config_
        torch.manual_seed(seed + 1)
        unet = _build_unet(config).to(device)
        train_loader = loaders.tensors(z0, train_index)
        self._run_stage(
            {"unet": unet},
            lambda: diffusion_stage(unet, schedule, config, device, dtype,
                                    steps_per_epoch=len(train_loader)),
            train_loader, loaders.tensors(z0, val_index), checkpoints, device, seed,
        )

        torch.manual_seed(seed + 2)
        semantic_encoder = _build_semantic_encoder(config).to(device)
        estimator = GradientEstimator(unet, config.embedding_dim, config.code_timesteps).to(device)
        image_input = config.semantic_encoder == "slice"
        train_loader = loaders.pairs(z0, dataset, train_index, image_input)
        self._run_stage(
            {"semantic_encoder": semantic_encoder, "estimator": estimator},
            lambda: representation_stage(unet, estimator, semantic_encoder, schedule, config,
                                         device, dtype, steps_per_epoch=len(train_loader)),
            train_loader, loaders.pairs(z0, dataset, val_index, image_input),
            checkpoints, device, seed,
        )
        degenerate = calibrate_code_statistics(semantic_encoder, _encoder_inputs(
            z0, dataset, train_index, image_input, config.batch_size, device))
        if degenerate:
            warnings.warn(
                f"{degenerate} of {config.embedding_dim} embedding dimensions barely vary "
                "across the training scans (identical or near-identical scans?); they are "
                "scaled by the codes' overall size, not by their ~0 spread, and carry no "
                "information",
                UserWarning, stacklevel=3)
        self.unet_ = _frozen(unet)
        self.semantic_encoder_ = _frozen(semantic_encoder)
        self.estimator_ = _frozen(estimator)

    def _run_stage(self, networks, make_stage, train_loader, val_loader, checkpoints, device, seed):
        """Train one stage, or load it when a checkpoint of this fit completed it.

        Afterwards ``networks`` hold the weights used downstream (EMA weights for the
        networks the stage averages).
        """
        stage = make_stage()
        if stage.epochs == 0:
            # initial weights, which the seed gives again: nothing to resume, and a fit's
            # checkpoint of this stage stays for the fit (its untrained control shares the folder)
            checkpoints = None
        completed = checkpoints.load(stage.name) if checkpoints is not None else None
        if completed is not None:
            for key, network in networks.items():
                network.load_state_dict(completed["weights"][key])
            self.history_[stage.name] = completed["history"]
            self.fit_seconds_[stage.name] = completed["seconds"]
            return
        start = time.perf_counter()
        distributed.broadcast_parameters(networks.values())
        generator = torch.Generator(device=device).manual_seed(
            seed + len(self.history_) + 7919 * distributed.rank())
        history = train_stage(stage, train_loader, val_loader, generator=generator,
                              checkpoints=checkpoints, verbose=self.verbose)
        for key, average in stage.averages.items():
            networks[key].load_state_dict(average.module.state_dict())
        self.history_[stage.name] = history
        self.fit_seconds_[stage.name] = time.perf_counter() - start
        if checkpoints is not None:
            weights = {key: network.state_dict() for key, network in networks.items()}
            checkpoints.save(stage.name, {"weights": weights, "history": history,
                                          "seconds": self.fit_seconds_[stage.name]})

    # ------------------------------------------------------------ transform

    def transform(self, X):
        """Semantic embedding of each scan.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Same kinds as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_scans, embedding_dim), float32
            With ``on_error="skip"``, a row of NaN for each unusable scan.
        """
        check_is_fitted(self)
        dataset = self._dataset(X)
        embeddings = self._embed_dataset(dataset)
        self._warn_out_of_distribution(embeddings, dataset)
        return embeddings

    def _warn_out_of_distribution(self, embeddings, dataset):
        distribution = self.training_distribution_
        outside = [] if distribution is None else np.flatnonzero(distribution.outside(embeddings))
        if len(outside) == 0:
            return
        name_of_row = dict(zip(dataset.positions, dataset.names))
        named = ", ".join(name_of_row[row] for row in outside[:5])
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        warnings.warn(
            f"{len(outside)} of {len(embeddings)} scans have embeddings far outside those of the "
            f"scans the model was fitted on (robust distance > {distribution.threshold:.2f}; see "
            f"ldae.representation.TrainingDistribution): {named}{more}. Check their "
            "registration, contrast and preprocessing before trusting their embeddings",
            OutOfDistributionWarning, stacklevel=3)

    def encode_latent(self, X):
        """Stage-1 latent z0 of each scan: the autoencoder's posterior mean, scaled.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray

        Returns
        -------
        ndarray of shape (n_scans, C, d, h, w), float32
            ``scale_factor_ * mean``: the space the diffusion model works in.
            With ``on_error="skip"``, NaN for each unusable scan.
        """
        check_is_fitted(self)
        dataset = self._dataset(X)
        return _rows_of_inputs(torch.cat(list(self._batches(dataset, self._latent_batch))), dataset)

    def _dataset(self, X):
        # every scan is checked against the grid the model was trained on
        return as_volume_dataset(X, self.preprocessing_, cache_dir=self.cache_dir,
                                 on_error=self.on_error,
                                 reference=(self.config_.image_shape, self.affine_))

    def _embed_dataset(self, dataset):
        return _rows_of_inputs(torch.cat(list(self._batches(dataset, self._embed_batch))), dataset)

    @torch.no_grad()
    def _batches(self, dataset, compute):
        """Apply ``compute(volumes)`` to batches of the dataset on the model's device."""
        device = next(self.autoencoder_.parameters()).device
        dtype = resolve_precision(self.precision, device, "embedding")
        loader = DataLoader(dataset, batch_size=self.config_.batch_size * 2,
                            num_workers=self.num_workers)
        for batch in loader:
            # Unusable scans come as NaN volumes (on_error="skip"): NaN results.
            unusable = batch.flatten(1).isnan().any(1)
            if unusable.any():
                batch = batch.nan_to_num()
            with autocast(device, dtype):
                result = compute(as_volume_batch(batch, device)).float().cpu()
            result[unusable] = float("nan")
            yield result

    def _latent_batch(self, volumes):
        with autocast(volumes.device, resolve_precision(self.precision, volumes.device,
                                                        "encoding")):
            mean, _ = self.autoencoder_.encode(volumes)
        return mean.float() * self.scale_factor_

    def _decode_latent(self, z):
        """Inverse of ``_latent_batch``: volumes (B, 1, D, H, W) of diffusion latents."""
        with autocast(z.device, resolve_precision(self.precision, z.device, "sampling")):
            return self.autoencoder_.decode(z / self.scale_factor_)

    def _embed_batch(self, volumes):
        if self.config_.semantic_encoder == "latent":
            return self.semantic_encoder_(self._latent_batch(volumes))
        return self.semantic_encoder_(volumes)

    # ---------------------------------------------------------- persistence

    def save(self, path):
        """Write the fitted model to ``path`` (atomically) in a format whose loading
        executes no code: tensors and plain Python values only.

        Parameters
        ----------
        path : str or Path
        """
        check_is_fitted(self)
        save_checkpoint(
            {
                "format": FILE_FORMAT,
                "version": FILE_VERSION,
                "params": _plain_params(self.get_params()),
                "preprocessing": self.preprocessing_.to_dict(),
                "fitted": self._fitted_values(),
                "weights": self._cpu_weights(),
            },
            path,
        )

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; weights land on the CPU.

        Parameters
        ----------
        path : str or Path

        Returns
        -------
        LDAEEncoder
        """
        payload = load_checkpoint(path)
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise CheckpointError(f"{path} is not a model saved by LDAEEncoder.save")
        missing = [key for key in _MODEL_FILE_KEYS if key not in payload]
        if missing or not isinstance(payload["version"], int):
            raise CheckpointError(f"{path} is an incomplete model file (missing or invalid: "
                                  f"{', '.join(missing) or 'version'})")
        if payload["version"] > FILE_VERSION:
            raise CheckpointError(
                f"{path} was written by a newer ldae (file version {payload['version']})")
        if payload["version"] < FILE_VERSION:
            raise CheckpointError(
                f"{path} was written by an older ldae (file version {payload['version']}) whose "
                "networks this version cannot run (its gradient estimator read the code "
                "differently); fit the model again")
        try:
            model = cls(**payload["params"])
            if model.preprocessing is None or isinstance(model.preprocessing, dict):
                model.preprocessing = None
            model.preprocessing_ = Preprocessing.from_dict(payload["preprocessing"])
            fitted = dict(payload["fitted"])
            config = fitted.pop("config")
            # older files: G_psi trained on every timestep, stage 1 at batch_size
            config = {"code_timesteps": 1000, "ae_batch_size": config.get("batch_size"), **config}
            model.config_ = ModelConfig(**{key: tuple(value) if isinstance(value, list) else value
                                           for key, value in config.items()})
            model.affine_ = np.asarray(fitted.pop("affine"), dtype=float)
        except (TypeError, KeyError, ValueError, InputError) as error:
            raise CheckpointError(f"{path} holds settings this ldae cannot use "
                                  f"({type(error).__name__}: {error})") from None
        fitted.setdefault("training_device_", "not recorded")  # absent from older files
        distribution = fitted.pop("training_distribution_", None)
        model.training_distribution_ = (None if distribution is None
                                        else TrainingDistribution.from_dict(distribution))
        model.skipped_scans_ = pd.DataFrame(fitted.pop("skipped_scans_", {}),
                                            columns=SKIPPED_COLUMNS)
        model.__dict__.update(fitted)
        _check_weights_match(model.config_, payload["weights"], path)
        model._restore_networks(payload["weights"])
        return model

    def __getstate__(self):
        # object.__getstate__ may hand back the live __dict__: copy before editing
        state = dict(super().__getstate__())
        if all(name in state for name in NETWORKS):
            state["_weights"] = self._cpu_weights()
            for name in NETWORKS:
                del state[name]
        return state

    def __setstate__(self, state):
        weights = state.pop("_weights", None)
        super().__setstate__(state)
        if weights is not None:
            self._restore_networks(weights)

    def _fitted_values(self):
        return {
            "config": self.config_.to_dict(),
            "affine": self.affine_.tolist(),
            "scale_factor_": self.scale_factor_,
            "history_": self.history_,
            "fit_seconds_": self.fit_seconds_,
            "training_device_": self.training_device_,
            "n_scans_": self.n_scans_,
            "training_distribution_": (None if self.training_distribution_ is None
                                       else self.training_distribution_.to_dict()),
            "skipped_scans_": self.skipped_scans_.to_dict("list"),
            "_n_features_out": self._n_features_out,
        }

    def _cpu_weights(self):
        return {name: {key: value.detach().cpu() for key, value in getattr(self, name).state_dict().items()}
                for name in NETWORKS}

    def _restore_networks(self, weights):
        device = self._inference_device()
        autoencoder = _build_autoencoder(self.config_)
        unet = _build_unet(self.config_)
        semantic_encoder = _build_semantic_encoder(self.config_)
        autoencoder.load_state_dict(weights["autoencoder_"])
        unet.load_state_dict(weights["unet_"])
        semantic_encoder.load_state_dict(weights["semantic_encoder_"])
        estimator = GradientEstimator(unet, self.config_.embedding_dim,
                                      self.config_.code_timesteps)
        estimator.load_state_dict(weights["estimator_"])
        for name, network in zip(NETWORKS, (autoencoder, unet, semantic_encoder, estimator)):
            setattr(self, name, _frozen(network.to(device)))

    def _inference_device(self):
        """The device to restore weights on: the asked one when it exists, else the CPU."""
        wants_gpu = self.device == "auto" or str(self.device).startswith("cuda")
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")

    # ------------------------------------------------------------- helpers

    def __sklearn_is_fitted__(self):
        return all(hasattr(self, name) for name in NETWORKS)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = self.random_state is None
        return tags

    def _resolve_config(self):
        return resolve_config(
            self.preset,
            image_shape=self.image_shape,
            field_of_view=self.field_of_view,
            embedding_dim=self.embedding_dim,
            semantic_encoder=self.semantic_encoder,
            code_decorrelation=self.code_decorrelation,
            code_timesteps=self.code_timesteps,
            encoder_warmup_fraction=self.encoder_warmup_fraction,
            encoder_input_noise=self.encoder_input_noise,
            ae_template=self.ae_template,
            lr_schedule=self.lr_schedule,
            ae_channels=self.ae_channels,
            latent_channels=self.latent_channels,
            unet_channels=self.unet_channels,
            ae_epochs=self.ae_epochs,
            diffusion_epochs=self.diffusion_epochs,
            representation_epochs=self.representation_epochs,
            batch_size=self.batch_size,
            ae_batch_size=self.ae_batch_size,
            ae_lr=self.ae_lr,
            diffusion_lr=self.diffusion_lr,
            representation_lr=self.representation_lr,
            ddim_steps=self.ddim_steps,
            adversarial_weight=self.adversarial_weight,
        )

    def _check_runtime_params(self):
        if not 0 <= self.validation_fraction < 1:
            raise InputError(f"validation_fraction={self.validation_fraction} must be in [0, 1)")
        if int(self.num_workers) != self.num_workers or self.num_workers < 0:
            raise InputError(f"num_workers={self.num_workers} must be a non-negative integer")


    def _split(self, n_scans, groups, seed):
        """Indices of the training and validation scans (validation: whole subjects)."""
        everything = np.arange(n_scans)
        if groups is None or self.validation_fraction == 0:
            return everything, None
        groups = np.asarray(groups)
        if groups.shape != (n_scans,):
            raise InputError(f"groups has shape {groups.shape}; expected one subject per scan ({n_scans},)")
        if len(np.unique(groups)) < 2:
            warnings.warn("groups holds a single subject: no validation loss is reported", stacklevel=3)
            return everything, None
        splitter = GroupShuffleSplit(n_splits=1, test_size=self.validation_fraction,
                                     random_state=seed)
        train_index, val_index = next(splitter.split(everything, groups=groups))
        return np.sort(train_index), np.sort(val_index)

    def _checkpoints(self, config, preprocessing, dataset, seed, train_index):
        if self.checkpoint_dir is None:
            return None
        settings = {
            "config": config.to_dict(),
            "preprocessing": preprocessing.to_dict(),
            "seed": seed,
            "train_index": train_index.tolist(),
            "data": dataset.fingerprint(),
        }
        # A stage's checkpoint depends only on the settings of that stage and the
        # ones before it: a fit that changes stage 3 (the untrained-encoder control
        # with representation_epochs=0, say) reuses stages 1 and 2.
        config = settings.pop("config")
        fingerprints = {
            stage: {**settings, **{key: value for key, value in config.items()
                                   if key not in later_settings and key not in _INFERENCE_SETTINGS}}
            for stage, later_settings in _LATER_STAGE_SETTINGS.items()}
        return StageCheckpoints(self.checkpoint_dir, fingerprints)


_MODEL_FILE_KEYS = ("version", "params", "preprocessing", "fitted", "weights")


def _check_weights_match(config, weights, path):
    """Refuse weights that do not fit the networks the config describes, before
    allocating them (built on the meta device: a crafted config cannot exhaust memory)."""
    with torch.device("meta"):
        unet = _build_unet(config)
        expected = {"autoencoder_": _build_autoencoder(config), "unet_": unet,
                    "semantic_encoder_": _build_semantic_encoder(config),
                    "estimator_": GradientEstimator(unet, config.embedding_dim)}
    for name, network in expected.items():
        given = weights.get(name) if isinstance(weights, dict) else None
        shapes = {key: tuple(value.shape) for key, value in network.state_dict().items()}
        if not isinstance(given, dict) or shapes != {
                key: tuple(getattr(value, "shape", ())) for key, value in given.items()}:
            raise CheckpointError(f"{path}: its {name.rstrip('_')} weights do not match the "
                                  "networks its configuration describes; the file was altered")


_INFERENCE_SETTINGS = ("ddim_steps",)
_REPRESENTATION_SETTINGS = ("semantic_encoder", "encoder_channels", "embedding_dim",
                            "code_decorrelation", "code_timesteps", "encoder_warmup_fraction",
                            "encoder_input_noise", "representation_epochs", "representation_lr")
_DIFFUSION_SETTINGS = ("unet_channels", "unet_res_blocks", "unet_attention", "unet_head_channels",
                       "unet_norm_groups", "diffusion_epochs", "diffusion_lr", "ema_decay")
_LATER_STAGE_SETTINGS = {"autoencoder": _DIFFUSION_SETTINGS + _REPRESENTATION_SETTINGS,
                         "diffusion": _REPRESENTATION_SETTINGS,
                         "representation": ()}


class _LoaderFactory:
    """DataLoaders of volumes, latents or (latent, volume) pairs with seeded shuffling."""

    def __init__(self, batch_size, num_workers, seed):
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def _loader(self, dataset, shuffle, batch_size=None):
        generator = torch.Generator().manual_seed(self.seed)
        # Data-parallel: each process shuffles its own share of the scans.
        sampler = distributed.sampler(dataset, self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size or self.batch_size,
                          shuffle=shuffle and sampler is None, sampler=sampler,
                          generator=generator, num_workers=self.num_workers)

    def volumes(self, dataset, index, batch_size):
        if index is None:
            return None
        return self._loader(Subset(dataset, index.tolist()), shuffle=True, batch_size=batch_size)

    def in_order(self, dataset):
        return self._loader(dataset, shuffle=False)

    def tensors(self, tensor, index):
        if index is None:
            return None
        # A Subset reads rows on demand: no copy of a (possibly file-backed) tensor.
        return self._loader(Subset(TensorDataset(tensor), index.tolist()), shuffle=True)

    def pairs(self, latents, dataset, index, image_input):
        if index is None:
            return None
        if not image_input:
            return self.tensors(latents, index)
        return self._loader(_LatentVolumePairs(latents, dataset, index), shuffle=True)


class _LatentVolumePairs(torch.utils.data.Dataset):
    """(z0, volume) of the scans at ``index``: the inputs of an image-space encoder."""

    def __init__(self, latents, dataset, index):
        self.latents, self.dataset, self.index = latents, dataset, index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, position):
        item = int(self.index[position])
        return self.latents[item], torch.as_tensor(self.dataset[item])


def _encoder_inputs(latents, dataset, index, image_input, batch_size, device):
    """Batches of what the semantic encoder reads for the scans at ``index``, in order."""
    for first in range(0, len(index), batch_size):
        chunk = index[first:first + batch_size]
        if image_input:
            volumes = torch.stack([torch.as_tensor(dataset[int(item)]) for item in chunk])
            yield as_volume_batch(volumes, device)
        else:
            yield latents[torch.as_tensor(chunk)].to(device)


def _build_autoencoder(config):
    return build_autoencoder(channels=config.ae_channels, num_res_blocks=config.ae_res_blocks,
                             latent_channels=config.latent_channels,
                             norm_num_groups=config.ae_norm_groups,
                             template_shape=config.image_shape if config.ae_template else None)


def _build_unet(config):
    check_latent_shape(config.latent_shape[1:], config.unet_channels)
    return build_latent_unet(latent_channels=config.latent_channels, channels=config.unet_channels,
                             num_res_blocks=config.unet_res_blocks,
                             attention_levels=config.unet_attention,
                             num_head_channels=config.unet_head_channels,
                             norm_num_groups=config.unet_norm_groups)


def _build_semantic_encoder(config):
    if config.semantic_encoder == "latent":
        return LatentSemanticEncoder(latent_channels=config.latent_channels,
                                     channels=config.encoder_channels,
                                     embedding_dim=config.embedding_dim)
    return SliceSemanticEncoder(embedding_dim=config.embedding_dim, channels=config.encoder_channels)


def _rows_of_inputs(results, dataset):
    """Results of a dataset's scans as an array with one row per scan of its X:
    NaN rows where scans were left out."""
    if dataset.n_inputs == len(dataset):
        return results.numpy()
    rows = np.full((dataset.n_inputs, *results.shape[1:]), np.nan, np.float32)
    rows[dataset.positions] = results.numpy()
    return rows


def _frozen(network):
    return network.eval().requires_grad_(False)


def _plain_params(params):
    """get_params() with values a weights-only checkpoint can hold."""
    plain = {}
    for key, value in params.items():
        if key == "preprocessing" or key == "random_state" and not (value is None or isinstance(value, int)):
            plain[key] = None
        elif value is None or isinstance(value, (bool, int, float, str, list, tuple)):
            plain[key] = value
        else:
            plain[key] = str(value)
    return plain
