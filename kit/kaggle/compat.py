"""The library versions the kit supports, checked before a kernel starts any work.

On Kaggle nothing is installed: the kernels run on the libraries Kaggle's image ships. A library
older than the oldest the kit is tested on (``requirements-oldest.txt``, run by
``benchmarks/kaggle_compat.sh oldest``) would fail hours into a run, so the notebooks' first code
cell runs this module's source and stops at once, with one line naming the library and the minimum.

Standard library only: the cell runs before the kit's own modules are written, and reading versions
through ``importlib.metadata`` imports none of the heavy libraries.
"""
from __future__ import annotations

import sys
from importlib import metadata

# The oldest release series of each library the kit imports, as tested together in
# requirements-oldest.txt (the README's "Library versions" says why each).
MINIMUM_PYTHON = (3, 10)
MINIMUM = {
    "torch": (2, 4),
    "numpy": (1, 26),
    "pandas": (2, 1),
    "numba": (0, 58, 1),  # the first release supporting numpy 1.26 (numba 0.58.1 release notes)
    "opencv": (4, 9),
    "scikit-image": (0, 22),  # kit.data.livecell draws LIVECell's polygons with skimage.draw
    "scikit-learn": (1, 2),
    "scipy": (1, 11),
    "matplotlib": (3, 7),
}
# The distributions that provide each library: opencv comes as any of four wheels, all ``import cv2``.
DISTRIBUTIONS = {
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python",
               "opencv-contrib-python-headless"),
}


def installed_versions() -> dict[str, str | None]:
    """``{library: installed version string, or None where it is missing}`` for every library in
    ``MINIMUM``, plus ``python``."""
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    for library in MINIMUM:
        versions[library] = None
        for distribution in DISTRIBUTIONS.get(library, (library,)):
            try:
                versions[library] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.10.0+cu128' -> (2, 10, 0), '2.5.0rc1' -> (2, 5, 0)."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:  # a pre-release suffix ends the release numbers
            break
    return tuple(numbers)


def unsupported(versions: dict[str, str | None]) -> list[str]:
    """One line per library below its minimum or missing (empty when every one is supported)."""
    problems = []
    if release(versions["python"]) < MINIMUM_PYTHON:
        problems.append(f"python {versions['python']} is older than the kit supports "
                        f"(python >= {_shown(MINIMUM_PYTHON)})")
    for library, minimum in MINIMUM.items():
        version = versions.get(library)
        if version is None:
            problems.append(f"{library} is not installed (the kit needs {library} >= {_shown(minimum)})")
        elif release(version) < minimum:
            problems.append(f"{library} {version} is older than the kit supports ({library} >= {_shown(minimum)})")
    return problems


def check_environment(versions: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """Print the versions this session runs on; stop (``SystemExit``, one line) if one is unsupported.

    The line names every library that is too old and its minimum, and how to get a newer image.
    """
    versions = installed_versions() if versions is None else versions
    print("running on " + ", ".join(f"{name} {version or 'missing'}" for name, version in versions.items()))
    problems = unsupported(versions)
    if problems:
        raise SystemExit("kit: error: " + "; ".join(problems) + ". Run this notebook on a newer environment "
                         "(Kaggle: the notebook's settings, Environment: always use the latest).")
    return versions


def _shown(release_numbers: tuple[int, ...]) -> str:
    return ".".join(map(str, release_numbers))
