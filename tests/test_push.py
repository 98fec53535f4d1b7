"""kit.push: it reads the real kaggle client's replies (kaggle 2.2.5, its network calls replaced) and
stops with one line where Kaggle refuses a push, which the client itself reports with exit status 0."""
from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest

from conftest import KAGGLE_TEST_USER
from kit import push
from kit.kaggle import kernels as kaggle_kernels

USER = KAGGLE_TEST_USER


@pytest.fixture
def kaggle(kaggle_credentials, monkeypatch):
    """The real kaggle CLI run in-process for ``push.run_client``, with dummy credentials; Kaggle's
    answers are set per test: ``replies["push"]`` (an error text, or None for success) and
    ``replies["status"]`` ({kernel: status name}). Any other HTTP request fails the test."""
    config_dir = kaggle_credentials

    import kaggle as client
    import kaggle.cli
    import requests
    from kagglesdk.kernels.services.kernels_api_service import KernelsApiClient
    from kagglesdk.kernels.types.kernels_api_service import (ApiGetKernelSessionStatusResponse,
                                                             ApiSaveKernelResponse)
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    monkeypatch.setattr(client.api, "config", str(config_dir / "kaggle.json"))
    monkeypatch.setattr(client.api, "_authenticated", False)
    monkeypatch.setattr(requests.Session, "send", lambda self, request, **kw: pytest.fail(f"HTTP {request.url}"))
    replies = {"push": None, "unattached": [], "status": {}, "calls": []}

    def save_kernel(self, request=None):
        replies["calls"].append(("push", request.slug))
        response = ApiSaveKernelResponse()
        response.url = f"https://www.kaggle.com/code/{request.slug}"
        response.version_number = 1
        if replies["push"]:
            response.error = replies["push"]
        response.invalid_kernel_sources = replies["unattached"]
        return response

    def session_status(self, request=None):
        kernel = f"{request.user_name}/{request.kernel_slug}"
        replies["calls"].append(("status", kernel))
        response = ApiGetKernelSessionStatusResponse()
        response.status = getattr(KernelWorkerStatus, replies["status"].get(kernel, "RUNNING"))
        return response

    monkeypatch.setattr(KernelsApiClient, "save_kernel", save_kernel)
    monkeypatch.setattr(KernelsApiClient, "get_kernel_session_status", session_status)

    def run_client(arguments):
        monkeypatch.setattr(sys, "argv", ["kaggle", *arguments])
        output, status = io.StringIO(), 0
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            try:
                kaggle.cli.main()
            except SystemExit as exit_:
                status = exit_.code or 0
        return status, output.getvalue()

    monkeypatch.setattr(push, "run_client", run_client)
    return replies


@pytest.fixture
def kernels(tmp_path):
    """The default build: two training kernels, then the inference kernel attaching both."""
    return kaggle_kernels.build_kernels(USER, kaggle_kernels.default_variant_groups(), tmp_path / "kernels")


def run(*arguments):
    return push.main(push.get_args_parser().parse_args([str(a) for a in arguments]))


def test_training_kernels_are_pushed_in_turn_and_the_client_s_success_line_is_kept(kaggle, kernels, capsys):
    lines = run(*kernels[:2])
    assert [call[1] for call in kaggle["calls"]] == [f"{USER}/{k.name}" for k in kernels[:2]]
    assert all("successfully pushed" in line for line in lines)
    assert f"kit.push: {kernels[1]} pushed" in capsys.readouterr().out


def test_a_refused_push_exits_non_zero_with_one_line_and_pushes_nothing_after_it(kaggle, kernels, capsys):
    kaggle["push"] = "Maximum batch GPU session count of 2 reached."
    status, reply = push.run_client(["kernels", "push", "-p", str(kernels[0])])
    assert status == 0 and reply.startswith("Kernel push error: Maximum batch GPU session count")  # the client: exit 0
    kaggle["calls"].clear()
    with pytest.raises(SystemExit) as exit_:
        run(*kernels[:2])
    message = str(exit_.value.code)
    assert message.startswith(f"kit.push: error: Kaggle refused {kernels[0]}: Maximum batch GPU session count of 2 "
                              "reached.; Kaggle runs at most 2 GPU sessions at once")
    assert message.endswith(f"(not pushed either: {kernels[1]})") and "\n" not in message
    assert kaggle["calls"] == [("push", f"{USER}/{kernels[0].name}")]


def test_the_inference_kernel_waits_for_its_training_kernels(kaggle, kernels):
    first, second = (f"{USER}/{k.name}" for k in kernels[:2])
    kaggle["status"] = {first: "COMPLETE", second: "RUNNING"}
    with pytest.raises(SystemExit, match=f"attaches the output of {second}, which has not finished .*RUNNING"):
        run(kernels[2])
    assert ("push", f"{USER}/sartorius-kit-infer") not in kaggle["calls"]
    kaggle["status"][second] = "COMPLETE"
    assert "successfully pushed" in run(kernels[2])[0]
    kaggle["status"][second] = "ERROR"
    with pytest.raises(SystemExit, match="has not finished"):
        run(kernels[2])
    assert "successfully pushed" in run("--no-source-check", kernels[2])[0]


def test_a_push_whose_kernel_sources_kaggle_could_not_attach_is_an_error(kaggle, kernels):
    kaggle["unattached"] = [f"{USER}/{kernels[0].name}"]
    with pytest.raises(SystemExit, match=r"pushed and runs now, but The following are not valid kernel sources.*"
                                         "Its run will fail"):
        run("--no-source-check", kernels[2])


def test_status_shows_each_kernel_s_state(kaggle, kernels, capsys):
    kaggle["status"] = {f"{USER}/{kernels[0].name}": "COMPLETE"}
    lines = run("--status", *kernels[:2])
    assert lines == [f'{USER}/{kernels[0].name} has status "KernelWorkerStatus.COMPLETE"',
                     f'{USER}/{kernels[1].name} has status "KernelWorkerStatus.RUNNING"']
    assert all(call[0] == "status" for call in kaggle["calls"])


def test_a_failed_client_or_a_reply_it_does_not_know_is_an_error(kernels, monkeypatch, tmp_path):
    monkeypatch.setattr(push, "run_client", lambda arguments: (1, "401 Unauthorized\n"))
    with pytest.raises(SystemExit, match=r"failed \(exit status 1\): 401 Unauthorized"):
        run(kernels[0])
    monkeypatch.setattr(push, "run_client", lambda arguments: (0, "something else\n"))
    with pytest.raises(SystemExit, match="a reply kit.push does not know, so it may not have been pushed: something"):
        run(kernels[0])
    with pytest.raises(SystemExit, match="kernel-metadata.json.*python -m kit.build_kernel"):
        run(tmp_path)


def test_without_the_kaggle_client_installed_the_error_says_how_to_install_it(kernels, monkeypatch):
    monkeypatch.setattr(push, "KAGGLE", "kaggle-client-that-is-not-installed")
    with pytest.raises(SystemExit, match="pip install kaggle"):
        run(kernels[0])


def test_kit_push_needs_only_the_standard_library():
    import subprocess

    def loaded(statement):
        probe = f"import sys; {statement}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return set(done.stdout.split())

    outside = loaded("import kit.push") - loaded("pass") - set(sys.stdlib_module_names) - {"kit"}
    assert not outside, outside
