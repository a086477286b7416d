"""Developer sessions: ``nox -s tests``, ``lint``, ``docs``, ``bench``."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict (package, tests, benchmarks), and pyright's check that every public
    name has a known type (for users' type checkers; it needs a regular install, not -e)."""
    session.install(".[test]", "ruff", "mypy", "types-protobuf", "pyright")
    session.run("ruff", "check", "trio_chatbridge", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "trio_chatbridge", "tests", "benchmarks")
    session.run("mypy", "--strict", "trio_chatbridge", "tests", "benchmarks")
    session.run("ruff", "check", "examples")
    session.run("ruff", "format", "--check", "examples")
    session.run("mypy", "--strict", "examples")  # its own run: the examples import each other
    session.run("pyright", "--verifytypes", "trio_chatbridge", "--ignoreexternal")


@nox.session
def docs(session: nox.Session) -> None:
    """Check the docs (every page's Python snippets compile, every doc-linked module imports),
    build the site with Sphinx into docs/_build/html, warnings as errors, and check that every
    public name is in its API reference."""
    session.install("-e", ".[docs]")
    session.run("python", "docs/check_docs.py")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("python", "docs/check_docs.py", "--reference", "docs/_build/html/objects.inv")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark; each prints its figures against a baseline from the same run."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Every parser's properties (tests marked ``fuzz``) and the webhook's, 5,000 random
    examples each instead of the suite's fixed 100: over an hour on one free core (figures in
    docs/reliability.md). Extra arguments go to pytest (``-k lark`` for one platform)."""
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "-m", "fuzz", "-o", "timeout=0",
        # hypothesis' report of a failing example trips a DeprecationWarning (mypy_extensions)
        # that filterwarnings=error turns into an INTERNALERROR hiding the example
        "-W", "ignore::DeprecationWarning",
        *session.posargs, env={"HYPOTHESIS_PROFILE": "fuzz"},
    )  # fmt: skip


@nox.session
def soak(session: nox.Session) -> None:
    """10,000 sessions over the three emulators on loopback, five messages each at 100 a
    second, memory sampled (about ten minutes; figures in docs/reliability.md).
    ``SOAK_SESSIONS``, ``SOAK_ROUNDS`` and ``SOAK_RATE`` in the environment change the load;
    ``SOAK_TRACE=8`` prints each round's growth by allocation site (several times slower)."""
    session.install("-e", ".[test]")
    env = {"SOAK_SESSIONS": "10000", "SOAK_ROUNDS": "5"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("SOAK_")})
    session.run(
        "python", "-m", "pytest", "-m", "soak", "-s", "-o", "timeout=0", *session.posargs,
        env=env,
    )  # fmt: skip
