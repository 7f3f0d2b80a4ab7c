"""Docs that cannot drift: the tables generated from the code are in step
with it, the README stays short and links to pages that exist, every
approach, phase, option and result field is documented, and past run times
live in docs/decisions.md only."""

import re
from pathlib import Path

import pytest

import llama_ckpt
from llama_ckpt import docgen
from llama_ckpt.registry import APPROACHES, GUIDE

REPO = Path(llama_ckpt.__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
DECISIONS = DOCS / "decisions.md"
README_MAX_LINES = 200
# a run time or a run id in prose: "took 79 minutes", "run 20261204-080855"
RUN_TIME = re.compile(r"\b\d+(\.\d+)?\s*(-\s*\d+\s*)?(minutes?|mins?|hours?)\b", re.I)
RUN_ID = re.compile(r"\b20\d{6}-\d{6}\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return docgen.doc_files()


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    out, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_every_generated_region_is_in_step_with_the_code():
    stale = [str(p.relative_to(REPO)) for p in docgen.stale()]
    assert not stale, f"run python -m llama_ckpt.docgen: {stale}"


def test_the_tables_are_generated_where_they_belong():
    where = {"README.md": {"options", "targets", "presets", "phases", "guide-approaches"},
             "docs/approaches.md": {"approaches"}, "docs/claims.md": {"claims", "claims-rule", "claims-settings"},
             "docs/results.md": {"measurement-fields", "training-fields"}, "docs/training.md": {"savers"},
             "docs/protocol.md": {"phase-metrics"}}
    for rel, names in where.items():
        assert names <= set(docgen.regions((REPO / rel).read_text())), rel
    used = {n for p in _pages() for n in docgen.regions(p.read_text())}
    assert used == set(docgen.REGIONS), "a generated table no page shows"


def test_check_names_the_stale_file_and_a_rewrite_fixes_it(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n\n<!-- generated: guide-approaches -->\nold\n<!-- end generated -->\n")
    (tmp_path / "docs" / "fine.md").write_text("nothing generated here\n")
    assert docgen.main(["--check"], root=tmp_path) == 1
    assert "stale: README.md" in capsys.readouterr().err
    assert "old" in (tmp_path / "README.md").read_text()  # --check rewrites nothing
    assert docgen.main([], root=tmp_path) == 0
    assert "| `ts+ocdbt` |" in (tmp_path / "README.md").read_text()
    assert docgen.main(["--check"], root=tmp_path) == 0


def test_an_unknown_or_unclosed_region_is_an_error():
    with pytest.raises(ValueError, match="unknown generated region"):
        docgen.render("<!-- generated: nope -->\n<!-- end generated -->\n")
    with pytest.raises(ValueError, match="without its"):
        docgen.render("<!-- generated: options -->\nno end\n")


def test_the_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move reference material to docs/"


def test_every_approach_has_a_row_in_docs_approaches():
    text = (DOCS / "approaches.md").read_text()
    missing = [n for n in APPROACHES if f"| `{n}` |" not in text]
    assert not missing, missing
    readme = README.read_text()
    assert [n for n in APPROACHES if GUIDE in APPROACHES[n].tags and f"| `{n}` |" not in readme] == []


def test_every_phase_and_makefile_option_and_target_is_in_the_readme():
    text = README.read_text()
    assert [p.slug for p in docgen.PHASES.values() if f"`{p.slug}`" not in text] == []
    options = docgen.makefile_options()
    assert {n for n, _d, _m in options} >= {"MODEL", "MODEL_PATH", "REPEATS", "OUT", "KEEP", "RUN_ID"}
    assert [n for n, _d, _m in options if f"| `{n}` |" not in text] == []
    targets = docgen.makefile_targets()
    assert {"run-all", "test", "help"} <= {t for t, _m in targets}
    assert [t for t, _m in targets if f"| `make {t}` |" not in text] == []


def test_every_result_field_is_described():
    assert docgen.field_doc_problems() == []
    text = (DOCS / "results.md").read_text()
    fields = set(docgen.MEASUREMENT_FIELDS) | set(docgen.TRAINING_FIELDS)
    assert [f for f in fields if f"| `{f}` |" not in text] == []


def test_a_field_without_a_description_fails_the_generation(monkeypatch):
    monkeypatch.setattr(docgen, "TRAINING_FIELDS", docgen.TRAINING_FIELDS + ("brand_new_s",))
    assert "brand_new_s: no description in FIELD_DOCS" in docgen.field_doc_problems()
    with pytest.raises(LookupError, match="brand_new_s"):
        docgen.REGIONS["training-fields"]()
    monkeypatch.setitem(docgen.FIELD_DOCS, "gone_field", "a field no row has")
    assert "gone_field: FIELD_DOCS describes a field no row has" in docgen.field_doc_problems()


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme_links = set(LINK.findall(README.read_text()))
    pages = sorted(p.relative_to(REPO).as_posix() for p in DOCS.glob("*.md"))
    assert [p for p in pages if p not in readme_links] == [], "a docs page the README does not link"
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_code_points_at_decisions_that_exist():
    anchors = _anchors(DECISIONS)
    sources = [*sorted((REPO / "llama_ckpt").rglob("*.py")), REPO / "Makefile"]
    missing = [f"{p.relative_to(REPO)}: #{a}" for p in sources
               for a in re.findall(r"docs/decisions\.md#([\w-]+)", p.read_text()) if a not in anchors]
    assert not missing, missing


def test_run_times_and_run_ids_live_in_decisions_only():
    found = []
    for page in _pages():
        if page == DECISIONS:
            continue
        for i, line in enumerate(page.read_text().splitlines(), 1):
            if RUN_TIME.search(line) or RUN_ID.search(line) or DATE.search(line):
                found.append(f"{page.relative_to(REPO)}:{i}: {line.strip()}")
    for p in sorted((REPO / "llama_ckpt").rglob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if RUN_ID.search(line) or DATE.search(line):
                found.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "move past measurements to docs/decisions.md:\n" + "\n".join(found)
