"""docs/service.md's configuration reference parses, the defaults it shows are the real ones,
and its list of metrics is the one ``/metrics`` serves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trio_chatbridge as cb
from trio_chatbridge._config import load_config
from trio_chatbridge._metrics import bridge_registry
from trio_chatbridge.testing import FakeConnector

DOCS = Path(__file__).resolve().parent.parent / "docs" / "service.md"
QUICKSTART = DOCS.parent / "quickstart.md"
METRIC = re.compile(r"(?<!\w)chatbridge_\w+")

AGENT = """\
import trio_chatbridge as cb


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)
"""

MINIMAL = """\
agent = "svcdocbot:agent"

[[connectors]]
platform = "wecom"
bot_id = "bot-1"
secret = "s"
"""


def reference() -> str:
    """The TOML block under "The configuration file", as the reader sees it."""
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"## The configuration file\n.*?```toml\n(.*?)```", text, re.S)
    assert found is not None, "docs/service.md lost its configuration reference"
    return found.group(1)


def test_the_reference_shows_each_default_it_names(tmp_path: Path) -> None:
    (tmp_path / "svcdocbot.py").write_text(AGENT)
    (tmp_path / "secrets").mkdir()
    for name in ("wecom_token", "wecom_aes_key"):
        (tmp_path / "secrets" / name).write_text("x" * 43 + "\n")
    block = reference().replace('agent = "bot:agent"', 'agent = "svcdocbot:agent"')
    block = block.replace("/run/secrets/", f"{tmp_path}/secrets/")
    (tmp_path / "reference.toml").write_text(block)
    (tmp_path / "minimal.toml").write_text(MINIMAL)
    names = ("WEIXIN_TOKEN", "WECOM_BOT_ID", "WECOM_SECRET", "HOOK_BOT_ID", "LARK_APP_SECRET")
    # One value for every variable: the reference is valid as written, not only when the
    # reader's variables happen to differ (two WeCom connectors once shared one bot id).
    environ = dict.fromkeys(names, "same-value")

    documented = load_config(tmp_path / "reference.toml", environ).model_dump()
    defaults = load_config(tmp_path / "minimal.toml", {}).model_dump()

    assert [c["platform"] for c in documented["connectors"]] == [
        "weixin",
        "wecom",
        "wecom-webhook",
        "lark",
    ]
    assert documented["http"] == {"listen": "127.0.0.1:8080"}  # the table's own default
    for key in ("connectors", "http"):  # the examples: not defaults
        del documented[key], defaults[key]
    assert documented == defaults


@pytest.mark.timeout(120)
def test_the_quick_start_test_passes_where_the_page_says_to_save_it(tmp_path: Path) -> None:
    """docs/quickstart.md step 4, in a directory of its own (not this project's, whose
    pyproject.toml sets Trio mode), with the pytest.ini the page shows."""
    page = QUICKSTART.read_text(encoding="utf-8")
    step = page[page.index("## 4.") : page.index("## 5.")]
    test = re.search(r"```python\n(.*?)```", step, re.S)
    ini = re.search(r"\n\n((?:    .*\n)+)\n", step[step.index("```\n") :])
    assert test is not None and ini is not None, "step 4 lost its test or its pytest.ini"
    (tmp_path / "test_bot.py").write_text(test.group(1))
    (tmp_path / "pytest.ini").write_text(textwrap.dedent(ini.group(1)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bot.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(DOCS.parent.parent)},
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def served_metrics() -> set[str]:
    """The name of each metric a bridge's ``/metrics`` serves, as a scrape shows it (a
    counter with its ``_total``)."""
    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in bridge_registry(bridge).collect()
    }


def test_the_metrics_section_lists_every_metric_served_and_no_other() -> None:
    """A metric added in code without a line in docs/service.md fails here, and so does a
    line naming a metric that is gone (``chatbridge_undecodable_total`` was served but not
    listed)."""
    text = DOCS.read_text(encoding="utf-8")
    section = re.search(r"\n## Health, readiness and metrics\n(.*?)\n## ", text, re.S)
    assert section is not None, "docs/service.md lost its metrics section"
    assert set(METRIC.findall(section.group(1))) == served_metrics()


def test_every_metric_a_page_names_is_served() -> None:
    served = served_metrics()
    for page in sorted(DOCS.parent.glob("*.md")):
        if page.name == "changelog.md":  # history: names as they were
            continue
        named = set(METRIC.findall(page.read_text(encoding="utf-8")))
        assert named <= served, f"{page.name} names {sorted(named - served)}"
