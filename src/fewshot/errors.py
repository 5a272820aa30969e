"""The one exception type users see: a single line naming the problem and a fix."""


class FewshotError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
