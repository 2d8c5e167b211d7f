"""A real local Hugging Face Hub for tests: `olah` in offline mode serving a folder of git repositories.

`olah-cli -c configs.toml` with `offline = true` and `mirrors-path` pointing at
`<root>/mirrors/models/<owner>/<name>` (plain git repositories) answers the Hub API the real
`huggingface_hub` client uses (model_info, paths-info, resolve). Started on 127.0.0.1 on a free
port, stopped by its pid at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

OLAH_REASON = "olah (the local Hub server) is not installed: pip install -e '.[test]'"


def olah_installed() -> bool:
    return shutil.which("olah-cli") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


CONFIG = """[basic]
host = "127.0.0.1"
port = {port}
repos-path = "./repos"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["./mirrors"]

[accessibility]
offline = true
"""


class LocalHub:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> LocalHub:
        (self.root / "mirrors" / "models").mkdir(parents=True, exist_ok=True)
        (self.root / "configs.toml").write_text(CONFIG.format(port=self.port))
        log = open(self.root / "olah.log", "wb")
        self.process = subprocess.Popen(["olah-cli", "-c", "configs.toml"], cwd=self.root, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not listen on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def commit(self, repo_id: str, files: dict[str, bytes | Path], message: str = "upload") -> str:
        """Write `files` into model repository `repo_id` (created on first use); the commit's sha."""
        repo = self.root / "mirrors" / "models" / repo_id
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True)
            _git(repo, "init", "-q", "-b", "main")
        for name, content in files.items():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", message)
        return _git(repo, "rev-parse", "HEAD")
