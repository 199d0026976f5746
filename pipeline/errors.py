"""The one error type the library raises for problems a user can fix."""


class PipelineError(Exception):
    """A problem with the user's input or environment, worded to be shown as one line."""
