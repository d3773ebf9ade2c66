"""Every Python file and resource of a module is listed in its CMakeLists.txt, and nothing else is.

``slicerMacroBuildScriptedModule`` installs only the files named in SCRIPTS and RESOURCES: a Lib file
left out still works from the source tree and in these tests, but is missing from the packaged
extension, which then fails on users' machines only.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A module is a top-level folder <Name> holding <Name>.py.
MODULE_NAMES = sorted(
    name for name in os.listdir(REPOSITORY) if os.path.isfile(os.path.join(REPOSITORY, name, name + ".py"))
)


def listed_files(module_name: str, variable: str) -> set:
    with open(os.path.join(REPOSITORY, module_name, "CMakeLists.txt"), encoding="utf-8") as file:
        text = file.read()
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.DOTALL)
    assert match, f"{module_name}/CMakeLists.txt does not set {variable}"
    entries = match.group(1).replace("${MODULE_NAME}", module_name).split()
    return {entry for entry in entries if not entry.startswith("#")}


def files_under(module_name: str, folder: str, suffix: str = "") -> set:
    root = os.path.join(REPOSITORY, module_name)
    found = set()
    for directory, subdirectories, files in os.walk(os.path.join(root, folder)):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        for name in files:
            if name.endswith(suffix):
                found.add(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return found


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_every_script_is_listed(name):
    on_disk = {f"{name}.py"} | files_under(name, f"{name}Lib", ".py")
    assert listed_files(name, "MODULE_PYTHON_SCRIPTS") == on_disk


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_every_resource_is_listed(name):
    assert listed_files(name, "MODULE_PYTHON_RESOURCES") == files_under(name, "Resources")


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_is_built_with_generic_tests_and_self_test(name):
    with open(os.path.join(REPOSITORY, name, "CMakeLists.txt"), encoding="utf-8") as file:
        text = file.read()
    assert "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_builds_every_module():
    with open(os.path.join(REPOSITORY, "CMakeLists.txt"), encoding="utf-8") as file:
        text = file.read()
    assert sorted(re.findall(r"add_subdirectory\((\w+)\)", text)) == MODULE_NAMES
    for required in ("find_package(Slicer REQUIRED)", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK"):
        assert required in text


def test_extension_packages_its_own_license_and_readme():
    """Unset, UseSlicer.cmake points both at Slicer's own files, which the extension package would then carry."""
    with open(os.path.join(REPOSITORY, "CMakeLists.txt"), encoding="utf-8") as file:
        text = file.read()
    use_slicer = text.index("include(${Slicer_USE_FILE})")
    for variable, name in (("EXTENSION_LICENSE_FILE", "LICENSE"), ("EXTENSION_README_FILE", "README.md")):
        match = re.search(r"set\(\s*" + variable + r'\s+"\$\{CMAKE_CURRENT_SOURCE_DIR\}/([^"]+)"\s*\)', text)
        assert match, f"CMakeLists.txt does not set {variable} to a file of the repository"
        assert match.start() < use_slicer, f"{variable} must be set before include(${{Slicer_USE_FILE}})"
        assert match.group(1) == name and os.path.isfile(os.path.join(REPOSITORY, name))


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_every_ui_file_loads(name):
    """Each .ui file loads through Slicer's loadUI; the stand-in's loader refuses a property set twice."""
    import slicer.util

    for path in files_under(name, "Resources/UI", ".ui"):
        widget = slicer.util.loadUI(os.path.join(REPOSITORY, name, path))
        assert widget is not None, path
        widget.deleteLater()


def imported_modules(path: str) -> set:
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_code_uses_neither_the_stand_in_nor_pyside(name):
    """The stand-in is test infrastructure, and PySide-only API does not exist in Slicer's PythonQt."""
    for path in {f"{name}.py"} | files_under(name, f"{name}Lib", ".py"):
        forbidden = imported_modules(os.path.join(REPOSITORY, name, path)) & {"slicer_standin", "PySide6", "shiboken6"}
        assert not forbidden, f"{path} imports {forbidden}"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_lib_is_free_of_qt(name):
    """A Lib runs in Slicer, its Python console, a command line and tests: no Qt there."""
    for path in files_under(name, f"{name}Lib", ".py"):
        assert not imported_modules(os.path.join(REPOSITORY, name, path)) & {"qt", "ctk"}, path
