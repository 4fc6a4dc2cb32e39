"""Errors a user can act on. Each message names the file or setting and what to do."""


class TLError(Exception):
    """Base class: the CLI prints the message and exits with code 2, pages show st.error."""


class DatasetError(TLError):
    """The images given cannot make a usable dataset."""


class WeightsUnavailable(TLError):
    """Pretrained weights are neither cached nor downloadable."""


class SpecError(TLError):
    """A run specification names an unknown backbone, strategy or an invalid value."""


class NotFound(TLError):
    """A project, dataset or run id that the workspace does not hold."""


class RunNotReady(TLError):
    """The run has not completed, so it has no model yet."""


class WorkspaceDamaged(TLError):
    """The workspace index cannot be used as it is; `doctor --repair` rebuilds it."""

    def __init__(self, message: str, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class WorkspaceReadOnly(TLError):
    """Something had to be written to a workspace that cannot be written."""


class ModelDamaged(TLError):
    """A completed run's saved model file cannot be read: cut short, overwritten or corrupt."""
