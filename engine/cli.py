"""What every script shares at its edge: one line and a non-zero exit for every ordinary mistake.

    from engine import cli
    ...
    if __name__ == "__main__":
        cli.run(main)

A wrong flag (absl validators, run at parse time) and an ordinary mistake found later (a missing file,
a file that is no label map, a corrupted shard, a checkpoint of another run; the project raises these
as FileNotFoundError / ValueError / ... with a message naming the file and what to do at the boundary
where it is found) both end as ONE line on stderr, `<script>: error: <message>`, and exit status 2,
without a traceback. `--traceback` shows the full one (for bugs, not for mistakes).

Importing this module does not import TensorFlow, so `--help` of a script that imports TensorFlow
only inside `main` answers at once. Also the one place for paths that must not depend on the working
folder: DEFAULT_DATA_DIR is where the converter writes by default and where training reads.
"""

import os
import sys

from absl import app, flags

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(REPO_DIR, "dataset", "tfrecords")
EXIT_ERROR = 2

flags.DEFINE_bool("traceback", False, "On an error, show the Python traceback instead of one line.")

# Exceptions that are ordinary mistakes when they reach a script's main: raised with a message naming
# the file or value and what to do. (A bug raises these too; --traceback shows where.)
_ORDINARY = (app.UsageError, flags.Error, OSError, ValueError, FloatingPointError, AssertionError,
             KeyError)


def strip_function_node(message):
    """TensorFlow's message without the "{{function_node ...}} " that errors raised in a graph carry."""
    if message.startswith("{{function_node") and "}} " in message:
        return message.split("}} ", 1)[1]
    return message


def error_line(script, error):
    """`<script>: error: <first line of the message>`; TensorFlow's op context is dropped."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    message = strip_function_node(message)
    if isinstance(error, KeyError):
        message = "missing key %s" % message
    return "%s: error: %s" % (script, message)


def fail(message):
    """Print `message` as the one error line and exit with EXIT_ERROR."""
    sys.stderr.write("%s: error: %s\n" % (os.path.basename(sys.argv[0]), message))
    sys.stderr.flush()
    sys.exit(EXIT_ERROR)


def _ordinary_errors():
    errors = _ORDINARY
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # only when the script loaded it: importing it here would slow --help
        errors += (tf.errors.OpError,)
    return errors


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail("%s (see --helpfull)" % str(e).replace("\n", " "))


def run(main):
    """absl's app.run(main) with flag errors and ordinary mistakes as one line (module docstring)."""
    def guarded(argv):
        try:
            return main(argv)
        except _ordinary_errors() as e:
            if flags.FLAGS.traceback:
                raise
            sys.stderr.write(error_line(os.path.basename(sys.argv[0]), e) + "\n")
            sys.stderr.flush()
            sys.exit(EXIT_ERROR)
    app.run(guarded, flags_parser=_parse_flags)


def positive(name):
    """Validates that the flag `name` is > 0 (one line at parse time otherwise)."""
    flags.register_validator(name, lambda v: v is not None and v > 0,
                             message="--%s must be > 0" % name)


def list_of(name, convert, what):
    """Validates that every entry of the list flag `name` converts with `convert` (e.g. int)."""
    def check(values):
        for value in values or []:
            try:
                convert(value)
            except ValueError:
                raise flags.ValidationError("--%s: %r is not %s" % (name, value, what)) from None
        return True
    flags.register_validator(name, check)
