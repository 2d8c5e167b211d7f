"""The GitHub Actions workflows and the submission docs are valid: structure, shell syntax, every
threatbench command they run parses, and the GPU job never runs a pull request's code."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark.cli import build_parser
from benchmark.manifest import load_manifest

REPOSITORY = Path(__file__).resolve().parent.parent
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
            line = line.split("|")[0].strip()
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
    assert "git show \"$HEAD_SHA:$path\"" in scripts, "manifests are read from the PR as data"
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
