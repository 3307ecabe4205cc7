"""A distillation run is a folder: a lock, a recorded config, a training state, a log and checkpoints.

The folder is what makes a run safe to stop, kill and resume:
- the lock (an OS file lock, released by the kernel when the process dies, so a killed run leaves no stale
  lock) refuses a second process writing into the same folder;
- `config.json` and the state's config are the contract `--resume` checks (ganzip.config.recipe_changes);
- `log.jsonl` is append-only, one JSON object per line; a line torn by a kill or a full disk is dropped on read,
  lines past the last save are dropped on resume, and a fresh run starts a fresh log;
- every file is written atomically; temporary files a killed save left behind are removed at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ganzip import checkpoint, config
from ganzip.atomic import torch_save, write_text
from ganzip.errors import UserError, setting
from ganzip.paths import check_writable_folder

STATE_FILE = "train_state.pth"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
BEST_FILE = "best.pth"
LOCK_FILE = ".lock"
STATE_FORMAT, STATE_VERSION = "ganzip-train", 2


class NonFiniteLoss(UserError):
    pass


class Stopped(UserError):
    """A run stopped by SIGINT/SIGTERM; the CLI exits with 128 + the signal number, as shells do. Under torchrun
    every rank stops, and rank 0 alone says so (`quiet` on the others): one line for one Ctrl-C."""

    def __init__(self, message: str, signum: int, quiet: bool = False):
        super().__init__(message)
        self.exit_code, self.quiet = 128 + signum, quiet


class PeerLost(UserError):
    """Another process of a torchrun run died (killed, out of memory): this one cannot go on alone. Not bad input,
    so the exit code is 1; the run resumes from its last save."""

    exit_code = 1


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def peer_lost(error: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (gloo and NCCL say so in these words)."""
    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(error, backend_error) or any(text in str(error) for text in _PEER_GONE)


class StopSignals:
    """SIGINT/SIGTERM ask the run to stop after the step in flight (and save); a second Ctrl-C stops at once.

    Installed before anything slow starts (pruning included), so no signal finds the default handler. Under
    torchrun each rank installs them: the launcher forwards a Ctrl-C to every rank, but a signal may also reach
    one rank alone, or each at its own moment, so the ranks agree on when to stop (`agreed`).
    """

    def __init__(self, rank: int = 0, world: int = 1, device: str = "cpu"):
        self.rank, self.world, self.device, self.signum = rank, world, device, None
        self._previous: dict[int, Any] = {}

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        stopping = self.world > 1 and exc_type is not None and issubclass(exc_type, Stopped)
        for sig, handler in self._previous.items():
            # Once one rank has exited, torchrun sends SIGTERM to the rest, which must still say their line and exit
            # with their own code: ignored, not handled, since Python resets its handlers to the default (death)
            # while the interpreter shuts down, which a loaded machine can make last long enough to be hit.
            signal.signal(sig, signal.SIG_IGN if stopping else handler)

    def agreed(self) -> int | None:
        """The signal the run stops for after this step, the same on every rank, or None to go on.

        One all-reduce (the largest signal number any rank caught) per step: every rank stops after the same
        step, so the state rank 0 saves is the one each rank holds. A signal caught while the flags are reduced
        counts at the next step.
        """
        if self.world == 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if (signum := int(flag.item())) != 0:
            self.signum = signum
        return signum or None

    def check(self, where: str) -> None:
        """Raise Stopped if a stop was requested; `where` says what was saved ('at step 9; saved to ...')."""
        if self.signum is not None:
            raise Stopped(f"stopped by {signal.Signals(self.signum).name} {where}", self.signum, quiet=self.rank != 0)


