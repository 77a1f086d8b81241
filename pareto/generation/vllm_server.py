"""vLLM over HTTP: a client for its OpenAI-compatible server, and a context manager that starts one.

vLLM lives in its own virtual environment (scripts/vllm_env.sh builds it), so the project never imports it: the
server runs `python -m vllm.entrypoints.openai.api_server` from that environment, and this client speaks
`/v1/completions` with `model=<adapter name>` (the base model under its served name), loading adapters at start
(`--lora-modules`) or at run time (`/v1/load_lora_adapter`, which needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).

Exactness: when the client has the base model's tokenizer it renders the chat prompt and tokenizes it itself and
sends token ids, so the server sees exactly what the transformers backend feeds its model; the answer is decoded
from the returned token ids the same way. Without a tokenizer it sends text and uses the server's text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pareto.generation.interface import AdapterArg, Completion, cut_at_eos, per_prompt_adapters

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / "scripts" / "vllm_env.sh"
DEFAULT_VENV = Path.home() / ".cache" / "pareto" / "vllm-venv"


class VLLMError(RuntimeError):
    """The vLLM server refused a request, died, or never came up."""


# ---- the separate environment ------------------------------------------------------------------------------
def vllm_venv(venv: str | Path | None = None) -> Path:
    return Path(venv or os.environ.get("PARETO_VLLM_VENV") or DEFAULT_VENV)


def vllm_python(venv: str | Path | None = None) -> Path:
    """The vLLM environment's interpreter (it may not exist yet: see `ensure_vllm_env`)."""
    return vllm_venv(venv) / "bin" / "python"


