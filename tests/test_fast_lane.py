"""The fast lane stays fast: every test that starts a subprocess is marked `slow`.

`python3 -m pytest -q -m "not slow" tests` leaves out the tests marked slow (pytest.ini). This checks,
statically, that a test starting a process cannot slip into the fast lane: a test function that uses
`subprocess` or `sys.executable`, directly, through a helper function, or through a fixture (its own
file's, conftest's, or one imported from another test file), must carry `@pytest.mark.slow` or sit in a
file whose `pytestmark` holds it. Tests that train in-process are marked by their measured time instead
(`--durations`), which no static rule can see.
"""

import ast
import glob
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO_ROOT, "tests")


def _is_slow_mark(node):
    """pytest.mark.slow (also inside a list)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(_is_slow_mark(n) for n in node.elts)
    return (isinstance(node, ast.Attribute) and node.attr == "slow" and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark")


def _starts_process_itself(function):
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id == "subprocess":
            return True
        if (isinstance(node, ast.Attribute) and node.attr == "executable" and isinstance(node.value, ast.Name)
                and node.value.id == "sys"):
            return True
    return False


class _Module:
    def __init__(self, path, source=None):
        self.name = os.path.splitext(os.path.basename(path))[0]
        if source is None:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        tree = ast.parse(source, filename=path)
        self.file_slow = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                                                  for t in node.targets)
                             and _is_slow_mark(node.value) for node in tree.body)
        self.functions = {node.name: node for node in tree.body
                          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.imported = {}             # local name -> (module name, name there), from test modules only
        for node in ast.walk(tree):    # function-level imports too
            if isinstance(node, ast.ImportFrom) and node.module and not node.level and (
                    node.module.startswith("test_") or node.module == "conftest"):
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)


def _uses(function):
    """Names a function calls or takes as fixtures."""
    names = {arg.arg for arg in function.args.args}
    names |= {node.func.id for node in ast.walk(function)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return names


def unmarked_process_tests(modules):
    """[module::test] of tests that reach a subprocess but are not marked slow. `modules` maps a module
    name to its _Module; conftest's fixtures are visible to every module."""
    memo = {}

    def reaches(module_name, function_name, stack=()):
        key = (module_name, function_name)
        if key in memo:
            return memo[key]
        if key in stack:
            return False
        module = modules.get(module_name)
        if module is None:
            return False
        function = module.functions.get(function_name)
        if function is None:
            if function_name in module.imported:
                return reaches(*module.imported[function_name], stack + (key,))
            return module_name != "conftest" and reaches("conftest", function_name, stack + (key,))
        result = _starts_process_itself(function) or any(
            reaches(module_name, used, stack + (key,)) for used in _uses(function) if used != function_name)
        memo[key] = result
        return result

    found = []
    for module in modules.values():
        if module.file_slow or not module.name.startswith("test_"):
            continue
        for name, function in module.functions.items():
            if not name.startswith("test"):
                continue
            marked = any(_is_slow_mark(d) for d in function.decorator_list)
            if not marked and reaches(module.name, name):
                found.append(f"{module.name}::{name}")
    return sorted(found)


def _project_modules():
    paths = glob.glob(os.path.join(TESTS, "test_*.py")) + [os.path.join(TESTS, "conftest.py")]
    return {m.name: m for m in map(_Module, paths)}


def test_every_test_that_starts_a_process_is_marked_slow():
    found = unmarked_process_tests(_project_modules())
    assert not found, "mark these @pytest.mark.slow (they start a process):\n" + "\n".join(found)


def test_the_rule_can_fail():
    helper = _Module("test_helper.py", "import subprocess, sys\n"
                                       "def run_it():\n    return subprocess.run([sys.executable])\n")
    case = _Module("test_case.py", "\n".join([
        "import pytest",
        "from test_helper import run_it",
        "@pytest.fixture",
        "def started():",
        "    return run_it()",
        "def test_direct():",
        "    import sys; return sys.executable",
        "def test_through_fixture(started):",
        "    pass",
        "def test_through_helper():",
        "    run_it()",
        "@pytest.mark.slow",
        "def test_marked():",
        "    run_it()",
        "def test_pure():",
        "    assert 1 + 1 == 2",
    ]))
    modules = {"test_helper": helper, "test_case": case, "conftest": _Module("conftest.py", "")}
    assert unmarked_process_tests(modules) == [
        "test_case::test_direct", "test_case::test_through_fixture", "test_case::test_through_helper"]
    whole_file = _Module("test_whole.py", "import pytest, subprocess\npytestmark = pytest.mark.slow\n"
                                          "def test_a():\n    subprocess.run(['true'])\n")
    assert unmarked_process_tests({"test_whole": whole_file, "conftest": modules["conftest"]}) == []
