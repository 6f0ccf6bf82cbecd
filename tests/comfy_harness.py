"""Test and benchmark helpers around a real ComfyUI 0.3.64: a writable copy of the read-only snapshot
with this pack linked into its custom_nodes/, imported in-process once per session, or started as a server."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, Optional

import torch

from pdiff_core.defaults import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(os.environ.get("COMFYUI_PATH", ROOT.parent / "shared" / "comfyui"))
PACK_NAME = "ComfyUI-PromptDiffusion"

# The test models are tiny: threads gain nothing, and on a loaded 2-core machine OpenMP's waiting
# threads made the same tests 4x slower (measured). Tests and the processes they start use one.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

_copy: Optional[Path] = None
_inprocess: Optional[Dict[str, ModuleType]] = None
_inprocess_cpu = True


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def comfyui_copy(base: Path, pipeline_dir: Optional[Path]) -> Path:
    """A writable ComfyUI copy under `base` (made once per process): this pack linked into custom_nodes/,
    the pipeline folder `pipeline_dir` (the tests' tiny one, or a benchmark's) as
    models/prompt_diffusion/pdiff-toyworld, unless None (a caller that loads its own folder: at SD1.5
    size a copy is gigabytes). The pack itself copies the templates' inputs into input/."""
    global _copy
    if _copy is None:
        if not (SNAPSHOT / "main.py").is_file():
            raise FileNotFoundError(f"no ComfyUI at {SNAPSHOT}: set COMFYUI_PATH to a ComfyUI 0.3.64 checkout")
        target = base / "ComfyUI"
        shutil.copytree(SNAPSHOT, target, ignore=shutil.ignore_patterns("__pycache__", ".git"))
        (target / "custom_nodes" / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
        if pipeline_dir is not None:
            shutil.copytree(pipeline_dir, target / "models" / "prompt_diffusion" / DEFAULT_MODEL_NAME)
        _copy = target
    return _copy


def import_comfyui(comfy_dir: Path, cpu: bool = True) -> Dict[str, ModuleType]:
    """ComfyUI from `comfy_dir` imported into this process (once) by the headless runner's boot, on the
    CPU unless `cpu` is False (then on the device ComfyUI picks). On the CPU the text encoder runs in
    fp32 so that its numbers can be compared with the diffusers pipeline's (ComfyUI's CPU default
    stores it in fp16)."""
    global _inprocess, _inprocess_cpu
    if _inprocess is None:
        _inprocess = load_runner().boot_comfyui(comfy_dir, cpu=cpu, fp32_text_encoder=cpu)
        _inprocess_cpu = cpu
    elif _inprocess_cpu != cpu:
        raise RuntimeError(
            f"ComfyUI is already imported in this process with cpu={_inprocess_cpu}; it cannot switch to cpu={cpu}"
        )
    return _inprocess


def pack_module(nodes_module: ModuleType, name: str) -> ModuleType:
    """A submodule of this pack as ComfyUI loaded it (e.g. 'control' -> <pack>.nodes.control)."""
    loaded = nodes_module.NODE_CLASS_MAPPINGS["PDiff_ApplyPromptDiffusion"].__module__
    return sys.modules[loaded.rsplit(".", 1)[0] + "." + name]


def load_file_module(name: str, path: Path) -> ModuleType:
    """A script of the project (not a package module) imported as `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_runner() -> ModuleType:
    """scripts/run_workflow.py as a module."""
    return load_file_module("pdiff_run_workflow", ROOT / "scripts" / "run_workflow.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """Terminate `process` if it still runs, and kill it if it does not end within `timeout` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class ComfyServer:
    """`main.py --cpu` on a free port; `stop()` always ends it (terminate, then kill)."""

    def __init__(self, comfy_dir: Path, log_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        self._log = open(log_file, "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "main.py",
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-auto-launch",
                "--dont-print-server",
            ],
            cwd=comfy_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=ONE_THREAD_ENV,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_file.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def post(self, path: str, payload: Any) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise AssertionError(f"POST {path} -> {err.code}: {err.read().decode(errors='replace')}") from err

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running {prompt_id}:\n{self.log()[-3000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@contextlib.contextmanager
def running_server(comfy_dir: Path, log_file: Path, timeout: float) -> Iterator[ComfyServer]:
    """A ComfyServer that has answered within `timeout` s; stopped on the way out, ready or not."""
    server = ComfyServer(comfy_dir, log_file)
    try:
        server.wait_ready(timeout=timeout)
        yield server
    finally:
        server.stop()
