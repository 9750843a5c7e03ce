"""Vercel: a real `vercel build` of this checkout (`make vercel-build`: the pinned CLI and uv, a Python 3.12, no
account), the function it makes, and that function served from its read-only folder against PostgreSQL, both by the
bundle's own uvicorn and through Vercel's Python runtime (README "Deploying to Vercel")."""
import ast
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, LiveServer, _drop_schema, _pg_schema_url, free_port, require, require_postgres, wait_until

SIZE_LIMIT = 250 * 1000 * 1000  # Vercel's limit for a function's files, uncompressed
PAGE_ASSETS = {"/static/vendor/htmx.min.js", "/static/vendor/pico.min.css", "/static/app.css"}
DEPENDENCIES = ("uvicorn", "fasthtml", "starlette", "psycopg", "openai")
FIND_DEPENDENCIES = f"import importlib.util\nfor name in {DEPENDENCIES}: print(importlib.util.find_spec(name).origin)"
NOT_SHIPPED = ("tests", "bench", ".ci", "data", ".venv", ".tools", ".hypothesis", ".pytest_cache", ".ruff_cache", ".git",
               ".vercel", ".env", "env.example", "requirements-dev.txt", "pytest.ini")


@dataclass
class Build:
    output: Path  # the Build Output API folder (.vercel/output)
    func: Path  # the one function in it
    python: str  # the Python 3.12 it was built with, which runs it here
    modules: set[str]  # this checkout's top-level modules when the build started
    static: set[str]  # and its static files


def _make(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def build() -> Iterator[Build]:
    "One `make vercel-build` per session (about 20 s; the first on a machine downloads about 80 MB from PyPI)."
    require("make", bool(shutil.which("make")), "apt-get install -y make")
    check = _make("-s", "vercel-check")
    require("what `vercel build` needs", check.returncode == 0,
            " / ".join((check.stdout.strip() or check.stderr.strip()).splitlines()) + " (.ci/run installs all of it)")
    python = subprocess.run(["bash", "tests/vercel_build.sh", "--python"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    modules = {path.name for path in ROOT.glob("*.py")}
    static = {path.relative_to(ROOT).as_posix() for path in (ROOT / "static").rglob("*")
              if path.is_file() and ".pack" not in path.parts}
    # Not in pytest's tmp folders: the user `nobody` could not reach into those to run the function.
    folder = Path(tempfile.mkdtemp(prefix="vercel-build-"))
    folder.chmod(0o755)
    output = folder / "output"
    try:
        result = _make("vercel-build", f"VERCEL_OUT={output}", timeout=900)
        assert result.returncode == 0, f"make vercel-build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        functions = sorted((output / "functions").rglob("*.func"))
        assert len(functions) == 1, f"expected one function, the app; got {functions}"
        yield Build(output, functions[0], python, modules, static)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)
        shutil.rmtree(folder)


def test_build_makes_one_python_function_whose_entrypoint_is_the_app(build):
    config = json.loads((build.output / "config.json").read_text())
    assert config["version"] == 3
    name = build.func.relative_to(build.output / "functions").as_posix().removesuffix(".func")
    assert any(route.get("src") == "/(.*)" and route.get("dest") == f"/{name}" for route in config["routes"]), \
        "every path goes to the app"

    vc_config = json.loads((build.func / ".vc-config.json").read_text())
    assert vc_config["handler"] == "vc__handler__python.vc_handler"
    assert vc_config["runtime"] == "python3.12"
    assert vc_config["environment"]["PYTHONPATH"] == "_vendor"
    assert vc_config["supportsResponseStreaming"] is True, "the progress streams need streamed responses"
    wanted = json.loads((ROOT / "vercel.json").read_text())["functions"]["app.py"]["maxDuration"]
    assert vc_config["maxDuration"] == wanted <= 300, "vercel.json's maxDuration, within every plan's limit (300 s)"

    handler = (build.func / "vc__handler__python.py").read_text()
    for variable, value in {"__VC_HANDLER_ENTRYPOINT": "app.py", "__VC_HANDLER_MODULE_NAME": "app",
                            "__VC_HANDLER_VARIABLE_NAME": "app", "__VC_HANDLER_VENDOR_DIR": "_vendor"}.items():
        assert f'"{variable}": "{value}"' in handler
    assert "from vercel_runtime.vc_init import vc_handler" in handler
    assert (build.func / "_vendor/vercel_runtime/vc_init.py").is_file()
    app_module = ast.parse((build.func / "app.py").read_text())
    assert any(isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "app" for target in node.targets)
               for node in app_module.body), "app.py defines `app` at top level"
    assert build.modules <= {path.name for path in build.func.glob("*.py")}, "every module of the app is in the function"


def test_bundle_has_the_static_files_the_page_references(build):
    for path in {asset.lstrip("/") for asset in PAGE_ASSETS} | build.static:
        assert (build.func / path).is_file() and (build.func / path).stat().st_size > 0, path


def test_bundle_leaves_out_what_a_function_does_not_need(build):
    shipped = {path.name for path in build.func.iterdir()}
    assert not shipped & set(NOT_SHIPPED)
    assert not (build.func / "static/vendor/.pack").exists()
    assert not list(build.func.rglob(".sesskey")), "the local session key must never ship"
    assert not [path for path in build.func.rglob("__pycache__") if "_vendor" not in path.parts]


def test_bundle_is_under_vercels_size_limit(build):
    files = [path for path in build.func.rglob("*") if path.is_file() and not path.is_symlink()]
    size = sum(path.stat().st_size for path in files)
    assert size < SIZE_LIMIT, f"{size / 1e6:.0f} MB in {len(files)} files"


# --- the built function, served ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def read_only_func(build):
    """The built function, made read-only in place as Vercel's /var/task is (a copy of its 5,000 files would take
    seconds more; the build is this module's own, and nothing after these tests writes to it)."""
    subprocess.run(["chmod", "-R", "a-w,a+rX", str(build.output)], check=True)
    yield build.func
    subprocess.run(["chmod", "-R", "u+w", str(build.output)], check=True)


def _unprivileged(python: str) -> tuple[str, ...]:
    "A command prefix that runs `python` without the power to write where file permissions say no."
    if os.geteuid() != 0: return ()
    require("setpriv", bool(shutil.which("setpriv")), "apt-get install -y util-linux (to run without privileges)")
    nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    if subprocess.run([*nobody, python, "-c", ""], check=False, capture_output=True).returncode == 0: return nobody
    # The Python sits where `nobody` cannot reach (pyenv under /root): stay root, but with no capability at all, so
    # that file permissions apply as to anyone (CAP_DAC_OVERRIDE is what lets root write to a read-only folder).
    return ("setpriv", "--bounding-set=-all", "--inh-caps=-all")


@pytest.fixture
def postgres_url():
    require_postgres()
    schema, url = asyncio.run(_pg_schema_url())
    yield url
    asyncio.run(_drop_schema(schema))


def _tables_in(url: str) -> int:
    import psycopg
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").fetchone()[0]


def _function_env(func: Path, database_url: str, **extra) -> dict[str, str]:
    "What the function gets on Vercel (.vc-config.json's environment, with PYTHONPATH made absolute), and the app's variables."
    environment = json.loads((func / ".vc-config.json").read_text())["environment"]
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            **environment, "PYTHONPATH": str(func / environment["PYTHONPATH"]),
            "VERCEL": "1", "SESSION_SECRET": secrets.token_hex(32), "DATABASE_URL": database_url,
            "ALLOWED_HOSTS": "127.0.0.1", **extra}


