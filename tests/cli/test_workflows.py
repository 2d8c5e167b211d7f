"""The GitHub Actions workflows and the submission docs are valid: structure, shell syntax, every
threatbench command they run parses, and the GPU job never runs a pull request's code. The scripts
are run here too, with stand-ins for `threatbench` and `gh`: a file name is never run as code, a
failure under `| tee` fails the step, a model that runs too long is stopped, and only a commit a
maintainer approved is evaluated."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark.cli import build_parser
from benchmark.intake.manifest import load_manifest

REPOSITORY = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPOSITORY / ".github" / "workflows").glob("*.yml"))
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def load_workflow(path: Path) -> dict:
    document = yaml.safe_load(path.read_text())
    if True in document:   # YAML 1.1 reads the key `on` as the boolean true
        document["on"] = document.pop(True)
    return document


def steps(document: dict):
    for name, job in document["jobs"].items():
        for step in job["steps"]:
            yield name, job, step


def as_shell(script: str) -> str:
    """The script as bash sees it after GitHub substitutes its ${{ }} expressions."""
    return EXPRESSION.sub("placeholder.yaml", script)


def _schema_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("check_jsonschema") is None,
                    reason="check-jsonschema (GitHub's workflow schema) is not installed: pip install -e '.[test]'")
def test_workflows_validate_against_githubs_workflow_schema(tmp_path):
    result = _schema_check(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOWS[0].read_text().replace("runs-on:", "runs_on:"))
    assert _schema_check(broken).returncode != 0, "the schema check can fail"


def test_both_submission_workflows_exist():
    assert [p.name for p in WORKFLOWS] == ["submission-check.yml", "submission-evaluate.yml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_structure(path):
    document = load_workflow(path)
    assert set(document) >= {"name", "on", "jobs", "permissions"}, "explicit, minimal token permissions"
    for _, job in document["jobs"].items():
        assert job["runs-on"] and isinstance(job["timeout-minutes"], int)
        assert isinstance(job["steps"], list) and job["steps"]
    for _, _, step in steps(document):
        assert ("uses" in step) != ("run" in step), f"a step has either uses or run: {step}"
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+|[0-9a-f]{40})", step["uses"]), step["uses"]
    text = path.read_text()
    assert text.count("${{") == text.count("}}"), "unbalanced ${{ }} expression"
    for expression in EXPRESSION.findall(text):
        assert re.fullmatch(r"[\w.\s'=|!&()-]+", expression.strip()), expression


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_run_script_is_valid_bash(path):
    for _, _, step in steps(load_workflow(path)):
        if "run" in step:
            result = subprocess.run(["bash", "-n", "-c", as_shell(step["run"])], capture_output=True, text=True)
            assert result.returncode == 0, f"{step.get('name')}: {result.stderr}"


def threatbench_commands(path: Path) -> list[list[str]]:
    commands = []
    for _, _, step in steps(load_workflow(path)):
        for line in as_shell(step.get("run", "")).splitlines():
            line = re.sub(r"^timeout(\s+--?\S+)*\s+\S+\s+", "", line.split("|")[0].strip())
            if line.startswith("threatbench "):
                words = shlex.split(re.sub(r'"?\$\w+"?(/[\w*.]+)*', "placeholder.yaml", line))
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_threatbench_command_in_a_workflow_parses(path):
    commands = threatbench_commands(path)
    assert commands, "each workflow runs threatbench"
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{path.name}: `threatbench {' '.join(words)}` does not parse")


def test_the_gpu_workflow_runs_trusted_code_only():
    document = load_workflow(REPOSITORY / ".github" / "workflows" / "submission-evaluate.yml")
    assert "pull_request" not in document["on"], "pull_request would run the PR's own workflow code"
    assert document["on"]["pull_request_target"]["types"] == ["labeled"]
    job = document["jobs"]["evaluate"]
    assert "evaluate" in job["if"] and job["runs-on"] == ["self-hosted", "gpu"]
    checkout = next(s for _, _, s in steps(document) if s.get("uses", "").startswith("actions/checkout"))
    assert "base.sha" in checkout["with"]["ref"] and "head" not in checkout["with"]["ref"]
    scripts = "\n".join(s.get("run", "") for _, _, s in steps(document))
    assert 'git cat-file blob "$blob"' in scripts, "manifests are read from the PR as data"
    assert "may only add submissions/<name>.yaml" in scripts
    assert "--budget full" in scripts and "threatbench leaderboard" in scripts


def test_the_readme_manifest_example_is_valid(tmp_path):
    text = (REPOSITORY / "submissions" / "README.md").read_text()
    example = next(block for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
                   if "schema: threatbench.submission/1" in block)
    path = tmp_path / "my-defense.yaml"
    path.write_text(example)
    manifest = load_manifest(path)
    assert manifest.model.preprocessing is not None and manifest.claimed["pgd"] == 58.0


def test_committed_manifests_are_valid_and_uniquely_named():
    manifests = [load_manifest(p) for p in sorted((REPOSITORY / "submissions").glob("*.yaml"))]
    assert len({m.name for m in manifests}) == len(manifests)


# ---------------------------------------------------------------- the scripts, run


CHECK = REPOSITORY / ".github" / "workflows" / "submission-check.yml"
EVALUATE = REPOSITORY / ".github" / "workflows" / "submission-evaluate.yml"


def step_script(path: Path, name: str) -> str:
    return next(s["run"] for _, _, s in steps(load_workflow(path)) if s.get("name") == name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_untrusted_values_reach_scripts_only_through_env(path):
    document = load_workflow(path)
    assert document["defaults"]["run"]["shell"] == "bash", "bash -eo pipefail, not the default bash -e"
    for _, _, step in steps(document):
        if "run" in step:
            assert "${{" not in step["run"], f"{step.get('name')}: an expression substituted into a script"
            first = next(line for line in step["run"].splitlines() if line and not line.startswith("#"))
            assert first == "set -euo pipefail", f"{step.get('name')}: starts with {first!r}"


def _fake_commands(directory: Path, **scripts: str) -> dict[str, str]:
    """An environment whose PATH finds `scripts` (name -> bash body) before the real commands."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (directory / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (directory / name).chmod(0o755)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def _run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _pull_request(tmp_path: Path, *files: str) -> Path:
    """A repository whose HEAD adds `files` to origin/main, as the check workflow sees a pull request."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "README.md").write_text("base\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    for name in files:
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text("schema: threatbench.submission/1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "submission")
    return repo


def _check_workflow(tmp_path: Path, *files: str) -> tuple[subprocess.CompletedProcess, str]:
    repo = _pull_request(tmp_path, *files)
    runner = tmp_path / "runner"
    runner.mkdir()
    log = tmp_path / "threatbench.log"
    env = _fake_commands(tmp_path / "bin", threatbench=f'printf "%s\\n" "$*" >> {shlex.quote(str(log))}')
    env.update(BASE_REF="main", RUNNER_TEMP=str(runner), GITHUB_OUTPUT=str(runner / "output"))
    listed = _run(step_script(CHECK, "List changed manifests"), repo, env)
    if listed.returncode == 0:
        _run(step_script(CHECK, "Validate (offline)"), repo, env)
    return listed, log.read_text() if log.is_file() else ""


def test_a_manifest_file_name_is_never_run_as_code(tmp_path):
    listed, calls = _check_workflow(tmp_path, "submissions/$(id>&2).yaml")
    assert listed.returncode == 1
    assert "uid=" not in listed.stdout + listed.stderr, "the file name ran `id`"
    assert ("::error::a manifest is submissions/<name>.yaml, <name> of at most 64 letters, digits, '-', '_' "
            "or '.'; rename submissions/\\$\\(id\\>\\&2\\).yaml") in listed.stdout
    assert calls == "", "nothing was validated"


def test_changed_manifests_are_handed_to_threatbench_as_arguments(tmp_path):
    listed, calls = _check_workflow(tmp_path, "submissions/robust-a.yaml", "submissions/other_one.v2.yaml")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "changed manifests: 2" in listed.stdout
    assert calls.splitlines() == ["submission validate submissions/other_one.v2.yaml",
                                  "submission validate submissions/robust-a.yaml"]


def _evaluate_step(tmp_path: Path, threatbench: str, limit: str = "20h") -> subprocess.CompletedProcess:
    runner = tmp_path / "runner"
    (runner / "submissions").mkdir(parents=True)
    (runner / "submissions" / "robust-a.yaml").write_text("")
    (runner / "evaluated.txt").write_text("submissions/robust-a.yaml: blob 0123 of commit 4567\n")
    env = _fake_commands(tmp_path / "bin", threatbench=threatbench)
    env.update(RUNNER_TEMP=str(runner), MODEL_TIME_LIMIT=limit)
    return _run(step_script(EVALUATE, "Evaluate with the full budget"), tmp_path, env)


def test_a_failed_evaluation_fails_the_step_despite_tee(tmp_path):
    result = _evaluate_step(tmp_path, 'echo "judging"; exit 2')
    assert result.returncode == 2 and "judging" in result.stdout
    summary = (tmp_path / "runner" / "summary.txt").read_text()
    assert summary.startswith("~~~text\nsubmissions/robust-a.yaml: blob 0123 of commit 4567\njudging\n")


def test_a_model_that_runs_past_the_limit_is_stopped(tmp_path):
    assert re.search(r"MODEL_TIME_LIMIT: \d+h", EVALUATE.read_text())
    result = _evaluate_step(tmp_path, "sleep 30", limit="1s")
    assert result.returncode == 124
    assert ("::error::robust-a.yaml ran past the per-model limit of 1s; finished work is checkpointed, no "
            "record was written") in result.stdout


def test_an_evaluation_within_the_limit_writes_the_summary_as_a_code_block(tmp_path):
    result = _evaluate_step(tmp_path, 'echo "worst case 52.0"')
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runner" / "summary.txt").read_text().endswith("worst case 52.0\n~~~\n")


HEAD = "a" * 40


def _approval_step(tmp_path: Path, reviews: list[dict]) -> subprocess.CompletedProcess:
    """The approval script against a stand-in `gh api` that applies the --jq filter to `reviews`."""
    reviews_file = tmp_path / "reviews.json"
    reviews_file.write_text(json.dumps(reviews))
    gh = ('while [ "$#" -gt 0 ]; do if [ "$1" = --jq ]; then filter=$2; fi; shift; done\n'
          f'jq -r "$filter" {shlex.quote(str(reviews_file))}')
    env = _fake_commands(tmp_path / "bin", gh=gh)
    runner = tmp_path / "runner"
    runner.mkdir(exist_ok=True)
    env.update(RUNNER_TEMP=str(runner), REPOSITORY="owner/threatbench", PR_NUMBER="7", HEAD_SHA=HEAD)
    return _run(step_script(EVALUATE, "Require a maintainer's approval of the head commit"), tmp_path, env)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq stands in for gh's --jq")
@pytest.mark.parametrize(("reviews", "approved"), [
    ([{"id": 1, "state": "APPROVED", "commit_id": HEAD, "author_association": "MEMBER"}], True),
    ([{"id": 1, "state": "APPROVED", "commit_id": "b" * 40, "author_association": "MEMBER"}], False),
    ([{"id": 1, "state": "APPROVED", "commit_id": HEAD, "author_association": "CONTRIBUTOR"}], False),
    ([{"id": 1, "state": "COMMENTED", "commit_id": HEAD, "author_association": "OWNER"}], False),
    ([], False),
], ids=["approved-head", "approved-older-commit", "not-a-maintainer", "not-an-approval", "no-review"])
def test_only_a_head_commit_a_maintainer_approved_is_evaluated(tmp_path, reviews, approved):
    result = _approval_step(tmp_path, reviews)
    if approved:
        assert result.returncode == 0 and f"head commit {HEAD} approved by a maintainer" in result.stdout
    else:
        assert result.returncode == 1
        assert (f"::error::no maintainer approved the head commit {HEAD}; review that commit, approve it, "
                "then add the evaluate label again") in result.stdout


def test_the_evaluated_manifest_is_the_blob_of_the_approved_commit(tmp_path):
    repo = _pull_request(tmp_path, "submissions/robust-a.yaml")
    approved = _git(repo, "rev-parse", "HEAD")
    (repo / "submissions" / "robust-a.yaml").write_text("schema: threatbench.submission/1\n# pushed later\n")
    _git(repo, "commit", "-qam", "pushed after the approval")
    _git(repo, "update-ref", "refs/pull/7/head", approved)
    _git(repo, "remote", "add", "origin", str(repo))
    runner = tmp_path / "runner"
    runner.mkdir()
    env = {**os.environ, "RUNNER_TEMP": str(runner), "BASE_SHA": _git(repo, "rev-parse", "origin/main"),
           "HEAD_SHA": approved, "PR_NUMBER": "7", "MANIFEST": ""}
    result = _run(step_script(EVALUATE, "Take the manifests from the pull request, as data only"), repo, env)
    assert result.returncode == 0, result.stdout + result.stderr
    blob = _git(repo, "rev-parse", f"{approved}:submissions/robust-a.yaml")
    assert (runner / "submissions" / "robust-a.yaml").read_text() == "schema: threatbench.submission/1\n"
    assert f"submissions/robust-a.yaml: blob {blob} of commit {approved}" in result.stdout


def test_the_submission_readme_lists_what_is_refused():
    text = (REPOSITORY / "submissions" / "README.md").read_text().split("## What is refused, and why")[1]
    for attempt in ("pni:timm:local-dir:/dir", "pni:timm:hf-hub:org/model", "`pni:` 1,500 times", "TRADES-WRN-34-10",
                    "is not an https:// link to arxiv.org", "alias bomb", "duplicate key (line 13 and line 15)",
                    "a 20 MB `license`", "model\\x00.safetensors", "<script>", "pretrained_cfg must be an object",
                    "input_size must be a list", "NaN is not a JSON number", "stored as int8",
                    "names '1.bias' twice", "submissions/$(id>&2).yaml", "no maintainer approved the head commit",
                    "per-model limit"):
        assert attempt in text, attempt
    limit = re.search(r"MODEL_TIME_LIMIT: (\d+)h", EVALUATE.read_text()).group(1)
    assert f"at most {limit} hours per model" in (REPOSITORY / "submissions" / "README.md").read_text()
