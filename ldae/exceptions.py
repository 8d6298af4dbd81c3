"""Exceptions raised by ldae.

Every error caused by what the user passed names the offending file or argument,
so that one bad scan among thousands can be found without a debugger.
"""


class LDAEError(Exception):
    """Base class of every error raised on purpose by ldae."""


class InputError(LDAEError, ValueError):
    """An input (a file, an image, an array, a table or an argument) is unusable.

    The message names the item (file path, argument name or position) and says
    what is wrong with it.
    """


class CheckpointError(LDAEError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


class SkippedScanWarning(UserWarning):
    """A scan was left out because it is unusable and ``on_error="skip"`` was asked for.

    The message names the scan and says what is wrong with it.
    """


class OutOfDistributionWarning(UserWarning):
    """Embeddings lie far from those of the scans the model was fitted on.

    The message counts and names the scans; see
    :class:`ldae.representation.TrainingDistribution` for the criterion.
    """