class BundleServer(LiveServer):
    """The function's app under the bundle's own uvicorn: `python3.12 -m uvicorn app:app` in the function folder.
    (LiveServer runs this repo's scripts with the test's interpreter; the bundle needs its Python 3.12.)"""

    def __init__(self, log_dir: Path, func: Path, python: str, wrapper: tuple[str, ...], env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"bundle-{self.port}.log", "w+")  # noqa: SIM115 (as LiveServer's)
        self.process = subprocess.Popen([*wrapper, python, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
                                         "--port", str(self.port)], cwd=func, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self):
        # A cold start without .pyc files (the bundle has none, and cannot write any) takes a few seconds.
        try: wait_until(lambda: self.process.poll() is not None or self.answers("/health"), timeout=60, interval=0.2)
        except AssertionError: pass
        if self.process.poll() is not None or not self.answers("/health"):
            self.stop()
            raise RuntimeError("the built function did not start:\n" + self.output())


class RuntimeServer(BundleServer):
    """The function as Vercel starts it: `import vc__handler__python` (Vercel's runtime, vercel_runtime.vc_init), which
    serves the app with its own uvicorn on a free port and announces it with a `server-started` message on the Unix
    socket VERCEL_IPC_PATH; later messages (logs, request start and end) are kept in `messages`."""

    def __init__(self, log_dir: Path, func: Path, python: str, wrapper: tuple[str, ...], env: dict[str, str]):
        self.log = open(log_dir / f"runtime-{id(self)}.log", "w+")  # noqa: SIM115 (as LiveServer's)
        self.messages: list[dict] = []
        self._ipc_dir = tempfile.mkdtemp(prefix="vc-ipc-")
        os.chmod(self._ipc_dir, 0o711)
        ipc_path = os.path.join(self._ipc_dir, "ipc.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(ipc_path)
        os.chmod(ipc_path, 0o777)
        self._listener.listen(1)
        self._listener.settimeout(60)
        module = json.loads((func / ".vc-config.json").read_text())["handler"].rsplit(".", 1)[0]
        self.process = subprocess.Popen([*wrapper, python, "-c", f"import {module}"], cwd=func,
                                        env={**env, "VERCEL_IPC_PATH": ipc_path, "LAMBDA_TASK_ROOT": str(func)},
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self._started = threading.Event()
        threading.Thread(target=self._read_messages, daemon=True).start()
        if not self._started.wait(60) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"the runtime did not announce a server; IPC: {self.messages}\n" + self.output())
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _read_messages(self):
        try: connection, _ = self._listener.accept()
        except OSError: return
        buffer = b""
        while chunk := connection.recv(65536):
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                self.messages.append(message)
                if message.get("type") == "server-started":
                    self.port = message["payload"]["httpPort"]
                    self._started.set()

    def stop(self):
        super().stop()
        self._listener.close()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)


