"""Error types for mistakes a user can fix. The CLI prints them as one line and exits with 2."""


class ThreatbenchError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class WeightsError(ThreatbenchError):
    """A weights file is missing, not safetensors, has the wrong hash or does not fit."""


class ArchitectureError(ThreatbenchError):
    """An unknown architecture name."""


class DefenseOutputError(ThreatbenchError):
    """A model's output is not (N, num_classes) or is not finite."""


class AttackBoundsError(AssertionError):
    """An attack left the eps ball or [0, 1]: a bug in the attack, never clipped away silently."""


class OutputPathError(ThreatbenchError):
    """A results path cannot be written."""


class RecordError(ThreatbenchError):
    """A result record or its examples file is invalid; the message names the file and field."""


class StatefulDefenseError(ThreatbenchError):
    """A defense answers the same input differently with or without gradients, in another batch or after
    other queries (benchmark.evaluation.checks); `check` names the check that refused it."""

    def __init__(self, message: str, check: str = ""):
        super().__init__(message)
        self.check = check
