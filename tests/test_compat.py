"""kit.kaggle.compat: the supported minimum versions, and the notebooks' first cell that checks them."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import nbclient
import nbformat
import pytest

from kit.kaggle import compat, kernels

REPO = Path(__file__).resolve().parent.parent
SUPPORTED = {"python": "3.10.13", "torch": "2.4.1", "numpy": "1.26.4", "pandas": "2.1.4", "numba": "0.58.1",
             "opencv": "4.9.0.80", "scikit-image": "0.22.0", "scikit-learn": "1.2.2", "scipy": "1.11.4", "matplotlib": "3.7.5"}


@pytest.mark.parametrize("text, expected", [
    ("2.10.0+cu128", (2, 10, 0)), ("2.5.0rc1", (2, 5, 0)), ("4.13.0.92", (4, 13, 0, 92)),
    ("1.26.4", (1, 26, 4)), ("0.60.0", (0, 60, 0)), ("2.1.0.dev20230101", (2, 1, 0)), ("2", (2,)),
])
def test_release_numbers_compare_as_numbers_not_text(text, expected):
    assert compat.release(text) == expected
    assert compat.release("2.10.0") > compat.release("2.4.1") > (2, 4) > compat.release("2.3.1")


def test_the_oldest_supported_set_passes_and_the_versions_are_printed(capsys):
    assert compat.check_environment(dict(SUPPORTED)) == SUPPORTED
    printed = capsys.readouterr().out
    assert printed == ("running on python 3.10.13, torch 2.4.1, numpy 1.26.4, pandas 2.1.4, numba 0.58.1, "
                       "opencv 4.9.0.80, scikit-image 0.22.0, scikit-learn 1.2.2, scipy 1.11.4, matplotlib 3.7.5\n")


def test_this_environment_is_supported(capsys):
    versions = compat.check_environment()
    assert set(versions) == {"python", *compat.MINIMUM}
    assert versions["torch"] == metadata.version("torch")
    assert f"numpy {metadata.version('numpy')}" in capsys.readouterr().out


def test_a_library_below_its_minimum_stops_with_one_line_naming_it_and_the_minimum():
    with pytest.raises(SystemExit) as stop:
        compat.check_environment({**SUPPORTED, "torch": "2.1.2+cu121"})
    line = str(stop.value)
    assert "\n" not in line
    assert line.startswith("kit: error: torch 2.1.2+cu121 is older than the kit supports (torch >= 2.4). ")
    assert "newer environment" in line


def test_every_unsupported_library_is_named_in_the_same_line():
    too_old = {**SUPPORTED, "python": "3.9.18", "numba": None, "scikit-learn": "1.1.3"}
    with pytest.raises(SystemExit) as stop:
        compat.check_environment(too_old)
    line = str(stop.value)
    assert "\n" not in line
    for part in ("python 3.9.18 is older than the kit supports (python >= 3.10)",
                 "numba is not installed (the kit needs numba >= 0.58.1)",
                 "scikit-learn 1.1.3 is older than the kit supports (scikit-learn >= 1.2)"):
        assert part in line
    assert "torch" not in line and "numpy" not in line


def test_opencv_is_found_under_any_of_its_wheels(monkeypatch):
    def version(distribution):
        if distribution == "opencv-python":  # no headless wheel here, the full one instead
            return "4.10.0.84"
        if distribution.startswith("opencv"):
            raise metadata.PackageNotFoundError(distribution)
        return "9.9"

    monkeypatch.setattr(metadata, "version", version)
    assert compat.installed_versions()["opencv"] == "4.10.0.84"


def test_the_minimums_are_the_oldest_set_the_compat_script_tests():
    pins = dict(re.findall(r"^([A-Za-z0-9_-]+)==(\S+)", (REPO / "requirements-oldest.txt").read_text(), re.M))
    names = {"opencv": "opencv-python-headless"}
    for library, minimum in compat.MINIMUM.items():
        pinned = compat.release(pins[names.get(library, library)])
        assert pinned[:len(minimum)] == minimum, (library, pinned, minimum)
    assert compat.MINIMUM_PYTHON == (3, 10)
    assert "oldest) python_version=3.10 " in (REPO / "benchmarks" / "kaggle_compat.sh").read_text()


def test_the_requirements_lower_bounds_are_the_minimums():
    """requirements.txt, requirements-oldest.txt and kit.kaggle.compat name one minimum per library."""
    bounds = dict(re.findall(r"^([A-Za-z0-9_-]+)>=(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    names = {"opencv": "opencv-python-headless"}
    for library, minimum in compat.MINIMUM.items():
        if library == "torch":  # pinned (==) for this workplace's wheel cache, above the minimum
            continue
        assert compat.release(bounds[names.get(library, library)]) == minimum, library


def test_importing_compat_loads_no_heavy_library():
    probe = "import sys, kit.kaggle.compat; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert not set(done.stdout.split()) & {"torch", "numpy", "pandas", "numba", "cv2", "sklearn", "scipy"}


def test_every_notebook_starts_with_the_version_check_from_kit_compat(tmp_path):
    built = kernels.build_kernels("tester", [["unet"]], tmp_path)
    for folder in built:
        notebook = nbformat.read(next(folder.glob("*.ipynb")), as_version=4)
        first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
        assert first_code.source.endswith("\ncheck_environment()\n")
        assert (REPO / "kit" / "kaggle" / "compat.py").read_text() in first_code.source


def test_the_first_cell_stops_the_notebook_before_its_work_when_torch_is_too_old(tmp_path):
    """In a real kernel: a session whose torch reports 2.1.2 prints its versions, ends with the one
    line, and runs no later cell (here a cell that would leave a file)."""
    folder = kernels.build_kernels("tester", [["unet"]], tmp_path / "kernels")[0]
    notebook = nbformat.read(next(folder.glob("*.ipynb")), as_version=4)
    check = next(cell for cell in notebook.cells if cell.cell_type == "code")
    old_torch = ("from importlib import metadata\n_real = metadata.version\n"
                 "metadata.version = lambda name: '2.1.2' if name == 'torch' else _real(name)\n")
    marker = tmp_path / "started"
    notebook.cells = [nbformat.v4.new_code_cell(old_torch), check,
                      nbformat.v4.new_code_cell(f"open({str(marker)!r}, 'w').close()")]
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        client.execute()
    outputs = notebook.cells[1].outputs
    printed = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert printed.startswith("running on python ") and ", torch 2.1.2, " in printed
    error = next(out for out in outputs if out.output_type == "error")
    assert error.ename == "SystemExit"
    assert error.evalue.startswith("kit: error: torch 2.1.2 is older than the kit supports (torch >= 2.4). ")
    assert not marker.exists()
