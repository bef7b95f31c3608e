"""The benchmark harness: timing, device peaks, run metadata and writers (what is measured and recorded).

What is run (cases, limits, sessions, the command line) is in :mod:`benchmarks.cases`.

Every timing in ``benchmarks/`` goes through :func:`measure` (or :func:`timed` for a single run
whose result is kept), every results file carries :func:`run_metadata`, and every file is
written by :func:`write_json` or :func:`append_jsonl`.

Timing rule (:func:`measure`): ``warmup`` untimed calls (CUDA: the first call compiles kernels
and grows the caching allocator), then timed calls until at least ``repeats`` calls *and*
``min_time`` seconds in total have been spent, stopping early once ``max_time`` is exceeded
(at least one timed call always runs). Every call is bracketed by ``torch.cuda.synchronize()``
on CUDA, so a time is the wall-clock time of the whole call, host work and kernels included;
on CUDA the GPU time between two events recorded around the call is kept as well. The figure
reported is the best (minimum) time; the median and the spread ``(max - min) / median`` of all
timed calls are kept next to it, because on a shared machine the best time is the one least
disturbed by other work and the spread says how much it was disturbed. Short calls are repeated
until ``min_time`` has passed, so a microsecond-scale figure is the best of thousands of calls.

"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = [
    "append_jsonl",
    "command_line",
    "device_peak",
    "device_slug",
    "DevicePeak",
    "format_number",
    "markdown_table",
    "measure",
    "PEAKS",
    "REPO",
    "repo_path",
    "RESULTS",
    "run_metadata",
    "run_units",
    "synchronize",
    "timed",
    "Timing",
    "write_json",
]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
#: Above this many timed calls a :class:`Timing` keeps deciles instead of every time.
MAX_LISTED_RUNS = 50


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock times of the timed calls of :func:`measure`.

    Attributes:
        seconds: every timed call, in order (seconds, after device synchronisation).
        gpu_seconds: CUDA-event time of every timed call (empty on the CPU).
        warmup: number of untimed calls before them.
    """

    seconds: list[float]
    gpu_seconds: list[float] = field(default_factory=list)
    warmup: int = 0

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """``(max - min) / median`` of the timed calls (0 for a single call)."""
        return (max(self.seconds) - min(self.seconds)) / self.median if len(self.seconds) > 1 else 0.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the timed calls (nearest rank)."""
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def to_dict(self, max_listed: int = MAX_LISTED_RUNS) -> dict:
        """JSON-friendly summary; every call's time is listed when there are at most
        ``max_listed`` of them (micro-benchmarks run thousands), else the deciles stand in."""
        out = {
            "best_s": self.best,
            "median_s": self.median,
            "p10_s": self.quantile(0.1),
            "p90_s": self.quantile(0.9),
            "spread": self.spread,
            "runs": len(self.seconds),
            "warmup": self.warmup,
        }
        if len(self.seconds) <= max_listed:
            out["all_s"] = list(self.seconds)
        if self.gpu_seconds:
            out["gpu_best_s"] = min(self.gpu_seconds)
            out["gpu_median_s"] = statistics.median(self.gpu_seconds)
            if len(self.gpu_seconds) <= max_listed:
                out["gpu_all_s"] = list(self.gpu_seconds)
        return out


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[object, float]:
    """``(fn(), seconds)``: one call, synchronised like :func:`measure`'s, its result kept (for
    runs too long to repeat, such as a whole training run whose model is used afterwards)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def measure(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 5,
    min_time: float = 0.0,
    max_time: float = math.inf,
    warmup_fn: Callable[[], object] | None = None,
) -> Timing:
    """Time ``fn()`` (module docstring: warm-up, synchronisation, stopping rule).

    Args:
        fn: the work to time; its result is discarded.
        device: where ``fn`` queues its work (CUDA: synchronised around every call).
        warmup: untimed calls before timing.
        repeats: at least this many timed calls (``>= 1``) ...
        min_time: ... and at least this many seconds of timed calls in total ...
        max_time: ... unless the timed calls so far took more than this many seconds.
        warmup_fn: called for the warm-up instead of ``fn`` (a smaller version of a long run).

    Returns:
        :class:`Timing`.

    Raises:
        ValueError: ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        (warmup_fn or fn)()
    synchronize(device)
    seconds: list[float] = []
    gpu_seconds: list[float] = []
    total = 0.0
    while len(seconds) < repeats or total < min_time:
        if cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            stop_event = torch.cuda.Event(enable_timing=True)
            synchronize(device)
            start = time.perf_counter()
            start_event.record()
            fn()
            stop_event.record()
            synchronize(device)
            elapsed = time.perf_counter() - start
            gpu_seconds.append(start_event.elapsed_time(stop_event) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        total += elapsed
        if total > max_time:
            break
    return Timing(seconds, gpu_seconds, warmup)


# ----------------------------------------------------------------------------- device peaks
@dataclass(frozen=True)
class DevicePeak:
    """Datasheet peaks of one GPU model.

    Attributes:
        name: the model, as the tables print it.
        pattern: regular expression matched (case-insensitively) against
            ``torch.cuda.get_device_name()``.
        bandwidth: peak DRAM bandwidth, bytes/s.
        fp32_flops: peak FP32 (non-tensor-core) FLOP/s.
        bf16_flops: peak dense BF16 tensor-core FLOP/s (no sparsity).
        source: where the numbers come from.
    """

    name: str
    pattern: str
    bandwidth: float
    fp32_flops: float
    bf16_flops: float
    source: str = "NVIDIA datasheet"


#: First match wins, so the more specific names come first.
PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("H100 PCIe", r"H100.*PCIe", 2.0e12, 51e12, 756e12, "NVIDIA H100 datasheet"),
    DevicePeak("H100 NVL", r"H100.*NVL", 3.9e12, 60e12, 835e12, "NVIDIA H100 datasheet"),
    DevicePeak("H100 SXM", r"H100", 3.35e12, 67e12, 989e12, "NVIDIA H100 datasheet (SXM5, HBM3)"),
    DevicePeak("H200", r"H200", 4.8e12, 67e12, 989e12, "NVIDIA H200 datasheet (SXM)"),
    DevicePeak("A100 80GB PCIe", r"A100.*80GB.*PCIe", 1.935e12, 19.5e12, 312e12, "NVIDIA A100 datasheet"),
    DevicePeak("A100 80GB SXM", r"A100.*80GB", 2.039e12, 19.5e12, 312e12, "NVIDIA A100 datasheet"),
    DevicePeak("A100 40GB", r"A100", 1.555e12, 19.5e12, 312e12, "NVIDIA A100 datasheet"),
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The :class:`DevicePeak` whose pattern matches ``device_name``, or None (CPUs, other GPUs)."""
    for peak in PEAKS:
        if re.search(peak.pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


# ----------------------------------------------------------------------------- metadata
def _run(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):  # not installed: the metadata says so
        return None


def repo_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it, else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(REPO)) if os.path.isabs(path) else str(path)
    except ValueError:
        return str(path)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, as typed in the repository root.

    ``argv`` is what follows the interpreter (``["-m", "benchmarks.report", "--quick"]`` or
    ``["benchmarks/report.py", "--quick"]``); by default this process's, with ``-m MODULE`` when
    it was started as a module. The interpreter is written ``python`` and paths inside the
    repository relative to its root, so a recorded command never holds a path of this machine.
    """
    if argv is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        head = ["-m", spec.name] if spec is not None and spec.name else [sys.argv[0]]
        argv = [*head, *sys.argv[1:]]
    return shlex.join(["python", *(repo_path(a) if os.path.isabs(a) else a for a in argv)])


def run_metadata(device: torch.device | str = "cpu", argv: Sequence[str] | None = None) -> dict:
    """Everything needed to reproduce and compare a run, JSON-friendly.

    Keys: ``device`` (``"cpu"``/``"cuda"``), ``device_name`` (GPU name, or the CPU model),
    ``gpu`` (name, capability, memory, driver and CUDA versions, from torch and ``nvidia-smi``
    when present), ``cpu`` (model, logical CPUs usable, torch threads), ``load_average`` (1, 5,
    15 min, at the start), versions (python, torch, triton, numpy, ecd2g_fast, the extension),
    ``git`` (commit, dirty flag), ``timestamp`` (UTC), ``command`` (:func:`command_line` of
    ``argv``) and the ``ECD2G_*`` environment variables that were set.
    """
    device = torch.device(device)
    meta: dict = {"device": device.type}
    cpu = {
        "model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    meta["cpu"] = cpu
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gpu = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cuda_runtime": torch.version.cuda,
        }
        query = ["nvidia-smi", f"--id={index}", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        smi = _run(query)
        if smi:
            parts = [p.strip() for p in smi.split(",")]
            gpu["nvidia_smi_name"], gpu["driver_version"] = parts[0], parts[1] if len(parts) > 1 else None
        peak = device_peak(props.name)
        gpu["peaks"] = None if peak is None else asdict(peak)
        meta["gpu"] = gpu
        meta["device_name"] = props.name
    else:
        meta["device_name"] = cpu["model"]
    try:
        meta["load_average"] = list(os.getloadavg())
    except OSError:
        meta["load_average"] = None
    try:
        from ecd2g_fast import _extension

        cuda_kernels = (
            _extension.has_device_kernels(torch.device("cuda")) if torch.cuda.is_available() else False
        )
        extension = {"available": _extension.available(), "cuda_kernels": cuda_kernels}
        extension["reason"] = _extension.unavailable_reason()
    except Exception as error:  # noqa: BLE001  (record why the package failed to import, do not hide it)
        extension = {"available": False, "reason": repr(error)}
    meta["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "ecd2g_fast": _version("ecd2g_fast"),
        "extension": extension,
    }
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    meta["git"] = {"commit": commit, "dirty": bool(status) if status is not None else None}
    meta["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta["command"] = command_line(argv)
    meta["env"] = {
        k: v for k, v in sorted(os.environ.items()) if k.startswith("ECD2G_") or k == "TRITON_INTERPRET"
    }
    return meta


def device_slug(meta: dict) -> str:
    """File-name stem of a device: ``cuda-nvidia-h100-80gb-hbm3``, ``cpu-intel-xeon-processor-2cpu``."""
    name = re.sub(r"\(r\)|\(tm\)", "", meta["device_name"], flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if meta["device"] == "cpu":
        slug = f"{slug}-{meta['cpu']['usable_cpus']}cpu"
    return f"{meta['device']}-{slug}"


# ----------------------------------------------------------------------------- writers
def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    return value


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON (non-finite floats become ``null``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")
    return path


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Append one JSON object per row to ``path`` (non-finite floats become ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(_json_safe(row), allow_nan=False) + "\n")
    return path


def format_number(value: float | None, digits: int = 3) -> str:
    """``1.23e+09`` style for large/small magnitudes, plain otherwise; ``-`` for None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table (``|`` in cells escaped); one line per row."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(c) for c in row]
        if len(cells) != len(headers):
            raise ValueError(f"row has {len(cells)} cells, expected {len(headers)}: {row!r}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_units(
    units: Iterable[tuple[str, Callable[[], list[dict]]]],
    stem: str,
    *,
    fresh: bool,
    meta: dict,
    render: Callable[[dict, list[dict]], str],
    log: Callable[[str], None],
    rows: list[dict] | None = None,
) -> list[dict]:
    """The resumable loop of the comparison scripts: run each ``(key, unit)`` not yet journaled.

    ``unit()`` returns result rows. They are added to the results and, unless one holds an
    ``"error"`` (a rerun then tries the unit again), to the journal ``RESULTS/<stem>_runs.jsonl``
    (one JSON line ``{"key", "rows"}`` per unit). A unit whose key is in the journal is not run
    again: its rows are taken from there (``fresh``: the journal is started over). After every unit
    and at the end, ``RESULTS/<stem>.json`` (``meta`` with ``"complete"``, and the rows) and
    ``RESULTS/<stem>.md`` (``render(meta, rows)``) are rewritten.

    Returns:
        All rows, in unit order: ``rows`` itself when given (units may read the rows so far).
    """
    journal = RESULTS / f"{stem}_runs.jsonl"
    rows = [] if rows is None else rows

    def write(complete: bool) -> None:
        meta["complete"] = complete
        write_json(RESULTS / f"{stem}.json", {"meta": meta, "rows": rows})
        (RESULTS / f"{stem}.md").write_text(render(meta, rows))

    done: dict[str, list[dict]] = {}
    if not fresh and journal.is_file():
        for line in journal.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["key"]] = entry["rows"]
    if fresh and journal.exists():
        journal.unlink()
    for key, unit in units:
        if key in done:
            log(f"done already: {key}")
            rows.extend(done[key])
            continue
        unit_rows = unit()
        if not any("error" in row for row in unit_rows):
            append_jsonl(journal, [{"key": key, "rows": unit_rows}])
        rows.extend(unit_rows)
        write(False)  # the results so far, after every unit
    write(True)
    return rows
