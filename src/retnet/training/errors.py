"""Errors from training set-up that the user can fix (bad corpus, preset, output folder, checkpoint)."""


class TrainError(ValueError):
    """A user-fixable training problem; the message names the file, folder or setting."""
