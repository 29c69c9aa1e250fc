"""The docs name only scripts, modules and flags that exist.

Every `python3 X.py …` and `python3 -m M …` command of README.md and docs/*.md (in code blocks, with
`\\` continuation lines joined, and in inline code spans of the prose) is checked:

- the script or module exists (a project file, or for `-m` an importable module: pip, pytest, …);
- for a project script or module, every `--flag` it names is defined: by an absl `DEFINE_*` call
  (`DEFINE_bool`/`DEFINE_boolean` also give `--noname`; `DEFINE_alias` gives its alias) in the file or
  in any project module it imports, transitively, module-level and function-level imports alike; or by
  absl itself (`--helpfull`, `--flagfile`, `--verbosity`/`-v`, `--logtostderr`, … read from absl's own
  FlagValues, not a hand-written list);
- `python3 -m pytest` arguments that are paths must exist; other tools' flags are not checked.

The static parse is fast; `test_docs_flags_in_helpfull` (slow) asks every script's `--helpfull`, so the
parser cannot drift from what absl really accepts.
"""

import ast
import concurrent.futures
import functools
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`([^`]+)`")
_SEPARATORS = {"&&", "||", "|", ";", "&", ";;"}
_BOOL_DEFINES = {"DEFINE_bool", "DEFINE_boolean"}
# A project module imported by a script: the first part of its dotted name is a folder here holding
# Python files (a package, or a namespace package such as tests/).
_PROJECT_PACKAGES = {name for name in os.listdir(REPO_ROOT) if not name.startswith(".")
                     and glob.glob(os.path.join(REPO_ROOT, name, "**", "*.py"), recursive=True)}


def doc_files():
    return [os.path.join(REPO_ROOT, "README.md")] + sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))


# --- Commands out of Markdown ------------------------------------------------------------------------

def _code_snippets(text):
    """(line number, text) pieces that may hold commands: each line of a fenced block (continuation
    lines ending in a backslash joined to the next), and each inline code span of a prose paragraph
    (a span may run over a line break)."""
    snippets = []
    lines = text.split("\n")
    in_fence, paragraph, paragraph_start, pending, pending_start = False, [], 0, "", 0

    def flush_paragraph():
        joined = " ".join(paragraph)
        starts = [0]                   # offset in `joined` where each paragraph line starts
        for part in paragraph[:-1]:
            starts.append(starts[-1] + len(part) + 1)
        for match in _INLINE_CODE.finditer(joined):
            line = paragraph_start + sum(1 for start in starts[1:] if start <= match.start())
            snippets.append((line, match.group(1)))
        paragraph.clear()

    for number, line in enumerate(lines, start=1):
        if _FENCE.match(line):
            flush_paragraph()
            in_fence = not in_fence
            continue
        if in_fence:
            if not pending:
                pending_start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            snippets.append((pending_start, pending + line))
            pending = ""
        elif line.strip():
            if not paragraph:
                paragraph_start = number
            paragraph.append(line.strip())
        else:
            flush_paragraph()
    flush_paragraph()
    return snippets


def _tokens(snippet):
    lexer = shlex.shlex(snippet, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:                 # an unbalanced quote in prose: keep what splits on spaces
        return snippet.split()


def commands_in(text):
    """[(line, kind, target, args)] for every python3 command of Markdown `text`; kind is "script"
    (target a path like train_ssd.py) or "module" (target a dotted name); args stop at `&&`, `|`, `;`
    or a comment."""
    commands = []
    for line, snippet in _code_snippets(text):
        if "python3" not in snippet:
            continue
        tokens = _tokens(snippet)
        for i, token in enumerate(tokens):
            if token != "python3" or i + 1 >= len(tokens):
                continue
            rest = tokens[i + 1:]
            if rest[0] == "-m" and len(rest) > 1:
                kind, target, args = "module", rest[1], rest[2:]
            elif rest[0].endswith(".py"):
                kind, target, args = "script", rest[0], rest[1:]
            else:
                continue
            for j, arg in enumerate(args):
                if arg in _SEPARATORS:
                    args = args[:j]
                    break
            commands.append((line, kind, target, args))
    return commands


def flags_named(args):
    """The flag names of a command line: `--name`, `--name=value`, `-v`; `-`, `--` and numbers are
    not flags."""
    names = []
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            names.append(arg[2:].split("=", 1)[0])
        elif arg.startswith("-") and len(arg) > 1 and not re.match(r"-[\d.]", arg):
            names.append(arg[1:].split("=", 1)[0])
    return names


# --- Flags out of Python sources ---------------------------------------------------------------------

def module_file(dotted):
    """The project file of a dotted module name, or None."""
    base = os.path.join(REPO_ROOT, *dotted.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _package_of(path):
    """The package a file belongs to, as a list of names (for pkg/mod.py and pkg/__init__.py: [pkg])."""
    return os.path.relpath(path, REPO_ROOT).split(os.sep)[:-1]


def _imported_files(path, tree):
    """Project files that importing `path` runs: every import anywhere in it (functions included),
    with the packages on the way (their __init__.py)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                package = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.append(base)
            names.extend(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    files = set()
    for name in names:
        parts = name.split(".")
        if not parts[0] in _PROJECT_PACKAGES and not (len(parts) == 1 and module_file(name)):
            continue
        for k in range(1, len(parts) + 1):
            found = module_file(".".join(parts[:k]))
            if found:
                files.add(found)
    return files


def _defined_in(tree):
    """Flag names defined by absl DEFINE_* calls in one parsed file."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        define = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if not define.startswith("DEFINE_"):
            continue
        name_node = node.args[0] if node.args else next(
            (k.value for k in node.keywords if k.arg == "name"), None)
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            continue                   # DEFINE_flag(obj) and computed names: left to the slow test
        names.add(name_node.value)
        if define in _BOOL_DEFINES:
            names.add("no" + name_node.value)
    return names


@functools.lru_cache(maxsize=None)
def _parsed(path):
    """(flags defined in the file, project files it imports), parsed once per file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    return frozenset(_defined_in(tree)), frozenset(_imported_files(path, tree))


def project_flags(path):
    """Every flag defined in `path` and in the project modules it imports, transitively."""
    seen, todo, names = set(), [path], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        defined, imported = _parsed(current)
        names |= defined
        todo.extend(imported - seen)
    return names


def absl_flags():
    """Flags absl itself gives every script (app's help and debugging flags, logging's, flagfile,
    undefok), with their short names and --no forms, read from absl."""
    from absl import app, flags, logging  # noqa: F401 -- importing defines logging's flags
    app.define_help_flags()
    names = set()
    absl_defined = [flag for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
                    if module.startswith("absl.") for flag in module_flags]
    special = getattr(flags._helpers, "SPECIAL_FLAGS", None)  # flagfile, undefok
    if special is not None:
        absl_defined += [special[name] for name in special]
    for flag in absl_defined:
        names.add(flag.name)
        if flag.short_name:
            names.add(flag.short_name)
        if flag.boolean:
            names.add("no" + flag.name)
    assert {"helpfull", "flagfile", "verbosity", "v", "logtostderr", "nologtostderr"} <= names, names
    return names


# --- The checks --------------------------------------------------------------------------------------

def target_file(kind, target):
    """The project file a command runs, or None. A placeholder such as `benchmarks.<name>` stands for
    any existing file of that pattern."""
    if "<" in target:
        pattern = re.sub(r"<[^>]*>", "*", target)
        pattern = pattern if kind == "script" else pattern.replace(".", os.sep) + ".py"
        found = sorted(glob.glob(os.path.join(REPO_ROOT, pattern)))
        return found[0] if found else None
    if kind == "script":
        path = os.path.join(REPO_ROOT, target)
        return path if os.path.isfile(path) else None
    found = module_file(target)
    if found and found.endswith("__init__.py"):
        main = os.path.join(os.path.dirname(found), "__main__.py")
        return main if os.path.isfile(main) else None
    return found


def problems_of(text, source="doc", absl_names=None):
    """One line per command that names a missing script or module, or an undefined flag."""
    absl_names = absl_flags() if absl_names is None else absl_names
    problems, cache = [], {}
    for line, kind, target, args in commands_in(text):
        where = f"{source}:{line}: python3 {'-m ' if kind == 'module' else ''}{target}"
        path = target_file(kind, target)
        if kind == "module" and target == "pytest":
            paths = [a.split("::")[0] for a in args if not a.startswith("-") and "/" in a or a == "tests"]
            problems += [f"{where}: no such test path {p}" for p in paths
                         if not os.path.exists(os.path.join(REPO_ROOT, p))]
            continue
        if path is None:
            if kind == "module" and target.split(".")[0] not in _PROJECT_PACKAGES:
                if importlib.util.find_spec(target) is None:
                    problems.append(f"{where}: no such module")
                continue               # another tool's module: its flags are its own
            problems.append(f"{where}: no such {kind}")
            continue
        if path not in cache:
            cache[path] = project_flags(path) | absl_names
        problems += [f"{where}: no flag --{name}" for name in flags_named(args) if name not in cache[path]]
    return problems


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_docs_commands_name_existing_scripts_and_flags():
    absl_names = absl_flags()
    problems = []
    for path in doc_files():
        problems += problems_of(_read(path), os.path.relpath(path, REPO_ROOT), absl_names)
    assert not problems, "\n".join(problems)


def test_docs_commands_are_found():
    """The extractor sees the commands (an empty list would pass the test above vacuously)."""
    commands = [c for path in doc_files() for c in commands_in(_read(path))]
    targets = {target for _, _, target, _ in commands}
    assert {"train_ssd.py", "eval_ssd.py", "convert_voc_sample_tfrecords.py", "pytest"} <= targets, targets
    assert len(commands) > 30, commands


def test_checker_fails_on_bad_lines():
    bad = "\n".join([
        "Train:",
        "",
        "```sh",
        "python3 train_ssd.py --model_dir logs/x \\",
        "    --no_such_flag 3   # a comment --not_a_flag",
        "python3 no_such_script.py --x",
        "python3 -m benchmarks.no_such_benchmark",
        "python3 -m no_such_package_anywhere",
        "python3 -m pytest -q tests/test_no_such_file.py",
        "```",
        "",
        "Prose `python3 eval_ssd.py --model_dir logs/sample",
        "--made_up_flag` over two lines, and `python3 eval_ssd.py --nowait_for_checkpoints --helpfull -v 1`.",
    ])
    problems = problems_of(bad, "bad.md")
    assert problems == [
        "bad.md:4: python3 train_ssd.py: no flag --no_such_flag",
        "bad.md:6: python3 no_such_script.py: no such script",
        "bad.md:7: python3 -m benchmarks.no_such_benchmark: no such module",
        "bad.md:8: python3 -m no_such_package_anywhere: no such module",
        "bad.md:9: python3 -m pytest: no such test path tests/test_no_such_file.py",
        "bad.md:12: python3 eval_ssd.py: no flag --made_up_flag",
    ], problems


