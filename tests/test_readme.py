"""The README's examples, run as written with the real ``curl`` against
``karmchari serve`` on a free port, and its options table checked against the
command line.

Each ``$ curl ...`` line of a ``console`` block runs in bash (some pipe into
``python3 -m json.tool``); the lines after it are its documented output, which
must match exactly, except that job ids and times are the run's own: an id the
README shows for the first time stands for the id the service answered there,
and is replaced by it in every later command and output.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
from pathlib import Path

from app.cli import add_serve_arguments
from app.config import Config

README = Path(__file__).resolve().parents[1] / "README.md"
DOCUMENTED_PORT = "localhost:51463"
JOB_ID = re.compile(r"[0-9a-f]{32}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

# The old README's examples, which existing scripts rely on.
OLD_EXAMPLES = [
    'curl -d "type=teams" http://localhost:51463/registerJob',
    'curl -d "id=<id>&command=pause" http://localhost:51463/jobState',
    "curl http://localhost:51463/jobState?id=<id>",
]


@dataclasses.dataclass
class Example:
    command: str
    output: str


def console_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    for block in re.findall(r"^```console\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append(Example(line[2:], ""))
            else:
                examples[-1].output += line + "\n"
    return examples


def output_pattern(documented: str, ids: dict[str, str]) -> re.Pattern:
    """Documented output as a pattern: known ids replaced, new ids captured
    (named after the documented id), times matched as any time."""
    parts, position = [], 0
    for match in re.finditer(f"{JOB_ID.pattern}|{TIMESTAMP.pattern}", documented):
        parts.append(re.escape(documented[position:match.start()]))
        token = match.group()
        if TIMESTAMP.fullmatch(token):
            parts.append(TIMESTAMP.pattern)
        elif token in ids:
            parts.append(ids[token])
        else:
            parts.append(f"(?P<id_{token}>{JOB_ID.pattern})")
        position = match.end()
    parts.append(re.escape(documented[position:]))
    return re.compile("".join(parts))


def test_readme_has_the_old_curl_examples():
    commands = [JOB_ID.sub("<id>", e.command) for e in console_examples(README.read_text())]
    for old in OLD_EXAMPLES:
        assert old in commands


def test_readme_curl_examples_give_the_documented_output(live_service):
    examples = console_examples(README.read_text())
    assert examples
    ids: dict[str, str] = {}
    for example in examples:
        assert example.command.startswith("curl "), example.command
        command = example.command.replace(DOCUMENTED_PORT, f"127.0.0.1:{live_service.port}")
        for documented, actual in ids.items():
            command = command.replace(documented, actual)
        run = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 0, f"{command}\n{run.stderr}"
        pattern = output_pattern(example.output.rstrip("\n"), ids)
        match = pattern.fullmatch(run.stdout.rstrip("\n"))
        assert match, f"$ {command}\nexpected:\n{example.output}got:\n{run.stdout}"
        for name, actual in match.groupdict().items():
            ids[name.removeprefix("id_")] = actual


def readme_options_table() -> list[list[str]]:
    section = README.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in row.strip("|").split("|")]
            for row in section.splitlines() if row.startswith("| ")][1:]


def test_readme_options_table_matches_the_command_line():
    serve = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(serve)
    flags = {flag for action in serve._actions for flag in action.option_strings}
    rows = readme_options_table()
    assert {flag for row in rows for flag in re.findall(r"`(-[\w-]+)", row[0])} == flags
    settings = {f"KARMCHARI_{f.name.upper()}" for f in dataclasses.fields(Config)}
    for row in rows:
        variable = row[1].strip("`")
        assert variable in settings, variable
        for flag in re.findall(r"`--([\w-]+)", row[0]):
            assert variable == "KARMCHARI_" + flag.replace("-", "_").upper()


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_readme_defaults_are_the_real_ones():
    defaults = Config()
    for row in readme_options_table():
        name = row[1].strip("`").removeprefix("KARMCHARI_").lower()
        if row[2] and not row[2].startswith("`"):  # paths depend on the machine
            assert row[2] == shown(getattr(defaults, name)), row


def test_serve_help_shows_each_setting_with_its_range():
    """``karmchari serve --help`` "lists the same settings": each with its
    variable, range and default, in words a reader can use."""
    from app.cli import build_parser
    from app.config import SETTINGS

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    text = " ".join(serve.format_help().split())  # unwrapped
    for s in SETTINGS:
        assert s.env in text, s.env
        if s.range:
            assert f"{s.env}; {s.range_text};" in text, s.name
        if s.choices:
            assert "{" + ",".join(s.choices) + "}" in text, s.name
    assert "default False" not in text and "default True" not in text
    assert not re.search(r"\b(HISTORY_CAP|MAX_[A-Z_]+|CONNECTION_LIMIT|LOG_LEVEL)\b", text)
    assert "KARMCHARI_TOKENS " in text + " "
