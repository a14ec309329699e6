"""The one error type of inference: a problem with the user's input, worded for the user."""


class EnhanceError(Exception):
    """A problem with the user's input (checkpoint, option file, image, option value), naming it in one line."""
