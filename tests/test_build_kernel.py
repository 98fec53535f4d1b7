"""kit.build_kernel: the folders it writes are accepted by the real kaggle client, repeat byte for
byte, carry the kit's exact source and nothing private."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import KAGGLE_DUMMY_KEY, KAGGLE_TEST_USER
from kit import build_kernel
from kit.competition import COMPETITION_SLUG
from kit.kaggle import kernels
from kit.model import variants

USER = KAGGLE_TEST_USER
REPO = Path(__file__).resolve().parent.parent
KIT_DIR = REPO / "kit"
DUMMY_KEY = KAGGLE_DUMMY_KEY
DUMMY_TOKEN = "KGAT_dummy-token-fedcba9876543210"


def build(out: Path, tokens=("all",), **options) -> list[Path]:
    return kernels.build_kernels(USER, kernels.parse_variant_groups(tokens), out, **options)


def read_notebook(folder: Path) -> dict:
    metadata = json.loads((folder / "kernel-metadata.json").read_text())
    return json.loads((folder / metadata["code_file"]).read_text())


def cell_text(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def embedded_files(notebook: dict) -> dict[str, str]:
    """{path below kit/: content} of the notebook's %%writefile cells."""
    found = {}
    for cell in notebook["cells"]:
        text = cell_text(cell)
        first, _, body = text.partition("\n")
        match = re.fullmatch(r"%%writefile \{KIT_SRC\}/kit/([\w/]+\.py)", first)
        if cell["cell_type"] == "code" and match:
            found[match.group(1)] = body
    return found


def package_sources() -> dict[str, str]:
    """{path below kit/: content} of every module of the package the kernels need: all but the builder."""
    return {path.relative_to(KIT_DIR).as_posix(): path.read_text() for path in sorted(KIT_DIR.rglob("*.py"))
            if path.relative_to(KIT_DIR).as_posix() not in ("build_kernel.py", "kaggle/kernels.py")
            and "__pycache__" not in path.parts}


def test_every_notebook_embeds_the_package_tree_checked_and_stays_well_under_kaggle_s_1_mb(tmp_path):
    folders = build(tmp_path, ["all"], stages=kernels.kernel_stages(pretrain="livecell"))
    expected = package_sources()
    assert {"data/sartorius.py", "model/checkpoints.py", "training/run.py", "inference/ensemble.py",
            "kaggle/notebook.py", "kaggle/compat.py", "data/__init__.py"} <= set(expected)
    for folder in folders:
        notebook = read_notebook(folder)
        assert embedded_files(notebook) == expected
        setup = next(cell_text(c) for c in notebook["cells"] if "KIT_FILES = {" in cell_text(c))
        for name, text in expected.items():  # each file's SHA-256, checked by the import cell
            assert f"{name!r}: {hashlib.sha256(text.encode()).hexdigest()!r}" in setup
        size = (folder / f"{folder.name}.ipynb").stat().st_size
        assert size < 600_000, f"{folder.name}: {size:,} bytes"


# --- the real kaggle client, network intercepted ---------------------------------------------

@pytest.fixture
def kaggle_push(kaggle_credentials, monkeypatch):
    """``push(folder)`` runs ``kaggle kernels push -p folder`` in-process; returns (request, stdout).

    Dummy credentials, a temporary home and config folder; ``KernelsApiClient.save_kernel`` (the
    one network call of a push) is replaced by a recorder, and any other HTTP request fails the test.
    """
    config_dir = kaggle_credentials

    import kaggle
    import kaggle.cli
    import requests
    from kagglesdk.kernels.services.kernels_api_service import KernelsApiClient
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelResponse

    monkeypatch.setattr(kaggle.api, "config", str(config_dir / "kaggle.json"))  # never a real kaggle.json
    monkeypatch.setattr(kaggle.api, "_authenticated", False)

    def no_network(self, request, **kwargs):
        raise AssertionError(f"unexpected HTTP request to {request.url}")

    monkeypatch.setattr(requests.Session, "send", no_network)
    captured = []

    def save_kernel(self, request=None):
        captured.append(request)
        response = ApiSaveKernelResponse()
        response.url = f"https://www.kaggle.com/code/{request.slug}"
        response.version_number = 1
        return response

    monkeypatch.setattr(KernelsApiClient, "save_kernel", save_kernel)

    def push(folder: Path, capsys):
        captured.clear()
        monkeypatch.setattr(sys, "argv", ["kaggle", "kernels", "push", "-p", str(folder)])
        capsys.readouterr()
        try:
            kaggle.cli.main()
        except SystemExit as exit_:  # the CLI exits 1 after printing a validation error
            pytest.fail(f"kaggle kernels push -p {folder} failed ({exit_.code}): {capsys.readouterr()}")
        output = capsys.readouterr()
        assert len(captured) == 1, output
        return captured[0], output.out + output.err

    return push


