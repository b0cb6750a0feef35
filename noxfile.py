"""Sessions that tie the rubiksnet packages together.

    nox -s eval          the main job: the evaluation protocol on the embedded default (CPU)
    nox -s tests         every package's test suite
    nox -s tests-shift   one package's suite (also tests-models, tests-data, tests-eval)
    nox -s lint          ruff over the whole tree
    nox -s bench         pytest-benchmark regressions of the CPU kernels + the op benchmark
    nox -s bench-models  the whole-model GPU benchmark against TSM-ResNet50 (arguments after --)
    nox -s train         tools/train.py (arguments after --), after warming the kernel cache
    nox -s warmup        compile the CUDA kernels into the on-disk cache (-- --cpu: the CPU ones)
    nox -s check         the installation check

Every session installs torch from constraints.txt first (the pair that works on these
machines), so no package can pull a different torch.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"

PACKAGES = {
    "shift": "packages/rubiks-shift",
    "models": "packages/rubiks-models",
    "data": "packages/rubiks-data",
    "eval": "packages/rubiks-eval",
}
# Local path dependencies, installed in one pip call (pip cannot resolve unpublished
# siblings from an index).
DEPENDS = {
    "shift": ["shift"],
    "models": ["shift", "models"],
    "data": ["data"],
    "eval": ["shift", "models", "data", "eval"],
}
EXTRAS = {"shift": "[cuda,test]", "models": "[test]", "data": "[test]", "eval": "[test,plot]"}


def _install(session: nox.Session, names: list[str], extras: bool = True) -> None:
    session.install("-c", "constraints.txt", "torch", "torchvision")
    specs = []
    for name in names:
        path = PACKAGES[name]
        specs += ["-e", f"{path}{EXTRAS[name] if extras else ''}"]
    session.install("-c", "constraints.txt", *specs)


def _pytest(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *session.posargs)


def _run_tests(session: nox.Session, name: str) -> None:
    _pytest(session, PACKAGES[name] + "/tests")


@nox.session(name="eval")
def eval_default(session: nox.Session) -> None:
    """The embedded default (no arguments): synthetic videos, bundled checkpoint, 1-clip and
    2-clip. With arguments after --, the rubiks-eval CLI itself."""
    _install(session, DEPENDS["eval"], extras=False)
    if session.posargs:
        session.run("python", "-m", "rubiks_eval", *session.posargs)
    else:
        session.run("python", "-m", "rubiks_eval.demo")


@nox.session
def tests(session: nox.Session) -> None:
    """Every package's suite, each in its own pytest run (a summary per package), then the
    smoke tests of the scripts in tools/. The CPU kernels the suites run (float32 and
    float64) are compiled first, in parallel (``warmup --cpu``), not one by one on first
    use."""
    _install(session, list(PACKAGES))
    session.run("python", "-m", "rubiks_shift.warmup", "--cpu", "--dtypes", "float32", "float64")
    for name in PACKAGES:
        _run_tests(session, name)
    _pytest(session, "tools/tests")


for _name in PACKAGES:

    def _package_tests(session: nox.Session, name: str = _name) -> None:
        _install(session, DEPENDS[name])
        _run_tests(session, name)

    nox.session(_package_tests, name=f"tests-{_name}")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """CPU kernel regressions (pytest-benchmark) and the op benchmark table."""
    _install(session, ["shift"])
    _pytest(session, "packages/rubiks-shift/benchmarks", "--benchmark-only")
    session.run("python", "packages/rubiks-shift/benchmarks/bench_shift.py", "--quick")


@nox.session(name="bench-models")
def bench_models(session: nox.Session) -> None:
    """RubiksNet against TSM-ResNet50 on the GPU, side by side (arguments after -- go to
    packages/rubiks-models/benchmarks/bench_models.py), after warming the kernel cache."""
    _install(session, DEPENDS["models"])
    session.run("python", "-m", "rubiks_shift.warmup", "--if-available")
    session.run("python", "packages/rubiks-models/benchmarks/bench_models.py", *session.posargs)


@nox.session
def warmup(session: nox.Session) -> None:
    """Compile the CUDA kernels into the on-disk kernel cache for this machine's GPU
    (default float32 and bfloat16; e.g. ``nox -s warmup -- --dtypes float16``), or with
    ``-- --cpu`` the CPU kernels into Numba's cache."""
    _install(session, ["shift"])
    session.run("python", "-m", "rubiks_shift.warmup", *session.posargs)


def _train_dtypes(args: list[str]) -> list[str]:
    """Storage dtypes a training run launches the op with: float32, and float16 under
    --amp (autocast on CUDA)."""
    return ["float32", "float16"] if "--amp" in args else ["float32"]


@nox.session
def train(session: nox.Session) -> None:
    """tools/train.py; first the kernel cache is warmed for the GPU (skipped with one
    line without one), so the ranks start from cached kernels instead of each compiling."""
    _install(session, DEPENDS["eval"], extras=False)
    dtypes = _train_dtypes(list(session.posargs))
    session.run("python", "-m", "rubiks_shift.warmup", "--if-available", "--dtypes", *dtypes)
    session.run("python", "tools/train.py", *session.posargs)


@nox.session
def check(session: nox.Session) -> None:
    _install(session, DEPENDS["eval"], extras=False)
    session.run("python", "-m", "rubiks_eval.check")
