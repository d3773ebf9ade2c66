"""Container images for the container tests, built on this machine without any registry pull.

The base image holds this interpreter (the one running the tests) and the packages DeepSegment's engine
needs, copied with the system libraries they link to into a root file system that is streamed as a tar
archive into ``podman import``. Building the reference recipe (``DeepSegment/Resources/Container``) on
this base then tests that recipe for real, with no Python or PyTorch download. The base image's tag
holds a hash of what it contains, so it is built once per machine and reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable

from packaging.requirements import Requirement

BASE_IMAGE_NAME = "localhost/slicer-deeplearning-test-python"
# What DeepSegment's engine imports inside a container; their own requirements follow.
ENGINE_DISTRIBUTIONS = ("torch", "numpy", "SimpleITK")
PYTHON_HOME = "/opt/python"
_STANDARD_LIBRARY_SKIPPED = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
_LDD_PATH = re.compile(r"=>\s*(/\S+)|^\s*(/\S+)\s+\(")


def _distributions(names: Iterable[str]) -> list:
    """The installed distributions ``names`` and everything they require (extras left out)."""
    found: dict = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        distribution = importlib.metadata.distribution(name)
        found[key] = distribution
        for text in distribution.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return sorted(found.values(), key=lambda d: d.metadata["Name"].lower())


def _site_packages_files(distributions: list) -> dict:
    """{path in the image: path here} for every installed file of ``distributions``."""
    purelib = sysconfig.get_paths()["purelib"]
    target = f"{PYTHON_HOME}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    files = {}
    for distribution in distributions:
        for file in distribution.files or ():
            source = os.path.normpath(str(distribution.locate_file(file)))
            if source.startswith(purelib + os.sep) and "__pycache__" not in source and os.path.isfile(source):
                files[target + source[len(purelib):]] = source
    return files


def _interpreter_files() -> dict:
    prefix = sys.base_prefix
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    files = {f"{PYTHON_HOME}/bin/{version}": os.path.realpath(sys.executable)}
    library = sysconfig.get_config_var("INSTSONAME")
    if library and os.path.isfile(os.path.join(prefix, "lib", library)):
        files[f"{PYTHON_HOME}/lib/{library}"] = os.path.realpath(os.path.join(prefix, "lib", library))
    standard_library = os.path.join(prefix, "lib", version)
    for folder, subfolders, names in os.walk(standard_library):
        subfolders[:] = [s for s in subfolders if s not in _STANDARD_LIBRARY_SKIPPED and s != "__pycache__"
                         and not s.startswith("config-")]
        for name in names:
            if name.startswith("_tkinter"):
                continue
            source = os.path.join(folder, name)
            files[f"{PYTHON_HOME}/lib/{version}/{os.path.relpath(source, standard_library)}"] = source
    return files


def _is_elf(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"\x7fELF"


def _linked_system_libraries(binaries: Iterable[str]) -> dict:
    """{path: path} of the system libraries (and the loader) the ELF files ``binaries`` load."""
    libraries = {}
    for binary in binaries:
        output = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in output.splitlines():
            match = _LDD_PATH.search(line)
            path = match and (match.group(1) or match.group(2))
            if path and not path.startswith(sys.base_prefix) and not path.startswith(sys.prefix):
                libraries[path] = os.path.realpath(path)
    return libraries


def base_image_files() -> dict:
    """Every file of the base image: {path in the image: path on this machine}."""
    files = {**_interpreter_files(), **_site_packages_files(_distributions(ENGINE_DISTRIBUTIONS))}
    shell = "/bin/dash"
    binaries = [source for source in files.values() if _is_elf(source)]
    files.update(_linked_system_libraries([*binaries, shell]))
    files["/bin/sh"] = shell
    return files


def base_image_tag(files: dict) -> str:
    """A tag naming this content by its files' paths and sizes: a new virtual environment with the same
    pinned packages reuses the image, and another interpreter or package version gets a new one."""
    digest = hashlib.sha256()
    for target in sorted(files):
        if ".dist-info/" not in target:  # pip's bookkeeping (REQUESTED, RECORD) differs between equal installs
            digest.update(f"{target}\0{os.path.getsize(files[target])}\n".encode())
    return f"{BASE_IMAGE_NAME}:{digest.hexdigest()[:16]}"


def _add_bytes(archive: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def _write_root_file_system(stream, files: dict) -> None:
    with tarfile.open(fileobj=stream, mode="w|") as archive:
        for folder in ("tmp", "input", "output"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            archive.addfile(info)
        _add_bytes(archive, "/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        _add_bytes(archive, "/etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        # python3 is the name the reference recipe calls.
        link = tarfile.TarInfo(f"{PYTHON_HOME}/bin/python3".lstrip("/"))
        link.type, link.linkname = tarfile.SYMTYPE, f"python{sys.version_info.major}.{sys.version_info.minor}"
        archive.addfile(link)
        for target in sorted(files):
            info = archive.gettarinfo(files[target], target.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode |= 0o444 | (0o111 if info.mode & 0o100 else 0)
            with open(files[target], "rb") as file:
                archive.addfile(info, file)


def ensure_base_image(runtime: str = "podman", environment: dict | None = None) -> str:
    """The base image's tag, importing it into ``runtime`` first when it is not there yet."""
    files = base_image_files()
    tag = base_image_tag(files)
    if subprocess.run([runtime, "image", "exists", tag], env=environment).returncode == 0:
        return tag
    changes = [
        f"ENV PATH={PYTHON_HOME}/bin:/usr/bin:/bin",
        f"ENV PYTHONHOME={PYTHON_HOME}",
        f"ENV LD_LIBRARY_PATH={PYTHON_HOME}/lib",
        "WORKDIR /tmp",
    ]
    command = [runtime, "import", *(f"--change={change}" for change in changes), "-", tag]
    importer = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=environment)
    try:
        _write_root_file_system(importer.stdin, files)
    finally:
        importer.stdin.close()
    error = importer.stderr.read().decode(errors="replace")
    if importer.wait() != 0:
        raise RuntimeError(f"{runtime} import failed: {error.strip()}")
    # Base images of other interpreters or package versions would only take space (over 1 GB each).
    listed = subprocess.run([runtime, "images", "--format", "{{.Repository}}:{{.Tag}}", BASE_IMAGE_NAME],
                            capture_output=True, text=True, env=environment).stdout.split()
    for stale in set(listed) - {tag}:
        subprocess.run([runtime, "rmi", stale], capture_output=True, env=environment)
    return tag
