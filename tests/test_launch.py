"""Launch scripts: --dry-run prints every command and runs none; with a stub gcloud on PATH that records
its arguments and plays back states, each verb issues exactly the expected command lines."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = str(REPO / "launch" / "tpu_vm.sh")
GPU = str(REPO / "launch" / "gpu_host.sh")
CMD = ["python", "-m", "jax_distill.train", "--config", "configs/train/tiny.py"]

STUB = r"""#!/usr/bin/env bash
# records each call (arguments separated by \x1f, calls by \x1e) and plays back scripted answers
{ printf '%s\x1f' "$@"; printf '\x1e'; } >> "$STUB_DIR/calls"
pop() {  # first line of a script file (empty when exhausted), removed from the file
  local f="$STUB_DIR/$1"; [ -s "$f" ] || return 0
  head -n1 "$f"; tail -n +2 "$f" > "$f.rest"; mv "$f.rest" "$f"
}
case "$*" in
  *"tpu-vm describe"*) s=$(pop states); [ -n "$s" ] && [ "$s" != ABSENT ] || exit 1; echo "$s" ;;
  *"queued-resources describe"*) pop queued ;;
  *"tpu-vm ssh"*) rc=$(pop ssh_rc); echo "ran on all workers"; exit "${rc:-0}" ;;
esac
"""


@pytest.fixture
def stub(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(STUB)
    (bin_dir / "gcloud").chmod(0o755)

    def launch(*args, states=(), queued=(), ssh_rc=(), **env):
        (tmp_path / "calls").unlink(missing_ok=True)
        for name, lines in (("states", states), ("queued", queued), ("ssh_rc", ssh_rc)):
            (tmp_path / name).write_text("".join(f"{x}\n" for x in lines))
        full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_DIR": str(tmp_path),
                    "TMPDIR": str(tmp_path), "POLL_S": "0", "RETRY_S": "0", **env}
        out = subprocess.run(["bash", *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=120)
        raw = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
        return out, [call.split("\x1f")[:-1] for call in raw.split("\x1e")[:-1]]

    return launch


def _gcloud(*args):
    return ["compute", "tpus", *args]


def test_dry_run_prints_every_command_and_runs_none(stub):
    for verb in (["create", "n", "z", "v4-8", "--spot"], ["create", "n", "z", "v4-8", "--queued"],
                 ["run", "n", "z", "--", *CMD], ["until-done", "n", "z", "v4-8", "--", *CMD], ["delete", "n", "z"]):
        out, calls = stub(TPU, "--dry-run", *verb)
        assert out.returncode == 0, out.stderr
        assert calls == [], f"{verb}: dry run called gcloud"
        printed = [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]
        assert printed and all(p[0] in ("gcloud", "tar") for p in printed)
    out, _ = stub(TPU, "--dry-run", "until-done", "n", "z", "v4-8", "--", *CMD)
    order = [line.split()[5] if "tpus" in line else line.split()[1] for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert order == ["describe", "create", "tar", "scp", "ssh"]


def test_create_with_and_without_spot(stub):
    version = "tpu-ubuntu2204-base"
    _, calls = stub(TPU, "create", "n", "us-z", "v5litepod-64")
    assert calls == [_gcloud("tpu-vm", "create", "n", "--zone", "us-z", "--accelerator-type", "v5litepod-64",
                             "--version", version)]
    _, calls = stub(TPU, "create", "n", "us-z", "v5litepod-64", "--spot")
    assert calls[0][-1] == "--spot"


def test_create_queued_waits_until_active(stub):
    out, calls = stub(TPU, "create", "n", "z", "v5p-8", "--queued", "--spot",
                      queued=["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])
    assert out.returncode == 0, out.stderr
    assert calls[0] == _gcloud("queued-resources", "create", "n", "--node-id", "n", "--zone", "z",
                               "--accelerator-type", "v5p-8", "--runtime-version", "tpu-ubuntu2204-base", "--spot")
    assert [c[3] for c in calls[1:]] == ["describe"] * 3
    out, _ = stub(TPU, "create", "n", "z", "v5p-8", "--queued", queued=["FAILED"])
    assert out.returncode != 0 and "queued resource n is FAILED" in out.stderr


def test_run_sends_the_same_command_to_all_workers(stub):
    out, calls = stub(TPU, "run", "n", "z", "--", *CMD, "--config.train.run_dir=runs/a b")
    assert out.returncode == 0, out.stderr
    scp, ssh = calls
    assert scp[:4] == _gcloud("tpu-vm", "scp") and "--worker=all" in scp
    assert ssh[:5] == _gcloud("tpu-vm", "ssh", "n") and "--worker=all" in ssh
    remote = ssh[ssh.index("--command") + 1]
    assert shlex.split(remote.splitlines()[-1].strip()) == [".venv/bin/" + CMD[0], *CMD[1:], "--config.train.run_dir=runs/a b"]


def test_until_done_recreates_a_preempted_slice_and_reruns_until_success(stub):
    out, calls = stub(TPU, "until-done", "n", "z", "v4-32", "--", *CMD, states=["PREEMPTED", "READY"], ssh_rc=[1, 0])
    assert out.returncode == 0, out.stderr
    verbs = [" ".join(c[2:4]) for c in calls]
    assert verbs == ["tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh",
                     "tpu-vm describe", "tpu-vm scp", "tpu-vm ssh"]
    assert calls[2][-1] == "--spot"
    assert "attempt 1 failed" in out.stderr


def test_until_done_gives_up_after_max_attempts(stub):
    out, calls = stub(TPU, "until-done", "n", "z", "v4-32", "--", *CMD, states=["ABSENT"] * 3, ssh_rc=[255] * 3,
                      MAX_ATTEMPTS="2")
    assert out.returncode == 1 and "gave up after 2 attempts" in out.stderr
    assert sum(c[3] == "ssh" for c in calls) == 2


def test_delete(stub):
    _, calls = stub(TPU, "delete", "n", "z")
    assert calls == [_gcloud("tpu-vm", "delete", "n", "--zone", "z", "--quiet")]
    _, calls = stub(TPU, "delete", "n", "z", "--queued")
    assert calls == [_gcloud("queued-resources", "delete", "n", "--zone", "z", "--force", "--quiet")]


def test_gpu_host_dry_run(stub):
    out, _ = stub(GPU, "--dry-run", "3", "8", "generate", "configs/traces/generate.py", "--config.out_dir=x")
    assert out.returncode == 0, out.stderr
    last = shlex.split(out.stdout.splitlines()[-1][2:])
    assert last[1:] == ["-m", "jax_distill.traces.generate", "--config", "configs/traces/generate.py",
                        "--config.shard=3/8", "--config.out_dir=x"]
    out, _ = stub(GPU, "--dry-run", "0", "1", "train", "c.py")
    assert out.returncode == 2 and "unknown stage" in out.stderr


def test_shell_scripts_pass_shellcheck():
    tracked = subprocess.run(["git", "ls-files", "*.sh", ".ci/run"], cwd=REPO, capture_output=True, text=True).stdout
    scripts = [str(REPO / p) for p in tracked.split()]
    assert len(scripts) >= 4
    shellcheck = Path(os.sys.executable).parent / "shellcheck"
    out = subprocess.run([str(shellcheck), *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
