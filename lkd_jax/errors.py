"""SetupError: a problem with the user's input or files, shown as one actionable line (no traceback)."""


class SetupError(ValueError):
  """Bad config, missing or unreadable file, refused workdir: the message names the problem and the fix."""