def test_the_kaggle_client_accepts_every_built_folder(tmp_path, kaggle_push, capsys):
    folders = build(tmp_path / "kernels")
    names = list(variants.VARIANTS)
    assert [f.name for f in folders] == [f"sartorius-kit-train-{n}" for n in names] + ["sartorius-kit-infer"]
    flow = [n for n in names if variants.get_variant(n).target == "flow"]
    assert flow == ["hot-flow-unet", variants.RECIPE]  # the inference kernel picks one of these by score
    repo_sources = package_sources()
    from slugify import slugify  # the kaggle client's own slug rule (python-slugify, a kaggle dependency)

    for folder in folders:
        request, output = kaggle_push(folder, capsys)
        assert "successfully pushed" in output
        assert "does not resolve" not in output and "retired" not in output
        assert request.slug == f"{USER}/{folder.name}"
        assert slugify(request.new_title) == folder.name
        assert 5 <= len(request.new_title) <= kernels.MAX_TITLE_LENGTH
        assert (request.language, request.kernel_type) == ("python", "notebook")
        assert request.enable_internet is False
        assert request.enable_gpu is True and request.is_private is True
        assert request.machine_shape == "NvidiaTeslaT4"
        assert request.competition_data_sources == [COMPETITION_SLUG]
        assert request.dataset_data_sources == []
        notebook = json.loads(request.text)
        assert embedded_files(notebook) == repo_sources
        run_cell = cell_text(notebook["cells"][-1])
        if folder.name == "sartorius-kit-infer":
            assert request.kernel_data_sources == [f"{USER}/sartorius-kit-train-{n}" for n in flow]
            assert f"WEIGHT_FILES = {[f'{n}.pt' for n in flow]!r}" in run_cell
            assert "INFER_OPTIONS = ['--select-best']" in run_cell
            sources = {f"{n}.pt": f"{USER}/sartorius-kit-train-{n}" for n in flow}
            assert f"WEIGHT_SOURCES = {sources!r}" in run_cell and "weight_sources=WEIGHT_SOURCES)" in run_cell
            assert "notebook.write_submission(" in run_cell
        else:
            assert request.kernel_data_sources == []
            name = folder.name.removeprefix("sartorius-kit-train-")
            assert f"VARIANTS = {[name]!r}" in run_cell and "notebook.train_variants(" in run_cell


def test_only_the_t4x2_shape_is_offered_and_the_retired_p100_is_refused_with_its_reason(tmp_path, capsys):
    from kaggle.api import kaggle_api_extended  # the client's own list of retired accelerators

    assert "nvidiateslap100" in kaggle_api_extended._RETIRED_ACCELERATORS
    assert list(kernels.MACHINE_SHAPES) == ["NvidiaTeslaT4"] and kernels.MACHINE_SHAPES["NvidiaTeslaT4"] == 2
    with pytest.raises(ValueError, match=r"'NvidiaTeslaP100': retired.*sm_60.*use NvidiaTeslaT4"):
        build(tmp_path / "kernels", ["unet"], machine_shape="NvidiaTeslaP100")
    with pytest.raises(SystemExit):
        build_kernel.get_args_parser().parse_args(["--machine-shape", "NvidiaL4"])
    assert "machine shape 'NvidiaL4'" in capsys.readouterr().err
    assert not (tmp_path / "kernels").exists()


