"""The repository stands alone: its code and docs cite docs/references.md, never files outside the checkout,
and install lines work from a checkout (no package index serves hpc-pt)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}
#: names of the project's working notes, which live outside the checkout (spelled in parts so that this
#: file does not cite them itself)
OUTSIDE = ("../" + "shared", "DESIGN" + ".md", "shared/" + "seeds")
SUFFIXES = {".py", ".md", ".sh", ".sbatch", ".toml", ".yaml", ".yml", ".txt", ".cfg"}


def repo_text_files():
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if p.is_file() and (p.suffix in SUFFIXES or p.name.startswith("Dockerfile")):
            yield rel, p.read_text(errors="replace")


def test_no_citation_of_files_outside_the_repository():
    bad = []
    for rel, text in repo_text_files():
        for n, line in enumerate(text.splitlines(), 1):
            if any(name in line for name in OUTSIDE):
                bad.append(f"{rel}:{n}: {line.strip()[:80]}")
    assert not bad, "cite docs/references.md or docs/architecture.md instead:\n" + "\n".join(bad)


def test_install_lines_work_from_a_checkout():
    # `pip install "hpc-pt[mpi]"` needs a package index that serves hpc-pt; none does
    pattern = re.compile(r"""pip install\s+\\?["']?hpc-pt\[""")
    bad = [f"{rel}:{n}" for rel, text in repo_text_files() if rel != Path("tests/foundations/test_docs.py")
           for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not bad, "use pip install \".[extra]\" from the checkout:\n" + "\n".join(bad)


def test_every_cited_seed_is_in_the_references():
    refs = (ROOT / "docs/references.md").read_text()
    listed = set(re.findall(r"^\| (00[0-9]) \|", refs, flags=re.M))
    assert listed == {"000", "001", "002", "003", "004"}
    cited = set()
    for rel, text in repo_text_files():
        cited |= set(re.findall(r"\bseeds? (00[0-9])\b", text))
    assert cited and cited <= listed, f"cited seeds {sorted(cited - listed)} are not in docs/references.md"


def test_docs_links_resolve():
    """Relative links in README.md and docs/*.md point at files that exist."""
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, "\n".join(missing)