class _Assets(HTMLParser):
    "The scripts and stylesheets a page loads."

    def __init__(self, html: str):
        super().__init__()
        self.found: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"): self.found.append(attrs["src"])
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "").split(): self.found.append(attrs["href"])


def _serves_the_page_and_queues(server: LiveServer, func: Path):
    page = httpx2.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "Queue Task" in page.text
    assets = _Assets(page.text).found
    assert PAGE_ASSETS <= set(assets)
    for asset in assets:
        assert asset.startswith("/static/"), f"the page loads {asset} from elsewhere than the deployment"
        answer = httpx2.get(server.url + asset, timeout=10)
        assert answer.status_code == 200, asset
        assert answer.content == (func / asset.lstrip("/")).read_bytes(), asset
    assert httpx2.get(server.url + "/health", timeout=10).status_code == 200
    queued = httpx2.post(server.url + "/api/queue", json={"prompt": "Write a haiku about tides"}, timeout=30)
    assert queued.status_code == 202, queued.text
    assert httpx2.get(f"{server.url}/api/status/{queued.json()['id']}", timeout=10).status_code == 200


@pytest.mark.postgres
def test_built_function_serves_the_page_from_its_read_only_folder(build, read_only_func, postgres_url, tmp_path):
    wrapper = _unprivileged(build.python)
    probe = subprocess.run([*wrapper, "touch", str(read_only_func / "probe")], check=False, capture_output=True)
    assert probe.returncode != 0, "the server would be able to write to its folder"
    env = _function_env(read_only_func, postgres_url)
    found = subprocess.run([*wrapper, build.python, "-c", FIND_DEPENDENCIES], check=False, cwd=read_only_func, env=env,
                           capture_output=True, text=True)
    origins = found.stdout.split()
    assert len(origins) == len(DEPENDENCIES) and all(origin.startswith(f"{read_only_func}/_vendor/") for origin in origins), \
        "the app's dependencies come from the bundle: " + found.stdout + found.stderr
    before = sorted(path.name for path in read_only_func.iterdir())
    server = BundleServer(tmp_path, read_only_func, build.python, wrapper, env)
    try:
        _serves_the_page_and_queues(server, read_only_func)
    finally:
        server.stop()
    assert _tables_in(postgres_url) > 0, "the app kept its tasks in PostgreSQL"
    assert sorted(path.name for path in read_only_func.iterdir()) == before


@pytest.mark.postgres
def test_built_function_serves_the_page_through_vercels_runtime(build, read_only_func, postgres_url, tmp_path):
    env = _function_env(read_only_func, postgres_url, VERCEL_ENV="preview", VERCEL_URL="app-test.vercel.app")
    server = RuntimeServer(tmp_path, read_only_func, build.python, _unprivileged(build.python), env)
    try:
        _serves_the_page_and_queues(server, read_only_func)
        assert httpx2.get(server.url + "/_vercel/ping", timeout=10).status_code == 200
        with_host = httpx2.get(server.url + "/", headers={"Host": "app-test.vercel.app"}, timeout=10)
        assert with_host.status_code == 200, "the deployment's own host name (VERCEL_URL) is allowed"
        wait_until(lambda: any(message.get("type") == "end" for message in server.messages), timeout=10)
    finally:
        server.stop()
