"""One runtime worker process: ``python -m runtime_adapters`` on a Unix socket in a private
directory, with a scrubbed environment, an unprivileged user (when the instance is root) and
an address-space limit.

What the worker gets: ``PATH``, locale, ``PYTHONPATH`` pointing at the code, ``HOME`` = its
private directory, and the ``MODELMUX_ADAPTER_*`` / ``MODELMUX_RUNTIME_*`` values the
supervisor passes explicitly. Nothing else of the instance's environment (no store or storage
credentials, no cloud keys) reaches it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pwd
import resource
import shutil
import signal
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import runtime_adapters

log = logging.getLogger(__name__)

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def worker_env(extra: Mapping[str, str], home: Path) -> dict[str, str]:
    """The scrubbed environment of a worker: a fixed allow-list plus ``extra``."""
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env["HOME"] = str(home)
    # the code, then this interpreter's packages (the worker may run another build of the same
    # Python when ours is not readable by the runtime user)
    paths = [str(Path(runtime_adapters.__file__).resolve().parents[1])]
    for key in ("purelib", "platlib"):
        lib = sysconfig.get_paths()[key]
        if lib not in paths:
            paths.append(lib)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def unprivileged_ids(user: str) -> tuple[int, int] | None:
    """(uid, gid) to run workers as: ``user``'s when this process is root, else None (run as us)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError as exc:
        raise RuntimeError(f"the instance runs as root but runtime user '{user}' does not exist") from exc
    if pw.pw_uid == 0:
        raise RuntimeError(f"runtime user '{user}' is root")
    return pw.pw_uid, pw.pw_gid


def usable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` can reach and read+execute ``path`` (every directory above it searchable)."""

    def allowed(p: Path, need: int) -> bool:
        st = p.stat()
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return bits & need == need

    try:
        real = path.resolve(strict=True)
        return all(allowed(d, 1) for d in real.parents) and allowed(real, 5) and stat.S_ISREG(real.stat().st_mode)
    except OSError:
        return False


def worker_python(configured: str, ids: tuple[int, int] | None) -> str:
    """The interpreter of a worker: the configured one, else ours when the runtime user can run it,
    else a system build of the same Python version (ours may live under root's home)."""
    if configured:
        return configured
    if ids is None or usable_by(Path(sys.executable), *ids):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for folder in ("/usr/local/bin", "/usr/bin"):
        candidate = Path(folder) / version
        if usable_by(candidate, *ids):
            return str(candidate)
    raise RuntimeError(
        f"the runtime user cannot run {sys.executable} and no {version} is readable by it; "
        "set MODELMUX_RUNTIMES_PYTHON"
    )


class WorkerProcess:
    """A started worker; :meth:`start` returns once it accepts calls."""

    def __init__(
        self,
        name: str,
        *,
        module: str,
        env: Mapping[str, str],
        memory_limit_bytes: int,
        user: str,
        start_timeout_s: float,
        python: str = "",
        frames: bool = True,
    ) -> None:
        self._python = python
        self.name = name
        self._module = module
        self._extra_env = dict(env)
        self._limit = memory_limit_bytes
        self._user = user
        self._start_timeout_s = start_timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix=f"mm-{name}-"))
        self.address = f"unix:{self.dir / 'runtime.sock'}"
        self.frames_path = str(self.dir / "frames.sock") if frames else ""
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._readers: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        ids = unprivileged_ids(self._user)
        if ids is not None:
            os.chown(self.dir, *ids)
        os.chmod(self.dir, 0o700)
        limit = self._limit
        command = [
            worker_python(self._python, ids),
            "-m",
            self._module,
            "--address",
            self.address,
            "--log-level",
            "WARNING",
            *(("--frames", self.frames_path) if self.frames_path else ()),
        ]
        switch_user: dict[str, Any] = {}
        if ids is not None:
            setpriv = shutil.which("setpriv")
            if setpriv is not None:
                # util-linux's setpriv takes the runtime user's ids (no supplementary groups) and
                # execs the worker: no Python between fork and exec, and any event loop (uvloop's
                # subprocess_exec has no user / group arguments)
                command = [setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", "--", *command]
            elif type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
                raise RuntimeError(
                    f"runtime {self.name} must run as user '{self._user}', and on uvloop only util-linux's setpriv "
                    "can switch to it: install setpriv, or set MODELMUX_EVENT_LOOP=asyncio"
                )
            else:  # asyncio's own loop does the switch itself
                switch_user = {"user": ids[0], "group": ids[1], "extra_groups": []}
        in_child: Callable[[], None] | None = None
        prlimit = shutil.which("prlimit")
        if prlimit is not None:
            # util-linux's prlimit lowers its own limits (soft and hard: model code cannot raise
            # them again; lowering one's own needs no privilege) and execs the worker, so no Python
            # code runs between fork and exec in this process, whose gRPC threads make that unsafe
            # (seen: a segfault in threading's after-fork hook of the child)
            command = [prlimit, *((f"--as={limit}:{limit}",) if limit else ()), "--core=0:0", "--", *command]
        else:

            def in_child() -> None:
                # between fork and exec (after the switch to the runtime user when the loop makes it)
                if limit:
                    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        self.proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=worker_env(self._extra_env, self.dir),
            cwd=str(self.dir),
            preexec_fn=in_child,
            start_new_session=True,
            **switch_user,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers.append(asyncio.create_task(self._drain_stderr(self.proc.stderr)))
        try:
            await asyncio.wait_for(self._wait_listening(self.proc.stdout), self._start_timeout_s)
        except BaseException:
            await self.kill()
            raise
        self._readers.append(asyncio.create_task(self._drain(self.proc.stdout)))

    async def _wait_listening(self, stdout: asyncio.StreamReader) -> None:
        while True:
            line = await stdout.readline()
            if not line:
                code = await self.proc.wait() if self.proc else None
                raise RuntimeError(f"runtime {self.name} exited while starting ({describe_exit(code)}): {self.tail()}")
            if line.startswith(b"listening on"):
                return

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            line = await stream.readline()
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip()
            self.stderr_tail.append(text)
            log.debug("runtime %s: %s", self.name, text)

    def tail(self) -> str:
        return " | ".join(list(self.stderr_tail)[-3:])

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        """SIGKILL (resumes a stopped worker too), reap it, remove its directory."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                await self.proc.wait()
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        await asyncio.to_thread(shutil.rmtree, self.dir, True)

    async def stop(self, grace_s: float = 5.0) -> None:
        self.signal(signal.SIGTERM)
        if self.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace_s)
        await self.kill()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
