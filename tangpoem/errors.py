"""The one error type users see: bad input, shown as a single line and exit status 2."""


class InputError(Exception):
    """A problem with something the user gave us (a file, a record, a config value).

    The message is one line that names the file, record or key and what is wrong;
    the CLI prints it without a traceback and exits with status 2.
    """

    exit_code = 2