# --- determinism, privacy ------------------------------------------------------------------------

def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(tmp_path):
    build(tmp_path / "a")
    build(tmp_path / "b")
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert len(first) == 2 * (len(variants.VARIANTS) + 1)  # a training kernel per variant + inference, two files each
    assert first == second


def test_a_built_kernel_holds_no_credential_token_or_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", DUMMY_KEY)
    monkeypatch.setenv("KAGGLE_API_TOKEN", DUMMY_TOKEN)
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    build(tmp_path / "kernels")
    texts = [p.read_text() for p in (tmp_path / "kernels").rglob("*") if p.is_file()]
    assert len(texts) == 2 * (len(variants.VARIANTS) + 1)
    for text in texts:
        for forbidden in (DUMMY_KEY, DUMMY_TOKEN, "KAGGLE_KEY", "KAGGLE_API_TOKEN", "kaggle.json",
                          str(REPO), str(tmp_path)):
            assert forbidden not in text
        assert not re.search(re.escape(str(Path.home())) + r"/", text)


def test_the_builder_refuses_to_write_a_secret_it_finds_in_the_output(tmp_path, monkeypatch):
    # A "key" equal to text the notebook must carry stands for a credential pasted into the source.
    monkeypatch.setenv("KAGGLE_KEY", COMPETITION_SLUG)
    with pytest.raises(ValueError, match=r"\$KAGGLE_KEY"):
        build(tmp_path / "kernels", ["unet"])
    assert not (tmp_path / "kernels").exists()  # nothing written, not even the metadata


def test_notebooks_are_valid_nbformat_4_for_a_python3_kernel(tmp_path):
    for folder in build(tmp_path / "kernels", ["hot-unet+hot-flow-unet"]):
        notebook = read_notebook(folder)
        nbformat.validate(nbformat.from_dict(notebook))
        assert notebook["nbformat"] == 4
        assert notebook["metadata"]["kernelspec"]["name"] == "python3"
        assert all(cell.get("outputs", []) == [] for cell in notebook["cells"])


# --- a light command -------------------------------------------------------------------------------

HEAVY_MODULES = ("torch", "pandas", "numba", "cv2", "numpy", "sklearn")


