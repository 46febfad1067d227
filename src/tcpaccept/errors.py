"""The one exception type the command line turns into a one-line message and an exit code."""


class TcpacceptError(Exception):
    """A problem the user can act on; str() is the whole message, one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
