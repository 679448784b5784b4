"""Run the code blocks of every page in docs/*.md, so that the documentation cannot rot.

Conventions the pages follow (write new pages the same way):

- A ```python block is executed. A page's blocks run in order, in one namespace per page, in a
  fresh temporary working directory that is also on ``sys.path`` (so a Python layer module
  written there imports, as it would from a prototxt's folder). Blocks make their own data:
  prototxts, LMDBs and weights are created in place; nothing is downloaded.
- A block (any language) whose first line is ``# file: NAME`` is written to ``NAME`` in the
  working directory instead of being executed. ``#`` starts a comment in prototxt and Python
  alike, so the block stays a valid file as shown.
- A block (```python or bash) whose first line is ``# requires: MOD[, MOD...]`` runs only if
  those modules are installed; otherwise that block alone is skipped, with a warning naming it
  (a later block that uses its results carries the same line).
- A ```bash (or ```console / ```shell) block whose first line is ``# not run: REASON`` is shown
  only; the reason is mandatory. Every other bash block may hold only ``caffe ...`` commands
  (blank lines and ``#`` comments aside): each runs in this process through
  ``caffe.tools.cli.main`` (the same entry point as the ``caffe`` script) and must exit 0.
- A hidden setup step is an HTML comment starting ``<!-- doc-setup`` and ending ``-->``: its body
  is Python, run at that point of the page and not rendered by Sphinx.
- Blocks in other languages (``text``, ``protobuf`` without a ``# file:`` line, ...) are shown
  only. MyST ``{code-block} python`` directives count as ```python blocks (option lines
  ``:name: value`` are dropped); fenced directives such as ````{note} are searched for blocks.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SHELLS = {"bash", "console", "shell", "sh"}


def parse_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, line number) of each code block and doc-setup comment, in page order."""
    lines = text.splitlines()
    return _parse(lines, 0, len(lines))


def _parse(lines: list[str], start: int, end: int) -> list[tuple[str, str, int]]:
    blocks = []
    i = start
    while i < end:
        line = lines[i]
        if line.strip().startswith("<!-- doc-setup"):
            j = i + 1
            while j < end and not lines[j].strip().endswith("-->"):
                j += 1
            blocks.append(("doc-setup", "\n".join(lines[i + 1:j]), i + 1))
            i = j + 1
            continue
        match = FENCE.match(line)
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        j = i + 1
        while j < end and not (lines[j].strip().startswith(fence[0] * len(fence))
                               and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body_lines = lines[i + 1:j]
        language = info.split()[0] if info else ""
        if language == "{code-block}":
            language = info.split()[1] if len(info.split()) > 1 else ""
            body_lines = [b for b in body_lines if not re.match(r"^\s*:\w[\w-]*:", b)]
        if language.startswith("{") and language != "{code-block}":
            blocks += _parse(lines, i + 1, j)  # a directive (note, admonition, ...): look inside
        else:
            indent = len(match["indent"])
            blocks.append((language, "\n".join(b[indent:] for b in body_lines), i + 1))
        i = j + 1
    return blocks


def first_line(body: str) -> str:
    """The block's first non-empty line, where the conventions' markers go."""
    return body.lstrip("\n").split("\n", 1)[0].strip()


def run_shell_block(body: str, where: str) -> None:
    """Run the ``caffe ...`` commands of a bash block in this process; each must exit 0."""
    from caffe.tools import cli

    for line in body.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line, comments=True)
        assert argv[0] == "caffe", (
            f"{where}: bash blocks hold only `caffe ...` commands unless their first line is "
            f"'# not run: REASON'; got {line!r}")
        status = cli.main(argv[1:])
        assert status == 0, f"{where}: `{line}` exited {status}"


def pages() -> list[Path]:
    """Every Markdown page under docs/ (the other helpers' pages included)."""
    return sorted(DOCS.glob("**/*.md")) if DOCS.is_dir() else []


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_page(page, tmp_path)


def run_page(page: Path, tmp_path: Path) -> None:
    """Run ``page``'s blocks by the conventions above, in the current directory ``tmp_path``."""
    blocks = parse_blocks(page.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    before = set(sys.modules)
    try:
        for language, body, line in blocks:
            where = f"{page.name}:{line}"
            head = first_line(body)
            if head.startswith("# requires:"):
                missing = [m.strip() for m in head[len("# requires:"):].split(",")
                           if importlib.util.find_spec(m.strip()) is None]
                if missing:
                    warnings.warn(f"{where}: not run, needs {', '.join(missing)}", stacklevel=1)
                    continue
            if head.startswith("# file:"):
                name = head[len("# file:"):].strip()
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                Path(name).write_text(body.lstrip("\n") + "\n", encoding="utf-8")
            elif language in SHELLS:
                if head.startswith("# not run:"):
                    assert head[len("# not run:"):].strip(), f"{where}: '# not run:' needs a reason"
                    continue
                run_shell_block(body, where)
            elif language in ("python", "doc-setup"):
                code = compile("\n" * line + body, str(page), "exec")
                exec(code, namespace)  # noqa: S102 - the docs' own examples
    finally:
        # Forget modules the page wrote and imported (Python layers), so pages stay independent.
        for name in set(sys.modules) - before:
            path = getattr(sys.modules[name], "__file__", None) or ""
            if path and Path(path).resolve().is_relative_to(tmp_path.resolve()):
                del sys.modules[name]


def test_parser_sees_blocks_and_conventions() -> None:
    """The parser finds fenced, nested, code-block and doc-setup blocks with their languages."""
    text = "\n".join([
        "<!-- doc-setup", "x = 1", "-->",
        "```python", "y = x + 1", "```",
        "````{note}", "```bash", "# not run: example", "pip install caffepy", "```", "````",
        "```{code-block} python", ":caption: c", "z = 3", "```",
        "~~~text", "shown", "~~~",
    ])
    blocks = parse_blocks(text)
    assert [b[0] for b in blocks] == ["doc-setup", "python", "bash", "python", "text"]
    assert blocks[1][1] == "y = x + 1" and blocks[3][1] == "z = 3"
    assert first_line(blocks[2][1]) == "# not run: example"



def test_runner_fails_on_broken_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong example, an unmarked non-caffe command and a failing caffe command all fail."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    page = tmp_path / "page.md"
    page.write_text("```python\n# file: mod.py\nVALUE = 3\n```\n"
                    "```python\nimport mod\nassert mod.VALUE == 3\n```\n")
    run_page(page, tmp_path)  # a file block, then a block importing it: passes
    cases = {"```python\nassert 1 + 1 == 3\n```\n": None,
             "```bash\npip install caffepy\n```\n": "only `caffe ...` commands",
             "```bash\n# not run:\npip install caffepy\n```\n": "needs a reason",
             "```bash\ncaffe train -solver missing.prototxt\n```\n": "exited 1"}
    for text, message in cases.items():
        page.write_text(text)
        with pytest.raises(AssertionError, match=message):
            run_page(page, tmp_path)