def loaded_modules(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after ``statement`` (no module cached here counts)."""
    probe = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_importing_the_builder_loads_no_heavy_library():
    assert not loaded_modules("import kit.build_kernel") & set(HEAVY_MODULES)


def test_the_competition_facts_need_only_the_standard_library():
    at_start = loaded_modules("pass")  # what the interpreter's site set-up loads anyway
    outside = loaded_modules("import kit.competition") - at_start - set(sys.stdlib_module_names) - {"kit"}
    assert not outside, outside


# --- command line, names, options ------------------------------------------------------------------

def test_an_unknown_variant_is_an_error_listing_the_valid_ones(tmp_path, capsys):
    args = build_kernel.get_args_parser().parse_args(["--user", USER, "--out", str(tmp_path), "--variants", "vnet"])
    with pytest.raises(SystemExit) as exit_:
        build_kernel.main(args)
    message = str(exit_.value.code)
    assert "'vnet'" in message
    for name in variants.VARIANTS:
        assert name in message
    assert not any(tmp_path.iterdir())


def test_the_command_line_builds_the_named_variants(tmp_path, capsys):
    args = build_kernel.get_args_parser().parse_args(
        ["--user", USER, "--out", str(tmp_path), "--variants", "unet", "hot-unet", "--time-limit", "2:30",
         "--machine-shape", "NvidiaTeslaT4", "--one-gpu"])
    folders = build_kernel.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sartorius-kit-infer", "sartorius-kit-train-hot-unet", "sartorius-kit-train-unet"]
    printed = capsys.readouterr().out
    assert "2 training kernel(s) x 2:30 h = 5.0 session-hours" in printed
    assert f"  1. python -m kit.push {folders[0]} {folders[1]}\n" in printed
    metadata = json.loads((tmp_path / "sartorius-kit-train-unet" / "kernel-metadata.json").read_text())
    assert metadata["machine_shape"] == "NvidiaTeslaT4"
    run_cell = cell_text(read_notebook(tmp_path / "sartorius-kit-train-unet")["cells"][-1])
    assert "TIME_LIMIT_SECONDS = 9000 " in run_cell and "USE_ALL_GPUS = False " in run_cell


def test_the_default_build_trains_only_what_the_inference_kernel_uses_and_prints_its_cost_and_push_order(
        tmp_path, capsys):
    out = tmp_path / "kernels"
    folders = build_kernel.main(build_kernel.get_args_parser().parse_args(["--user", USER, "--out", str(out)]))
    flow = [name for name, v in variants.VARIANTS.items() if v.target == "flow"]
    assert [f.name for f in folders] == [f"sartorius-kit-train-{n}" for n in flow] + ["sartorius-kit-infer"]
    assert len(folders) - 1 <= kernels.MAX_GPU_SESSIONS  # every training kernel runs at once
    inference = json.loads((folders[-1] / "kernel-metadata.json").read_text())
    assert inference["kernel_sources"] == [f"{USER}/{f.name}" for f in folders[:-1]]
    printed = capsys.readouterr().out.splitlines()
    assert printed[4] == ("GPU ceiling: 2 training kernel(s) x 8:30 h = 17.0 session-hours on NvidiaTeslaT4 (GPU T4 "
                          "x2; 34.0 GPU-hours if Kaggle counts each GPU), of a weekly GPU quota of about 30 h "
                          "(`kaggle quota` shows yours); the inference kernel's run on the visible test images adds "
                          "minutes")
    assert printed[5] == "note: if Kaggle counts each GPU, that is more than a week's quota; --time-limit 7:30 fits either way"
    assert printed[7:9] == [f"  1. python -m kit.push {folders[0]} {folders[1]}",
                            f"  2. once every training kernel has finished (kit.push checks): python -m kit.push {folders[2]}"]


def test_a_build_of_every_variant_pushes_in_pairs_and_warns_that_it_exceeds_a_week_s_quota(tmp_path):
    folders = build(tmp_path / "kernels")
    lines = kernels.push_plan(folders, 8 * 3600 + 1800)
    assert "6 training kernel(s) x 8:30 h = 51.0 session-hours" in lines[0]
    assert lines[1].startswith("warning: 51.0 session-hours is more than a week's GPU quota")
    steps = [line for line in lines if line.startswith("  ")]
    assert [line.split("python -m kit.push ")[1].split() for line in steps] == [
        [str(f) for f in folders[i:i + 2]] for i in (0, 2, 4)] + [[str(folders[6])]]
    assert kernels.push_plan(folders[4:], 3 * 3600)[1].startswith("push in this order")  # 6 h: no note


def test_the_stages_are_off_by_default_and_each_flag_turns_one_on(tmp_path, capsys):
    default = cell_text(read_notebook(build(tmp_path / "default", ["unet"])[0])["cells"][-1])
    assert "PRETRAIN = None " in default and "PSEUDO_ROUND = False " in default
    args = build_kernel.get_args_parser().parse_args(
        ["--user", USER, "--out", str(tmp_path / "staged"), "--variants", "hot-flow-unet", "--pretrain",
         "livecell:shsy5y", "--pretrain-epochs", "7", "--pretrain-max-images", "500", "--pseudo-round",
         "--min-confidence", "0.9"])
    trainer = build_kernel.main(args)[0]
    run_cell = cell_text(read_notebook(trainer)["cells"][-1])
    for setting in ("PRETRAIN = 'livecell:shsy5y' ", "PRETRAIN_EPOCHS = 7\n", "PRETRAIN_MAX_IMAGES = 500 ",
                    "PSEUDO_ROUND = True ", "MIN_CONFIDENCE = 0.9 ", "stages=STAGES)"):
        assert setting in run_cell, setting
    intro = cell_text(read_notebook(trainer)["cells"][0])
    assert "LIVECell pretraining, then fine-tuning, then a pseudo-label round" in intro
    metadata = json.loads((trainer / "kernel-metadata.json").read_text())
    # LIVECell and train_semi_supervised/ are part of the competition's input: no other data source
    assert metadata["competition_sources"] == [COMPETITION_SLUG] and metadata["dataset_sources"] == []
    for bad, message in (("coco", "the source is 'livecell'"), ("livecell:hela", "'hela'.*unknown")):
        with pytest.raises(SystemExit, match=message):
            build_kernel.main(build_kernel.get_args_parser().parse_args(
                ["--user", USER, "--out", str(tmp_path / "bad"), "--pretrain", bad]))
    with pytest.raises(SystemExit, match="--min-confidence must be in \\[0, 1\\]"):
        build_kernel.main(build_kernel.get_args_parser().parse_args(
            ["--user", USER, "--out", str(tmp_path / "bad"), "--pseudo-round", "--min-confidence", "2"]))
    with pytest.raises(SystemExit, match=r"--pseudo-round needs flow variants .* mask variant\(s\) unet, hot-unet: "):
        build_kernel.main(build_kernel.get_args_parser().parse_args(
            ["--user", USER, "--out", str(tmp_path / "bad"), "--variants", "unet+hot-unet", "hot-flow-unet",
             "--pseudo-round"]))
    assert not (tmp_path / "bad").exists()


def test_a_group_trains_its_variants_in_one_kernel(tmp_path):
    folders = build(tmp_path / "kernels", ["hot-unet+hot-flow-unet", "unet"], time_limit_s=3600)
    assert [f.name for f in folders] == ["sartorius-kit-train-hot-unet-hot-flow-unet",
                                         "sartorius-kit-train-unet", "sartorius-kit-infer"]
    run_cell = cell_text(read_notebook(folders[0])["cells"][-1])
    assert "VARIANTS = ['hot-unet', 'hot-flow-unet']" in run_cell
    assert "TIME_LIMIT_SECONDS = 3600 " in run_cell
    inference = json.loads((folders[-1] / "kernel-metadata.json").read_text())
    assert inference["kernel_sources"] == [f"{USER}/{folders[0].name}"]  # the kernel training the flow variant
    run_cell = cell_text(read_notebook(folders[-1])["cells"][-1])
    assert "WEIGHT_FILES = ['hot-flow-unet.pt']" in run_cell and "INFER_OPTIONS = []" in run_cell


def test_the_inference_kernel_attaches_only_the_kernels_training_its_weights(tmp_path):
    folders = build(tmp_path / "kernels", ["all"], infer=["hot-flow-unet"], tta=True)
    inference = json.loads((folders[-1] / "kernel-metadata.json").read_text())
    assert inference["kernel_sources"] == [f"{USER}/sartorius-kit-train-hot-flow-unet"]
    run_cell = cell_text(read_notebook(folders[-1])["cells"][-1])
    assert "WEIGHT_FILES = ['hot-flow-unet.pt']" in run_cell and "INFER_OPTIONS = ['--tta']" in run_cell


def test_inference_variants_share_one_target_type():
    assert kernels.inference_variants([("hot-flow-unet",)]) == ["hot-flow-unet"]
    assert kernels.inference_variants([("hot-flow-unet", "unet"), ("hot-unet",)]) == ["hot-flow-unet"]
    assert kernels.inference_variants([("hot-unet", "unet")]) == ["hot-unet", "unet"]  # no flow: masks averaged
    everything = kernels.parse_variant_groups(["all"])
    assert kernels.inference_variants(everything) == ["hot-flow-unet", "hot-flow-unet-plus"]
    assert kernels.inference_variants(everything, ["hot-unet", "unet"]) == ["unet", "hot-unet"]
    with pytest.raises(ValueError, match="one target type"):
        kernels.inference_variants(everything, ["unet", "hot-flow-unet"])
    assert kernels.select_best(["hot-flow-unet", "hot-flow-unet-plus"], None)
    assert not kernels.select_best(["hot-flow-unet", "hot-flow-unet-plus"], ["hot-flow-unet", "hot-flow-unet-plus"])
    assert not kernels.select_best(["unet", "hot-unet"], None) and not kernels.select_best(["hot-flow-unet"], None)
    with pytest.raises(ValueError, match="not trained"):
        kernels.inference_variants([("unet",)], ["hot-unet"])


def test_a_long_group_gets_a_short_stable_slug_matching_its_title():
    from slugify import slugify  # the kaggle client's own slug rule

    everything = tuple(variants.VARIANTS)
    kernel = kernels.training_kernel(everything)
    assert len(kernel.title) <= kernels.MAX_TITLE_LENGTH
    assert slugify(kernel.title) == kernel.slug == kernels.training_kernel(everything).slug
    assert kernel.slug.startswith(f"sartorius-kit-train-{len(everything)}-variants-")
    assert kernel.slug != kernels.training_kernel(everything[::-1]).slug


@pytest.mark.parametrize("tokens, message", [
    (["unet", "unet+hot-unet"], "more than once"),
    (["unet+vnet"], "valid variants"),
    ([], "no variants"),
])
def test_bad_variant_lists_are_errors(tokens, message):
    with pytest.raises(ValueError, match=message):
        kernels.parse_variant_groups(tokens)


def test_time_limits():
    assert kernels.parse_kernel_time_limit("11:00") == 39600
    assert kernels.parse_kernel_time_limit("0:30") == 1800
    assert kernels.parse_kernel_time_limit("12:00") == 43200
    for bad in ("12:01", "13:00", "0:00", "1:5", "90", "1:60", "x:10"):
        with pytest.raises(ValueError):
            kernels.parse_kernel_time_limit(bad)


def test_unknown_machine_shape_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="NvidiaTeslaT4"):
        build(tmp_path / "kernels", ["unet"], machine_shape="NvidiaGTX1080")


# --- the username ---------------------------------------------------------------------------------

@pytest.fixture
def no_kaggle_config(tmp_path, monkeypatch):
    """No KAGGLE_* variable and an empty home: only what the test sets up is found."""
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_username_comes_from_the_option_then_the_environment_then_kaggle_json(no_kaggle_config, monkeypatch):
    with pytest.raises(ValueError, match="--user"):
        kernels.resolve_username()
    config = no_kaggle_config / ".kaggle" / "kaggle.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"username": "from-json", "key": DUMMY_KEY}))
    assert kernels.resolve_username() == "from-json"
    monkeypatch.setenv("KAGGLE_USERNAME", "from-env")
    assert kernels.resolve_username() == "from-env"
    assert kernels.resolve_username("from-option") == "from-option"


def test_kaggle_config_dir_and_xdg_are_searched_like_the_kaggle_client(no_kaggle_config, tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    (xdg / "kaggle").mkdir(parents=True)
    (xdg / "kaggle" / "kaggle.json").write_text(json.dumps({"username": "from-xdg", "key": DUMMY_KEY}))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert kernels.resolve_username() == "from-xdg"
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "kaggle.json").write_text(json.dumps({"key": DUMMY_KEY}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(explicit))
    with pytest.raises(ValueError, match="no 'username'"):
        kernels.resolve_username()


def test_a_username_from_kaggle_json_builds_without_copying_the_key(no_kaggle_config, tmp_path):
    config = no_kaggle_config / ".kaggle" / "kaggle.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"username": "json-user", "key": DUMMY_KEY}))
    args = build_kernel.get_args_parser().parse_args(["--out", str(tmp_path / "k"), "--variants", "unet"])
    build_kernel.main(args)
    texts = "".join(p.read_text() for p in (tmp_path / "k").rglob("*") if p.is_file())
    assert '"id": "json-user/sartorius-kit-train-unet"' in texts
    assert DUMMY_KEY not in texts


@pytest.mark.parametrize("bad", ["", "a b", "../x", "user/x", "-x"])
def test_a_malformed_username_is_an_error(bad):
    with pytest.raises(ValueError, match="Kaggle username"):
        kernels.check_username(bad)
