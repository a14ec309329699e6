"""The one error type of the evaluation: a user's mistake, reported as one line naming the file or option."""


class EvaluationError(Exception):
    """Bad data path, label, baseline or metric name; the message names the option or file and what to do."""