class RunFolder:
    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # under torchrun only rank 0 writes; the others only read
        self._lock_fd: int | None = None

    state = property(lambda self: self.path / STATE_FILE)
    log = property(lambda self: self.path / LOG_FILE)
    config = property(lambda self: self.path / CONFIG_FILE)
    best = property(lambda self: self.path / BEST_FILE)
    samples = property(lambda self: self.path / "samples")

    # --- the lock ------------------------------------------------------------------------------------------

    def __enter__(self) -> "RunFolder":
        if not self.writer:
            return self
        self._created = not self.path.exists()
        check_writable_folder(self.path, setting("out_dir"))
        self._lock_fd = _lock(self.path / LOCK_FILE)
        self._remove_stale_temporaries()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None
            if exc_type is not None and self._created:
                self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """A run refused before it wrote anything leaves no folder behind holding only its lock file."""
        with contextlib.suppress(OSError):
            if {p.name for p in self.path.iterdir()} <= {LOCK_FILE}:
                (self.path / LOCK_FILE).unlink(missing_ok=True)
                self.path.rmdir()

    def _remove_stale_temporaries(self) -> None:
        """`.NAME.xxxx.tmp` files are saves a kill interrupted (atomic.py); with the lock held none is in flight."""
        for folder in (self.path, self.samples):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    # --- state ---------------------------------------------------------------------------------------------

    def save_state(self, payload: dict) -> None:
        torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, **payload}, self.state)

    def load_state(self) -> dict:
        state = checkpoint.read(self.state)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(f"{self.state} is not a ganzip training state; remove it or choose "
                            f"another {setting('out_dir')}")
        if state.get("version") != STATE_VERSION:
            raise UserError(f"{self.state} was written by an older ganzip (training state version "
                            f"{state.get('version')}, this one reads {STATE_VERSION}) whose recipe differs; its "
                            f"student.pth is usable, but start a new run in another {setting('out_dir')} to "
                            f"train further")
        missing = [k for k in ("step", "student", "disc", "opt_g", "opt_d", "rng", "config", "meta") if k not in state]
        if missing:
            raise damaged_state(self.state, f"is incomplete (no {', '.join(missing)})")
        if (wrong := _malformed(state)) is not None:
            raise damaged_state(self.state, f"holds {wrong}")
        return state

    def check_contract(self, cfg: config.DistillConfig, state: dict, teacher_sha: str) -> None:
        """A resumed run must be the same run: same teacher, same recipe, and only more steps."""
        if state["meta"].get("teacher_sha256") != teacher_sha:
            raise UserError(f"{self.state} was trained from a different teacher; use that teacher or another "
                            f"{setting('out_dir')}")
        changes = config.recipe_changes(state["config"], cfg)
        if changes:
            raise UserError(f"{self.path} was trained with another recipe ({'; '.join(changes)}); resume with the "
                            f"run's own flags (recorded in {self.config}) or choose another {setting('out_dir')}")
        if cfg.steps < int(state["step"]):
            raise UserError(f"{setting('steps', cfg.steps)} is below the {state['step']} steps {self.path} has "
                            f"already trained; {setting('steps')} can only grow (give {state['step']} or more)")

    def write_config(self, record: dict) -> None:
        write_text(json.dumps(record, indent=2) + "\n", self.config)

    # --- the log -------------------------------------------------------------------------------------------

    def read_log(self) -> list[dict]:
        """Every complete line; a torn last line (a kill or a full disk mid-write) is dropped."""
        return list(_complete_lines(self.log))

    def start_log(self, resumed_at: int | None) -> None:
        """A fresh run starts an empty log; a resumed one keeps the lines up to its saved step.

        Events at the saved step itself (resume, gradient shares) were written by an earlier start from that step
        that got no further; this start writes its own, so a failed resume leaves no line behind.
        """
        if not self.writer:
            return
        if resumed_at is None:
            write_text("", self.log)
            return
        kept = [r for r in self.read_log()
                if r.get("step", 0) < resumed_at or (r.get("step", 0) == resumed_at and "event" not in r)]
        write_text("".join(json.dumps(r) + "\n" for r in kept), self.log)

    def append(self, record: dict) -> None:
        if self.writer:
            with open(self.log, "a") as f:
                f.write(json.dumps(record) + "\n")


class Checkpointer:
    """A run's saves: the training state and the student checkpoint written together at one step, and the name of
    the last good one for every message that stops a run.

    A finite loss can precede an update that overflows the weights, so weights that are not all finite never
    replace a save.
    """

    def __init__(self, run: RunFolder, output: Path, last_save: int | None):
        self.run, self.output, self.last_save = run, output, last_save

    def kept(self) -> str:
        if self.last_save is None:
            return "no checkpoint had been saved yet"
        return f"the last good checkpoint (step {self.last_save}) in {self.run.path} is kept"

    def save(self, step: int, modules: dict[str, nn.Module], state: dict, student: nn.Module, **provenance: Any
             ) -> None:
        """Save `state` (the resumable run at `step`) and the student with its provenance, or refuse both."""
        for name, module in modules.items():
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise NonFiniteLoss(f"the {name}'s weights became NaN/Inf by step {step}; training stopped and "
                                    f"{self.kept()}; lower the learning rate or check the data")
        self.last_save = step
        if self.run.writer:
            self.run.save_state({"step": step, **state})
            checkpoint.save(self.output, student.spec, student.state_dict(), **provenance)


def damaged_state(state_file: Path, what: str) -> UserError:
    return UserError(f"{state_file} {what}; it was edited or damaged: remove it to start over, or choose another "
                     f"{setting('out_dir')}")


@contextlib.contextmanager
def restoring(state_file: Path) -> Iterator[None]:
    """Loading a saved state's parts into the run: an edited part fails deep inside torch (a spec that builds no
    network, an optimiser state of other shapes), which the user can only fix by removing the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise damaged_state(state_file, f"does not load ({type(e).__name__}{': ' * bool(detail)}{detail})") from None


def _malformed(state: dict) -> str | None:
    """What an edited state holds where a save puts something else, found before the run uses any of it: a step
    of -5 resumed as if it were a count, a random state of the wrong type failed in torch's own words."""
    step, rng = state["step"], state["rng"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"a step of {step!r}, not a count of steps"
    if not (torch.is_tensor(rng) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        kind = f"a {rng.dtype} tensor of {rng.numel()} values" if torch.is_tensor(rng) else f"a {type(rng).__name__}"
        return f"a random-generator state that is {kind}, not the bytes torch saves"
    wrong = [k for k in ("student", "disc", "opt_g", "opt_d", "config", "meta") if not isinstance(state[k], dict)]
    if wrong:
        return f"a {wrong[0]} that is a {type(state[wrong[0]]).__name__}, not a dict"
    return None


def _complete_lines(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `path` for the life of this process, or say who holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl  # platform modules: fcntl exists on POSIX only, msvcrt (below) on Windows only

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            raise UserError(f"another ganzip distill is writing to {path.parent}; wait for it to finish or choose "
                            f"another {setting('out_dir')}") from None
    except OSError:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"another ganzip distill (pid {holder}) is writing to {path.parent}; wait for it to finish, "
                        f"stop it, or choose another {setting('out_dir')}") from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())
    return fd
