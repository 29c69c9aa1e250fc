"""The import arrows point one way (DESIGN.md "Folders and layers"): a module imports from its own
folder and from folders on lower floors only, and the three folders of floor 3 do not import each other.
engine/ is the run-time: no application library (OpenCV, Qt, matplotlib, MediaPipe) below apps/.

Every import statement counts, also the ones inside functions (a lazy import is still a dependency).
"""

import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = 5  # apps/, top-level scripts, benchmarks/
FLOORS = {"dataset": 1, "model": 2, "nets": 3, "preprocessing": 3, "metrics": 3, "engine": 4, "apps": TOP}
# Libraries of the applications (apps/: the video app's OpenCV and Qt, the doctors' plots), never imported
# on floors 1-4: the run-time needs only TensorFlow, PIL and the serving runtimes.
APPLICATION_LIBRARIES = {"cv2", "PySide6", "PyQt5", "PyQt6", "matplotlib", "mediapipe"}


def _floor(package):
    return FLOORS.get(package, TOP)


def _project_modules():
    """(path relative to the repo, its package or None for a top-level script) for every project module."""
    for name in sorted(os.listdir(REPO)):
        path = os.path.join(REPO, name)
        if name.endswith(".py"):
            yield name, None
        elif os.path.isdir(path) and name in set(FLOORS) | {"benchmarks"}:
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d not in ("sample", "__pycache__")]
                for file in sorted(files):
                    if file.endswith(".py"):
                        yield os.path.relpath(os.path.join(root, file), REPO), name


def imported_top_level(source):
    """Every top-level package a module's source imports (absolute imports only), project or not."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def imported_packages(source):
    """The top-level project packages a module's source imports (absolute imports only)."""
    return imported_top_level(source) & set(FLOORS)


def violations():
    bad = []
    for relpath, package in _project_modules():
        with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
            imported = imported_packages(f.read())
        floor = TOP if package is None else _floor(package)
        for other in sorted(imported - {package}):
            if _floor(other) > floor or (_floor(other) == floor and floor == 3):
                bad.append(f"{relpath} (floor {floor}) imports {other} (floor {_floor(other)})")
    return bad


def test_no_module_imports_upwards_or_across_floor_3():
    assert violations() == []


def application_imports():
    """`path imports library` for every module on floors 1-4 that imports an application library."""
    bad = []
    for relpath, package in _project_modules():
        if package is None or _floor(package) == TOP:
            continue
        with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
            for library in sorted(imported_top_level(f.read()) & APPLICATION_LIBRARIES):
                bad.append(f"{relpath} imports {library}")
    return bad


def test_only_apps_and_scripts_import_opencv_qt_or_matplotlib():
    assert application_imports() == []
    apps_modules = [p for p, package in _project_modules() if package == "apps"]
    assert "apps/video/viewer.py" in apps_modules and "apps/doctor/plots.py" in apps_modules


def test_the_checker_flags_an_application_library_in_the_run_time(tmp_path, monkeypatch):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "video.py").write_text("def f():\n    import cv2\n")
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "plots.py").write_text("import matplotlib.pyplot\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    assert application_imports() == ["engine/video.py imports cv2"]


def test_model_core_imports_nothing_above_dataset():
    model_modules = [p for p, package in _project_modules() if package == "model"]
    assert "model/anchors.py" in model_modules and "model/matcher.py" in model_modules
    for relpath in model_modules:
        with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
            assert imported_packages(f.read()) <= {"dataset", "model"}, relpath


@pytest.mark.parametrize("source, expected", [
    ("from engine import training\n", {"engine"}),
    ("def f():\n    from nets import ssd\n", {"nets"}),
    ("import model.presets as p\n", {"model"}),
    ("from . import sibling\nimport numpy\n", set()),
])
def test_the_import_parser_sees_module_and_function_level_imports(source, expected):
    assert imported_packages(source) == expected


def test_the_checker_flags_an_upward_import(tmp_path, monkeypatch):
    # A model/ module importing engine/ must be reported: the check is not vacuous.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.py").write_text("from engine import training\n")
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "cross.py").write_text("def f():\n    from metrics import voc\n")
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "up.py").write_text("from apps.video import viewer\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    assert violations() == ["engine/up.py (floor 4) imports apps (floor 5)",
                            "model/bad.py (floor 2) imports engine (floor 4)",
                            "nets/cross.py (floor 3) imports metrics (floor 3)"]