def test_flags_found_through_imports():
    """train_ssd.py's flags include those of the modules it imports (engine/cli's --traceback, MLPerf
    mode's --mlperf defined inside a function) and the --no form of booleans."""
    names = project_flags(os.path.join(REPO_ROOT, "train_ssd.py"))
    assert {"model_dir", "traceback", "notraceback", "mlperf", "target_map", "nodeterministic"} <= names


def test_docs_have_no_machine_paths():
    pattern = re.compile(r"(?<![\w.~])/(home|root|work|Users|tmp/pytest|mnt/[a-z])/")
    found = [f"{os.path.relpath(p, REPO_ROOT)}:{n}: {line.strip()}"
             for p in doc_files() for n, line in enumerate(_read(p).split("\n"), start=1)
             if pattern.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_docs_flags_in_helpfull():
    """What absl really accepts: every flag the docs give a project script or module appears in its
    --helpfull."""
    wanted = {}
    for path in doc_files():
        for _, kind, target, args in commands_in(_read(path)):
            if "<" not in target and target_file(kind, target) and target != "pytest":
                wanted.setdefault((kind, target), set()).update(flags_named(args))
    missing = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def helpfull(kind, target):
        command = [sys.executable] + (["-m", target] if kind == "module" else [target]) + ["--helpfull"]
        run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        return command, run.stdout + run.stderr

    targets = sorted(wanted)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:   # each start is mostly imports
        helps = list(pool.map(lambda key: helpfull(*key), targets))
    for (kind, target), (command, text) in zip(targets, helps):
        names = wanted[(kind, target)]
        assert "--helpfull" in text, (command, text[-2000:])   # absl's help (its exit status is 1)
        shown = set()                  # from the definition lines only: "  -v,--verbosity: …", "  --[no]x: …"
        for short, no, name in re.findall(r"^\s+(?:-(\S),)?--(\[no\])?([\w.-]+):", text, re.M):
            shown |= {name} | ({short} if short else set()) | ({"no" + name} if no else set())
        missing += [f"{target}: --{name}" for name in sorted(names) if name not in shown]
    assert not missing, "\n".join(missing)


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run's command is the README's second command, character for character."""
    ci = [line for line in _read(os.path.join(REPO_ROOT, ".ci", "run")).split("\n")
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["python3 -m pip install -q -r requirements-test.txt && python3 -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests"], ci
    readme_lines = _read(os.path.join(REPO_ROOT, "README.md")).split("\n")
    assert ci[0] in readme_lines, "README.md lost .ci/run's command: " + ci[0]
