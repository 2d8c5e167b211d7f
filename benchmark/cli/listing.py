"""`threatbench list architectures | zoo | attacks | datasets`: what the judge knows by name."""

from __future__ import annotations

import dataclasses
import sys
import textwrap

from benchmark.cli.common import SPEC_FILE_HELP, TERMINAL_WIDTH, wrap
from benchmark.errors import ThreatbenchError
from benchmark.paths import ZOO_FILES_DIR
from benchmark.spec import (
    ADAPTIVE_ATTACK,
    TRANSFER_ATTACKS,
    UNBOUNDED_DIAGNOSTIC,
    WHITE_BOX_DETERMINISTIC,
    WHITE_BOX_RANDOMIZED,
    load_spec,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NOISE_LABELS = {"pni:": "PNI-W weight noise (He et al. 2019)",
                "cni:": "CNI-W weight noise (Zheltonozhskii et al. 2020)"}


def _columns(rows: list[tuple[str, str]]) -> list[str]:
    """`name  text` lines, the texts aligned after the longest name and folded to TERMINAL_WIDTH."""
    width = max((len(name) for name, _ in rows), default=0)
    return [textwrap.fill(f"{name:<{width}}  {text}", TERMINAL_WIDTH, subsequent_indent=" " * (width + 2),
                          break_on_hyphens=False) for name, text in rows]


# ---------------------------------------------------------------- architectures


def architecture_lines(args) -> list[str]:
    from benchmark.models.architectures import NOISE_PREFIXES, TIMM_PREFIX
    from benchmark.models.registry import registered

    architectures = [(a.name, f"{a.in_channels} channel{'s' if a.in_channels > 1 else ''}, {a.description} "
                              f"({a.paper})") for a in registered().values()]
    composed = [(f"{TIMM_PREFIX}<any timm model name>", "a timm model, built without downloading weights")]
    composed += [(f"{prefix}<name>", f"<name> (any name above, timm ones too) with "
                                     f"{NOISE_LABELS.get(prefix, 'weight noise')}") for prefix in NOISE_PREFIXES]
    return ["architectures (threatbench evaluate --arch NAME):", *_columns(architectures),
            "", "composed names:", *_columns(composed)]


# ---------------------------------------------------------------- zoo


def read_zoo(dataset: str) -> list[dict]:
    """The entries of baselines/zoo/<dataset>.toml; a smoothed variant takes its role and
    architecture from its base entry."""
    from benchmark.intake.names import named_entries, zoo_table

    zoo_files = {path.stem: path for path in ZOO_FILES_DIR.glob("*.toml")}
    if dataset not in zoo_files:
        raise ThreatbenchError(f"no zoo for {dataset!r} in {ZOO_FILES_DIR}; zoos: "
                               f"{', '.join(sorted(zoo_files)) or 'none'}")
    try:
        table = zoo_table(zoo_files[dataset])
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ThreatbenchError(f"{zoo_files[dataset]}: not valid TOML: {error}") from None
    entries: dict[str, dict] = {}
    for entry in named_entries(table):
        base = entries.get(entry.get("base"), {})
        entries[str(entry["name"])] = {"role": base.get("role", "?"),
                                       "architecture": base.get("architecture", "?"), **entry}
    return list(entries.values())


def _zoo_text(entry: dict) -> str:
    smoothing = entry.get("smoothing")
    smoothed = (f", smoothed ({smoothing.get('samples')} draws, sigma {smoothing.get('sigma')})"
                if isinstance(smoothing, dict) else "")
    return f"{str(entry['role']):<10}  {entry['architecture']}{smoothed}"


def zoo_lines(args) -> list[str]:
    entries = read_zoo(args.dataset)
    return [wrap(f"the {args.dataset} zoo (baselines/zoo/{args.dataset}.toml): {len(entries)} entries; "
                 "role, architecture"),
            *_columns([(str(entry["name"]), _zoo_text(entry)) for entry in entries])]


# ---------------------------------------------------------------- attacks


def _families(attack: str) -> str:
    """Which families run `attack`; PGD's EOT twins replace it for randomized entries."""
    families = []
    deterministic, randomized = attack in WHITE_BOX_DETERMINISTIC, attack in WHITE_BOX_RANDOMIZED
    if deterministic or randomized:
        families.append("white_box" + ("" if deterministic and randomized else
                                       " (deterministic entries)" if deterministic else " (randomized entries)"))
    if attack in TRANSFER_ATTACKS:
        families.append("transfer")
    return ", ".join(families) or "in no family"


def _parameters(params: dict) -> str:
    return ", ".join(key if value is True else f"{key} {list(value) if isinstance(value, tuple) else value}"
                     for key, value in params.items())


def attack_lines(args) -> list[str]:
    spec = load_spec(args.spec)
    dataset = spec.dataset(args.dataset)
    iterations = ", ".join(f"{b.name} {b.nattack_max_iterations or dataset.nattack.max_iterations}"
                           for b in dataset.budgets.values())
    rows = [(name, f"{_families(name)}: {_parameters(params.as_dict())}")
            for name, params in dataset.attacks.items()]
    rows.append((ADAPTIVE_ATTACK, f"adaptive: {_parameters(dataclasses.asdict(dataset.nattack))}; "
                                  f"iterations per budget: {iterations}"))
    rows.append((UNBOUNDED_DIAGNOSTIC, f"diagnostic (gradient masking): PGD at eps "
                                       f"{spec.diagnostics.unbounded_pgd_eps:g} on "
                                       f"{spec.diagnostics.unbounded_pgd_examples} examples"))
    return [wrap(f"attacks on {args.dataset} (spec v{spec.version}, eps {dataset.eps:g}, {spec.norm}): the "
                 "families that run each (transfer: crafted on the held-out sources), its parameters"),
            *_columns(rows)]


# ---------------------------------------------------------------- datasets


def _eps_text(eps: float) -> str:
    steps = eps * 255
    exact = steps >= 1 and abs(steps - round(steps)) < 1e-6
    return f"{eps:g}" + (f" ({round(steps)}/255)" if exact else "")


def dataset_lines(args) -> list[str]:
    spec = load_spec(args.spec)
    rows = []
    for d in spec.datasets.values():
        budgets = ", ".join(f"{b.name} (n {b.n}{', ranked' if b.ranked else ''})" for b in d.budgets.values())
        rows.append((d.name, f"{d.num_classes} classes, input {list(d.input_shape)}, eps {_eps_text(d.eps)}; "
                             f"budgets: {budgets}"))
    return [f"datasets of the threat-model spec v{spec.version}:", *_columns(rows)]


# ---------------------------------------------------------------- command

LISTS = {"architectures": architecture_lines, "zoo": zoo_lines, "attacks": attack_lines,
         "datasets": dataset_lines}


def command_list(args) -> int:
    print("\n".join(LISTS[args.what](args)))
    return 0


def add_parsers(commands) -> None:
    listing = commands.add_parser("list", help="the architectures, zoo entries, attacks or datasets the "
                                  "judge knows, one a line")
    listing.add_argument("what", choices=list(LISTS))
    listing.add_argument("--dataset", default="fashion-mnist", help="whose zoo or attacks")
    listing.add_argument("--spec", help=SPEC_FILE_HELP)
    listing.set_defaults(handler=command_list)
