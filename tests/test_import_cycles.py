"""No import circle inside a folder: the modules of each project folder import each other along a
directed acyclic graph, so each can be read (and loaded) after the ones it uses. nets/ had the last
circle (backbone_loader <-> torch_weights, issue 22); their shared rows now live in nets/weight_table.py.

Every import statement counts, also the ones inside functions (a lazy import is still a dependency),
as in tests/test_layering.py, which checks the arrows between folders.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("dataset", "model", "nets", "preprocessing", "metrics", "engine", "apps", "benchmarks")


def sibling_imports(source, package):
    """The modules of `package` (dotted, without the package) that a module of `package` imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name[len(package) + 1:] for a in node.names if a.name.startswith(package + "."))
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                continue   # a parent folder: the layering test's business
            module = node.module or ""
            if node.level == 0 and module == package or node.level == 1 and not module:
                found.update(a.name for a in node.names)          # from nets import a, b / from . import a
            elif node.level == 0 and module.startswith(package + "."):
                found.add(module[len(package) + 1:])              # from nets.a import x
            elif node.level == 1:
                found.add(module)                                 # from .a import x
    return found


def import_graph(root, package):
    """{module: modules of the same folder it imports} for every .py file under root/package."""
    folder = os.path.join(root, package)
    graph = {}
    for directory, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in ("sample", "__pycache__"))
        for file in sorted(f for f in files if f.endswith(".py")):
            relative = os.path.relpath(os.path.join(directory, file), folder)[:-len(".py")]
            name = relative.replace(os.sep, ".")
            name = name[:-len(".__init__")] if name.endswith(".__init__") else name
            with open(os.path.join(directory, file), encoding="utf-8") as f:
                graph[name] = sibling_imports(f.read(), package)
    return {module: {i for i in imports if i in graph and i != module} for module, imports in graph.items()}


def find_circle(graph):
    """One import circle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state, path = {}, []   # state: 1 = on the current path, 2 = done

    def visit(module):
        state[module], path[len(path):] = 1, [module]
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state:
                circle = visit(other)
                if circle:
                    return circle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module)
            if circle:
                return circle
    return None


@pytest.mark.parametrize("package", [p for p in FOLDERS if os.path.isdir(os.path.join(REPO, p))])
def test_no_folder_has_an_import_circle(package):
    graph = import_graph(REPO, package)
    assert graph, package
    assert find_circle(graph) is None


def test_nets_loaders_share_one_weight_table_module():
    graph = import_graph(REPO, "nets")
    assert graph["weight_table"] == set()   # the vocabulary imports no other nets/ module
    assert graph["torch_weights"] == {"resnet34", "vgg16", "weight_table"}
    assert graph["keras_mobilenet_v3"] == {"mobilenet_v3", "weight_table"}
    assert graph["backbone_loader"] == {"keras_mobilenet_v3", "mobilenet_v3", "torch_weights", "torchvision_ssdlite",
                                        "vgg16", "weight_table"}


@pytest.mark.parametrize("source, expected", [
    ("from nets import a, b\nimport numpy\n", {"a", "b"}),
    ("def f():\n    from nets.a import x\n", {"a"}),
    ("import nets.a.b as c\nfrom engine import training\n", {"a.b"}),
    ("from . import a\nfrom .b import x\nfrom .. import engine\n", {"a", "b"}),
])
def test_the_parser_sees_module_function_and_relative_imports(source, expected):
    assert sibling_imports(source, "nets") == expected


def test_the_checker_finds_a_made_up_circle(tmp_path):
    # The old shape of nets/: a lazy import back closes the circle; the check is not vacuous.
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "loader.py").write_text("from nets import weights, vgg\n")
    (tmp_path / "nets" / "weights.py").write_text("def load():\n    from nets import loader\n")
    (tmp_path / "nets" / "vgg.py").write_text("import numpy\n")
    assert find_circle(import_graph(str(tmp_path), "nets")) == ["loader", "weights", "loader"]
    (tmp_path / "nets" / "weights.py").write_text("from nets import vgg\n")
    assert find_circle(import_graph(str(tmp_path), "nets")) is None