def ensure_vllm_env(venv: str | Path | None = None, timeout: float = 1800) -> Path:
    """Build the vLLM environment if needed (scripts/vllm_env.sh, idempotent) and return its python.

    Raises VLLMError with the script's last lines when it fails (no network, no disk, a broken wheel).
    """
    if not ENV_SCRIPT.is_file():
        raise VLLMError(f"{ENV_SCRIPT} not found: build the vLLM env from a source checkout")
    env = {**os.environ, "PARETO_VLLM_VENV": str(vllm_venv(venv))}
    try:
        proc = subprocess.run(["bash", str(ENV_SCRIPT)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise VLLMError(f"building the vLLM env took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
        raise VLLMError(f"scripts/vllm_env.sh failed (exit {proc.returncode}):\n{tail}")
    return Path(proc.stdout.strip().splitlines()[-1])


# ---- HTTP --------------------------------------------------------------------------------------------------
def request_json(url: str, payload: dict | None = None, timeout: float = 120) -> Any:
    """GET `url` (POST `payload` as JSON when given); the decoded JSON answer (the text if it is not JSON).
    Any HTTP or connection failure is a VLLMError naming the request."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise VLLMError(f"{req.get_method()} {url} -> HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise VLLMError(f"{req.get_method()} {url} failed: {err}") from None
    try:
        return json.loads(body) if body else None
    except json.JSONDecodeError:
        return body


def load_tokenizer(name_or_path: str | Path):
    """The base model's tokenizer, set up as `pareto.models.policy.load_policy` sets it (same prompts, same ids)."""
    from transformers import AutoTokenizer

    from pareto.models.policy import CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


class VLLMServerGenerator:
    """`generate(prompts, adapter)` against a running vLLM OpenAI-compatible server.

    A batch naming several adapters becomes one request per adapter, sent concurrently, so the server's engine
    schedules them in the same batch.
    """

    def __init__(self, url: str, tokenizer: str | Path | Any | None = None, served_model: str | None = None,
                 adapters: Mapping[str, str | Path] | None = None, timeout: float = 300) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self._served_model = served_model
        self.paths: dict[str, Path] = {name: Path(p) for name, p in (adapters or {}).items()}

    # -- server state --
    def health(self) -> bool:
        try:
            request_json(f"{self.url}/health", timeout=5)
            return True
        except VLLMError:
            return False

    def wait_ready(self, timeout: float = 300, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health():
                return
            if proc is not None and proc.poll() is not None:
                raise VLLMError(f"the vLLM server exited with code {proc.returncode} before it was ready")
            time.sleep(1.0)
        raise VLLMError(f"{self.url}/health did not answer within {timeout:.0f} s")

    def models(self) -> dict[str, str | None]:
        """Served model ids -> their parent (None for the base model, the base's name for an adapter)."""
        data = request_json(f"{self.url}/v1/models", timeout=30)
        return {m["id"]: m.get("parent") for m in data["data"]}

    @property
    def served_model(self) -> str:
        if self._served_model is None:
            bases = [name for name, parent in self.models().items() if parent is None]
            if len(bases) != 1:
                raise VLLMError(f"cannot tell the base model among {bases}; pass served_model")
            self._served_model = bases[0]
        return self._served_model

    def register(self, name: str, path: str | Path) -> None:
        """Make an adapter known; it is loaded into the server the first time it is asked for."""
        self.paths[name] = Path(path)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load an adapter into the running server now (the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).

        The path is read by the server, so it must exist on the server's filesystem."""
        request_json(f"{self.url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).resolve())},
                 timeout=self.timeout)
        self.paths[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        request_json(f"{self.url}/v1/unload_lora_adapter", {"lora_name": name}, timeout=self.timeout)

    def _ensure(self, names: set[str]) -> None:
        served = self.models()
        for name in sorted(names - set(served)):
            if name not in self.paths:
                raise KeyError(f"adapter {name!r} is neither served by {self.url} ({sorted(served)}) nor registered")
            self.load_adapter(name, self.paths[name])

    # -- generation --
    def _eos_ids(self) -> list[int]:
        return [] if self.tokenizer is None else [self.tokenizer.eos_token_id]

    def _prompt(self, prompt: str) -> list[int] | str:
        if self.tokenizer is None:
            return prompt
        from pareto.models.policy import prompt_text

        return self.tokenizer(prompt_text(self.tokenizer, prompt), add_special_tokens=False)["input_ids"]

    def _complete_group(self, model: str, prompts: list[list[int] | str], max_new_tokens: int, greedy: bool,
                        temperature: float, seed: int | None, repetition_penalty: float = 1.0) -> list[dict]:
        payload: dict[str, Any] = {"model": model, "prompt": prompts, "max_tokens": max_new_tokens,
                                   "temperature": 0.0 if greedy else temperature, "return_token_ids": True,
                                   "repetition_penalty": repetition_penalty,
                                   "skip_special_tokens": True, "add_special_tokens": False}
        if seed is not None:
            payload["seed"] = seed
        data = request_json(f"{self.url}/v1/completions", payload, timeout=self.timeout)
        choices = sorted(data["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise VLLMError(f"asked {len(prompts)} completions, got {len(choices)}")
        return choices

    def complete(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[Completion]:
        names = per_prompt_adapters(adapter, len(prompts))
        if not prompts:
            return []
        self._ensure({n for n in names if n is not None})
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        encoded = [self._prompt(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:  # concurrent: one engine batch
            futures = {name: pool.submit(self._complete_group, name or self.served_model,
                                         [encoded[i] for i in idx], max_new_tokens, greedy, temperature, seed,
                                         repetition_penalty)
                       for name, idx in groups.items()}
            answers = {name: f.result() for name, f in futures.items()}
        out: list[Completion | None] = [None] * len(prompts)
        for name, idx in groups.items():
            for i, choice in zip(idx, answers[name], strict=True):
                ids = cut_at_eos(choice.get("token_ids") or [], self._eos_ids())
                text = (self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None
                        else choice["text"]).strip()
                out[i] = Completion(text, ids, name)
        return out  # type: ignore[return-value]

    def generate(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[str]:
        return [c.text for c in self.complete(prompts, adapter, max_new_tokens, greedy, temperature, seed,
                                              repetition_penalty)]


# ---- starting a server -------------------------------------------------------------------------------------
class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` from the vLLM environment, on 127.0.0.1, as a context
    manager; adapters given here are served from the start, others can be loaded at run time."""

    def __init__(self, base_model: str | Path, adapters: Mapping[str, str | Path] | None = None, *,
                 python: str | Path | None = None, host: str = "127.0.0.1", port: int | None = None,
                 served_model_name: str = "base", max_lora_rank: int = 8, max_loras: int = 2,
                 max_cpu_loras: int | None = None, max_model_len: int | None = None, dtype: str = "float32",
                 enforce_eager: bool = True, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 log_file: str | Path | None = None, startup_timeout: float = 600) -> None:
        self.base_model = str(base_model)
        self.adapters = {name: Path(p).resolve() for name, p in (adapters or {}).items()}
        self.python = Path(python) if python else vllm_python()
        self.host, self.port = host, port or _free_port(host)
        self.served_model_name = served_model_name
        n = max(len(self.adapters), max_loras)
        self.args = ["--model", self.base_model, "--served-model-name", served_model_name, "--host", host,
                     "--port", str(self.port), "--dtype", dtype, "--enable-lora", "--max-lora-rank",
                     str(max_lora_rank), "--max-loras", str(max_loras), "--max-cpu-loras", str(max_cpu_loras or n)]
        if max_model_len:
            self.args += ["--max-model-len", str(max_model_len)]
        if enforce_eager:
            self.args.append("--enforce-eager")
        if self.adapters:
            self.args += ["--lora-modules", *(f"{name}={path}" for name, path in self.adapters.items())]
        self.args += list(extra_args)
        self.env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
                    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
        self.env.pop("PYTHONPATH", None)  # the vLLM env must not see this project's packages
        if log_file is None:
            fd, log_file = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
        self.log_file = Path(log_file)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    @classmethod
    def from_export(cls, export_dir: str | Path, **kwargs: Any) -> VLLMServer:
        """Serve a `pareto export` directory: its base model and every adapter, at the manifest's rank."""
        root = Path(export_dir)
        manifest = json.loads((root / "manifest.json").read_text())
        adapters = {name: root / a["path"] for name, a in manifest["adapters"].items()}
        kwargs.setdefault("max_lora_rank", manifest.get("max_lora_rank") or 8)
        return cls(root / manifest["base_model"], adapters, **kwargs)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", *self.args]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> VLLMServer:
        if not self.python.is_file():
            raise VLLMError(f"no vLLM environment at {self.python}; build it with `bash scripts/vllm_env.sh`")
        start = time.monotonic()
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)  # its own group: stop() ends the engine too
        try:
            VLLMServerGenerator(self.url).wait_ready(self.startup_timeout, self.proc)
        except VLLMError as err:
            self.stop()
            raise VLLMError(f"{err}\n--- {self.log_file} (tail) ---\n{self.log_tail()}") from None
        self.startup_seconds = time.monotonic() - start
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this server started, nothing else
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass

    def client(self, tokenizer: str | Path | Any | None = None, **kwargs: Any) -> VLLMServerGenerator:
        """A client for this server; by default it tokenizes with the served base model's tokenizer."""
        return VLLMServerGenerator(self.url, tokenizer if tokenizer is not None else self.base_model,
                                   served_model=self.served_model_name, adapters=self.adapters, **kwargs)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # `python -m pareto.generation.vllm_server EXPORT_DIR`: serve an export until Ctrl-C
    server = VLLMServer.from_export(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000,
                                    log_file=None, startup_timeout=900)
    with server:
        print(f"serving {sys.argv[1]} at {server.url} (log {server.log_file}); Ctrl-C stops", flush=True)
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass
