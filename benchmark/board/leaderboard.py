"""`threatbench leaderboard`: the markdown pages, generated from `leaderboard/results/**.json`.

Deterministic (same records, same bytes). Only records of a ranked budget of the current spec with
every family measured and no raised gradient-masking flag are ranked, by the per-example worst case
over all families, in one table per ranked budget (benchmark.board.ranking). Entries whose 95%
interval overlaps the best one's are tied with it and shown in bold. Flagged entries are listed with
their evidence under "Flagged (not ranked)"; they and quick-budget or incomplete records go to a
separate, clearly labelled provisional table (benchmark.board.sections). See docs/ranking.md.

Every page opens with the leaderboard release (benchmark.version) and the date of its newest record,
then a status line (benchmark.board.status). Every ranked row has a stable anchor (`row_anchor`) and
links to its record file with the judge commit that measured it; `benchmark.board.citing` turns such
a record into BibTeX.

Every text that comes from a record or a references file (entry names, evidence, claims, sources)
is escaped for markdown and HTML (benchmark.untrusted), links are only https:// to the hosts a
manifest may name, and pages are written only for the spec's datasets, inside the leaderboard
directory (this module).
"""

from __future__ import annotations

from pathlib import Path

from benchmark import paths
from benchmark.board.pages import render_dataset, render_index
from benchmark.board.ranking import collect, spec_datasets
from benchmark.board.references import load_references
from benchmark.board.sections import load_eps_sweeps, plot_name, split_eps_sweeps
from benchmark.board.status import data_date
from benchmark.errors import OutputPathError
from benchmark.evaluation.results import atomic_write_text
from benchmark.spec import load_spec
from benchmark.untrusted import excerpt

LEADERBOARD_DIR = paths.LEADERBOARD_DIR


def render_pages(results_dir: Path, spec_version: str | None,
                 references_dir: Path | None = None) -> dict[str, str]:
    """{file name: text} for the index and one page per dataset."""
    by_dataset = collect(results_dir, spec_version)
    references_dir = references_dir or results_dir.parent / "references"
    references = load_references(references_dir)
    sweeps_dir = results_dir.parent / "sweeps"
    sweep_datasets = {p.name for p in sweeps_dir.glob("*") if p.is_dir()}
    datasets = _page_datasets({str(results_dir): set(by_dataset), str(references_dir): set(references),
                               str(sweeps_dir): sweep_datasets})
    board_date = data_date([row for rows in by_dataset.values() for row in rows])
    judged = spec_version or load_spec().version
    pages = {f"{dataset}.md": render_dataset(dataset, by_dataset.get(dataset, []), references.get(dataset, []),
                                             load_eps_sweeps(sweeps_dir, dataset), spec_version=judged,
                                             board_date=board_date)
             for dataset in datasets}
    pages["README.md"] = render_index(datasets, by_dataset, references, spec_version, judged, board_date)
    return pages


def _page_datasets(sources: dict[str, set[str]]) -> list[str]:
    """The datasets to write a page for; `sources`: where each set of names was found."""
    for where, names in sources.items():
        unknown = sorted(names - set(spec_datasets()))
        if unknown:
            raise OutputPathError(f"{where}: {excerpt(unknown[0])} is not a dataset of the spec "
                                  f"({', '.join(spec_datasets())}); a page is written only for those")
    return sorted(set().union(*sources.values()))


def page_path(out_dir: Path, name: str) -> Path:
    """`out_dir / name` for README.md or a spec dataset's page, and nothing else."""
    allowed = {"README.md", *(f"{dataset}.md" for dataset in spec_datasets())}
    path = out_dir / name
    if name not in allowed or path.resolve().parent != out_dir.resolve():
        raise OutputPathError(f"{out_dir}: refusing to write the page {excerpt(name)}; pages are README.md "
                              "and <dataset>.md for the spec's datasets, inside the leaderboard directory")
    return path


def write_pages(out_dir: Path = LEADERBOARD_DIR, spec_version: str | None = None) -> list[Path]:
    """Write the pages and each dataset's accuracy-vs-eps plot of the sweeps its page shows; a plot
    whose sweeps are all stale is removed rather than left beside a page that no longer shows it."""
    from benchmark.board.sweeps import plot_eps_sweeps

    written = []
    for name, text in render_pages(out_dir / "results", spec_version).items():
        atomic_write_text(page_path(out_dir, name), text)
        written.append(out_dir / name)
    judged = spec_version or load_spec().version
    by_dataset = collect(out_dir / "results", spec_version)
    for dataset in sorted(p.name for p in (out_dir / "sweeps").glob("*") if p.is_dir()):
        shown, _ = split_eps_sweeps(load_eps_sweeps(out_dir / "sweeps", dataset), by_dataset.get(dataset, []), judged)
        plot = out_dir / plot_name(dataset)
        if shown:
            written.append(plot_eps_sweeps(shown, plot))
        elif plot.is_file():
            plot.unlink()
    return written


def stale_pages(out_dir: Path = LEADERBOARD_DIR, spec_version: str | None = None) -> list[str]:
    """Pages whose committed text differs from what the records generate (or that are missing)."""
    return [name for name, text in render_pages(out_dir / "results", spec_version).items()
            if not (out_dir / name).is_file() or (out_dir / name).read_text() != text]
