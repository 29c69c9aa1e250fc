"""What every script shares at its edge: one line and a documented exit status for every ordinary mistake.

    from engine import cli
    ...
    def main(argv):
        ...
        return cli.EXIT_SKIPPED if skipped else cli.EXIT_OK

    if __name__ == "__main__":
        cli.run(main)

The exit statuses, the one table every script uses (by these names, never by their numbers):

    EXIT_OK          0   finished; every input was processed.
    EXIT_SKIPPED     3   finished, but some inputs were skipped, each named in the log (detect_ssd.py over
                         a folder with an unreadable image; the converters unless --allow_skips). Not 1,
                         which these scripts used before this table: 1 is Python's status after the
                         traceback of a bug, and a caller must tell "done, some skipped" from "crashed".
    EXIT_ERROR       2   a usage or input error: a wrong flag, an argument no flag takes, a missing or
                         malformed file; one line and nothing (more) written.
    EXIT_PREEMPTED  42   a preempted training run (SIGTERM to any worker) saved a checkpoint at a step
                         boundary and stopped: start it again to continue
                         (tf.distribute.experimental.PreemptionCheckpointHandler's default code).
    EXIT_WORKER_LOST 43   a multi-worker training run lost a worker (its collectives failed, or no step
                          finished within --stall_timeout_s) and stopped without saving: start every
                          worker again; it resumes from the last complete checkpoint.

A wrong flag (absl validators, run at parse time), an argument that no flag takes (the rest of an
unquoted glob: `--input photos/*.jpg` reaches the script as `--input photos/a.jpg photos/b.jpg ...`) and
an ordinary mistake found later (a missing file, a file that is no label map, a corrupted shard, a
checkpoint of another run; the project raises these as FileNotFoundError / ValueError / ... with a
message naming the file and what to do at the boundary where it is found) all end as ONE line on
stderr, `<script>: error: <message>`, and EXIT_ERROR, without a traceback (an error that carries an
`exit_status` attribute, engine.preemption.WorkerLost, ends with that status). `--traceback` shows the
full one (for bugs, not for mistakes). A script that takes positional arguments says so:
`cli.run(main, positionals=True)`.

Importing this module does not import TensorFlow, so `--help` of a script that imports TensorFlow
only inside `main` answers at once. Also the one place for paths that must not depend on the working
folder: DEFAULT_DATA_DIR is where the converter writes by default and where training reads.
"""

import os
import sys

from absl import app, flags

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(REPO_DIR, "dataset", "tfrecords")

EXIT_OK = 0
EXIT_SKIPPED = 3
EXIT_ERROR = 2
EXIT_PREEMPTED = 42
EXIT_WORKER_LOST = 43
# The table of the module docstring, for tests and for scripts that explain a status.
EXIT_CODES = {
    "EXIT_OK": (EXIT_OK, "finished; every input was processed"),
    "EXIT_SKIPPED": (EXIT_SKIPPED, "finished, but some inputs were skipped (each named in the log)"),
    "EXIT_ERROR": (EXIT_ERROR, "a usage or input error, told in one line"),
    "EXIT_PREEMPTED": (EXIT_PREEMPTED, "a preempted training run saved a checkpoint: start it again"),
    "EXIT_WORKER_LOST": (EXIT_WORKER_LOST, "a multi-worker run lost a worker: start every worker again"),
}
# Leftover arguments named in the error line; an expanded glob may be thousands.
_LISTED_ARGUMENTS = 5

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


def fail(message, script=None):
    """Print `message` as the one error line of `script` (default sys.argv[0]) and exit with EXIT_ERROR."""
    sys.stderr.write("%s: error: %s\n" % (os.path.basename(script or sys.argv[0]), message))
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
        fail("%s (see --helpfull)" % str(e).replace("\n", " "), argv[0])


def _flag_before(raw_argv, index):
    """(flag name, its value) of the flag that ends just before raw_argv[index], or (None, None)."""
    previous = raw_argv[index - 1] if index >= 2 else ""
    if previous.startswith("--") and "=" in previous:
        name, value = previous[2:].split("=", 1)
        return name, value
    before = raw_argv[index - 2] if index >= 3 else ""
    if before.startswith("-") and "=" not in before and not previous.startswith("-"):
        return before.lstrip("-"), previous
    return None, None


def leftover_arguments_message(raw_argv, leftovers):
    """The error line's message for arguments that no flag took: them (the first few), the flag they
    follow, and how to pass them: a quoted glob, one comma-separated value of a list flag, a quoted value."""
    listed = " ".join(leftovers[:_LISTED_ARGUMENTS])
    if len(leftovers) > _LISTED_ARGUMENTS:
        listed += " ... (%d in all)" % len(leftovers)
    message = "no flag takes the argument%s %s" % ("s" if len(leftovers) > 1 else "", listed)
    index = raw_argv.index(leftovers[0], 1) if leftovers[0] in raw_argv[1:] else 0
    name, value = _flag_before(raw_argv, index)
    if name is None or name not in flags.FLAGS:
        return message + ": quote a glob or a value with spaces so the shell passes it as one argument"
    message += " (after --%s %s)" % (name, value)
    flag = flags.FLAGS[name]
    if isinstance(flag.parser, flags.BaseListParser) or isinstance(flag, flags.MultiFlag):
        pattern = os.path.join(os.path.dirname(value), "*" + os.path.splitext(value)[1])
        items = [value] + list(leftovers[:2]) + (["..."] if len(leftovers) > 2 else [])
        form = ("--%s %s" % (name, ",".join(items)) if isinstance(flag.parser, flags.BaseListParser)
                else " ".join("--%s %s" % (name, item) for item in items[:2]) + " ...")
        return message + ": quote a glob so the shell passes it whole (--%s '%s'), or give the list as %s" % (
            name, pattern, form)
    return message + ": quote a value with spaces so the shell passes it as one argument (--%s '%s')" % (
        name, " ".join([value] + list(leftovers[:_LISTED_ARGUMENTS])))


def run(main, argv=None, positionals=False):
    """absl's app.run(main) with the edge of the module docstring: flag errors, arguments that no flag
    takes (unless `positionals`) and ordinary mistakes as one line and EXIT_ERROR; main's return value
    (an EXIT_* name, None for EXIT_OK) is the exit status. `argv`: sys.argv unless given (tests)."""
    raw_argv = list(sys.argv if argv is None else argv)

    def guarded(parsed_argv):
        if not positionals and len(parsed_argv) > 1:
            fail(leftover_arguments_message(raw_argv, parsed_argv[1:]), raw_argv[0])
        try:
            return main(parsed_argv)
        except _ordinary_errors() as e:
            if flags.FLAGS.traceback:
                raise
            sys.stderr.write(error_line(os.path.basename(raw_argv[0]), e) + "\n")
            sys.stderr.flush()
            sys.exit(getattr(e, "exit_status", EXIT_ERROR))
    app.run(guarded, argv=raw_argv, flags_parser=_parse_flags)


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
