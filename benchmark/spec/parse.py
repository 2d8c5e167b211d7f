"""Parsing and strict validation of a spec document: an unknown key or a bad value raises
`SpecError` naming the dotted key, so a typo can never silently change the threat model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.spec.names import (
    BUDGETS,
    DATASETS,
    INTERPOLATIONS,
    LABEL_MODES,
    MARGIN_ATTACKS,
    NATTACK_PARAMETERIZATIONS,
    WHITE_BOX_ATTACKS,
)
from benchmark.spec.schema import (
    AdaptivePolicy,
    AttackParams,
    Budget,
    DatasetSpec,
    Diagnostics,
    HeldOutSource,
    HubFile,
    NAttackParams,
    Preprocessing,
    RandomizedPolicy,
    Spec,
    SpecError,
)

SPEC_SCHEMA = "threatbench.spec/1"


def _check_keys(table: dict[str, Any], where: str, required: set[str], optional: set[str] = frozenset()):
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - required - set(optional))
    if unknown:
        allowed = ", ".join(sorted(required | set(optional)))
        raise SpecError(f"{_join(where, unknown[0])}: unknown key (allowed here: {allowed})")
    missing = sorted(required - set(table))
    if missing:
        raise SpecError(f"{_join(where, missing[0])}: required key is missing")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _int(value: Any, key: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{key}: must be >= {minimum}, got {value}")
    return value


def _float(value: Any, key: str, *, low: float, high: float, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{key}: expected a number, got {value!r}")
    value = float(value)
    above_low = value > low if low_open else value >= low
    if not (above_low and value <= high):   # written so that NaN (valid TOML: `nan`) is rejected
        bracket = "(" if low_open else "["
        raise SpecError(f"{key}: must lie in {bracket}{low}, {high}], got {value}")
    return value


def _str(value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{key}: expected a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise SpecError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise SpecError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(_str(v, f"{key}[{i}]") for i, v in enumerate(value))


def _shape(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != 3:
        raise SpecError(f"{key}: expected [channels, height, width], got {value!r}")
    return tuple(_int(v, f"{key}[{i}]", minimum=1) for i, v in enumerate(value))


# ---------------------------------------------------------------- parsing

_ATTACK_KEYS = {
    "fgsm": set(),
    "step_ll": set(),
    "rand_fgsm": {"alpha"},
    "ifgsm": {"steps"},
    "pgd": {"steps", "step_size", "random_start"},
    "epgd": {"steps", "step_size", "random_start", "draws"},
    "pgd_margin": {"steps", "step_size", "random_start"},
    "epgd_margin": {"steps", "step_size", "random_start", "draws"},
}


def _parse_attack(name: str, table: dict[str, Any], where: str, eps: float) -> AttackParams:
    _check_keys(table, where, {"label"} | _ATTACK_KEYS[name])
    params: dict[str, Any] = {"label": _str(table["label"], f"{where}.label", LABEL_MODES)}
    if "alpha" in table:
        alpha = _float(table["alpha"], f"{where}.alpha", low=0.0, high=1.0)
        if alpha >= eps:
            raise SpecError(f"{where}.alpha: must be smaller than eps ({eps}), got {alpha}")
        params["alpha"] = alpha
    if "steps" in table:
        params["steps"] = _int(table["steps"], f"{where}.steps", minimum=1)
    if "step_size" in table:
        params["step_size"] = _float(table["step_size"], f"{where}.step_size", low=0.0, high=1.0)
    if "random_start" in table:
        if not isinstance(table["random_start"], bool):
            raise SpecError(f"{where}.random_start: expected true or false, got {table['random_start']!r}")
        params["random_start"] = table["random_start"]
    if "draws" in table:
        params["draws"] = _int(table["draws"], f"{where}.draws", minimum=1)
    return AttackParams(name=name, **params)


def _parse_nattack(table: dict[str, Any], where: str) -> NAttackParams:
    keys = {"population", "sigma", "learning_rate", "max_iterations", "check_every", "search_shape"}
    _check_keys(table, where, keys, {"parameterization", "score_draws"})
    return NAttackParams(
        parameterization=_str(table.get("parameterization", "tanh"), f"{where}.parameterization",
                              NATTACK_PARAMETERIZATIONS),
        score_draws=_int(table.get("score_draws", 1), f"{where}.score_draws", minimum=1),
        population=_int(table["population"], f"{where}.population", minimum=2),
        sigma=_float(table["sigma"], f"{where}.sigma", low=0.0, high=10.0),
        learning_rate=_float(table["learning_rate"], f"{where}.learning_rate", low=0.0, high=10.0),
        max_iterations=_int(table["max_iterations"], f"{where}.max_iterations", minimum=1),
        check_every=_int(table["check_every"], f"{where}.check_every", minimum=1),
        search_shape=_shape(table["search_shape"], f"{where}.search_shape"),
    )


def _parse_budget(name: str, table: dict[str, Any], where: str) -> Budget:
    _check_keys(table, where, {"n", "nattack_n"},
                {"nattack_max_iterations", "ranked", "smoothed_n", "smoothed_nattack_n"})
    n = _int(table["n"], f"{where}.n", minimum=1)
    nattack_n = _int(table["nattack_n"], f"{where}.nattack_n", minimum=1)
    if nattack_n > n:
        raise SpecError(f"{where}.nattack_n: must not exceed n ({n}), got {nattack_n}")
    iterations = table.get("nattack_max_iterations")
    if iterations is not None:
        iterations = _int(iterations, f"{where}.nattack_max_iterations", minimum=1)
    ranked = table.get("ranked", False)
    if not isinstance(ranked, bool):
        raise SpecError(f"{where}.ranked: expected true or false, got {ranked!r}")
    if ("smoothed_n" in table) != ("smoothed_nattack_n" in table):
        raise SpecError(f"{where}: 'smoothed_n' and 'smoothed_nattack_n' go together")
    smoothed = {}
    if "smoothed_n" in table:
        smoothed["smoothed_n"] = _int(table["smoothed_n"], f"{where}.smoothed_n", minimum=1)
        smoothed["smoothed_nattack_n"] = _int(table["smoothed_nattack_n"], f"{where}.smoothed_nattack_n", minimum=1)
        if smoothed["smoothed_nattack_n"] > smoothed["smoothed_n"]:
            raise SpecError(f"{where}.smoothed_nattack_n: must not exceed smoothed_n ({smoothed['smoothed_n']})")
    return Budget(name=name, n=n, nattack_n=nattack_n, nattack_max_iterations=iterations, ranked=ranked,
                  **smoothed)


def _sha256(value: Any, key: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SpecError(f"{key}: expected a sha256 (64 lowercase hex digits), got {value!r}")
    return value


def _parse_sources(value: Any, where: str) -> tuple[HeldOutSource, ...]:
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected [[{where}]] tables")
    sources, names = [], set()
    for i, table in enumerate(value):
        key = f"{where}[{i}]"
        _check_keys(table, key, {"name", "architecture"}, {"weights", "sha256", "hub"})
        name = _str(table["name"], f"{key}.name")
        if name in names:
            raise SpecError(f"{key}.name: duplicate source name {name!r}")
        names.add(name)
        if ("weights" in table) != ("sha256" in table):
            raise SpecError(f"{key}: 'weights' and 'sha256' go together (a source's weights are always pinned)")
        hub = None
        if "hub" in table:
            _check_keys(table["hub"], f"{key}.hub", {"repo", "revision", "file"})
            revision = _str(table["hub"]["revision"], f"{key}.hub.revision")
            if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
                raise SpecError(f"{key}.hub.revision: expected a full 40-hex commit sha, got {revision!r}")
            hub = HubFile(_str(table["hub"]["repo"], f"{key}.hub.repo"), revision,
                          _str(table["hub"]["file"], f"{key}.hub.file"))
        sources.append(HeldOutSource(
            name=name,
            architecture=_str(table["architecture"], f"{key}.architecture"),
            weights=_str(table["weights"], f"{key}.weights") if "weights" in table else None,
            sha256=_sha256(table["sha256"], f"{key}.sha256") if "sha256" in table else None,
            hub=hub,
        ))
    return tuple(sources)


def _parse_randomized(table: Any) -> RandomizedPolicy:
    _check_keys(table, "randomized", {"prediction_repeats"}, {"batch_size", "nattack_batch_size"})
    if ("batch_size" in table) != ("nattack_batch_size" in table):
        raise SpecError("randomized: 'batch_size' and 'nattack_batch_size' go together")
    optional = {key: _int(table[key], f"randomized.{key}", minimum=1)
                for key in ("batch_size", "nattack_batch_size") if key in table}
    return RandomizedPolicy(_int(table["prediction_repeats"], "randomized.prediction_repeats", minimum=1),
                            **optional)


def _parse_adaptive(table: Any) -> AdaptivePolicy:
    _check_keys(table, "adaptive", {"cascade", "subsample"})
    if not isinstance(table["cascade"], bool):
        raise SpecError(f"adaptive.cascade: expected true or false, got {table['cascade']!r}")
    return AdaptivePolicy(cascade=table["cascade"],
                          subsample=_str(table["subsample"], "adaptive.subsample", ("first", "uniform")))


def _parse_diagnostics(table: Any) -> Diagnostics:
    _check_keys(table, "diagnostics", {"unbounded_pgd_eps", "unbounded_pgd_examples"})
    return Diagnostics(
        unbounded_pgd_eps=_float(table["unbounded_pgd_eps"], "diagnostics.unbounded_pgd_eps", low=0.0, high=1.0),
        unbounded_pgd_examples=_int(table["unbounded_pgd_examples"], "diagnostics.unbounded_pgd_examples",
                                    minimum=1),
    )


def _parse_dataset(name: str, table: dict[str, Any]) -> DatasetSpec:
    where = f"datasets.{name}"
    required = {
        "num_classes", "input_shape", "eps", "architectures", "trained_architecture",
        "static_models", "attacks", "nattack", "budgets",
    }
    _check_keys(table, where, required, {"preprocessing", "held_out_sources"})
    eps = _float(table["eps"], f"{where}.eps", low=0.0, high=1.0)
    attacks_table = table["attacks"]
    _check_keys(attacks_table, f"{where}.attacks", set(WHITE_BOX_ATTACKS), set(MARGIN_ATTACKS))
    attacks = {
        a: _parse_attack(a, attacks_table[a], f"{where}.attacks.{a}", eps)
        for a in (*WHITE_BOX_ATTACKS, *MARGIN_ATTACKS) if a in attacks_table
    }
    budgets_table = table["budgets"]
    _check_keys(budgets_table, f"{where}.budgets", {"full", "quick"}, {"standard"})
    budgets = {b: _parse_budget(b, budgets_table[b], f"{where}.budgets.{b}") for b in BUDGETS
               if b in budgets_table}
    if budgets["quick"].ranked:
        raise SpecError(f"{where}.budgets.quick.ranked: the quick budget is a smoke test and is never ranked")
    architectures = _str_list(table["architectures"], f"{where}.architectures")
    trained = _str(table["trained_architecture"], f"{where}.trained_architecture")
    static_models = _str_list(table["static_models"], f"{where}.static_models")
    sources = _parse_sources(table.get("held_out_sources", []), f"{where}.held_out_sources")
    for source in sources:
        if source.architecture in static_models:
            raise SpecError(f"{where}.static_models: {source.architecture!r} is a held-out source's "
                            "architecture; a held-out source must never be seen by a defense")
    preprocessing = None
    if "preprocessing" in table:
        pre = table["preprocessing"]
        _check_keys(pre, f"{where}.preprocessing", {"resize", "crop", "interpolation"})
        preprocessing = Preprocessing(
            resize=_int(pre["resize"], f"{where}.preprocessing.resize", minimum=1),
            crop=_int(pre["crop"], f"{where}.preprocessing.crop", minimum=1),
            interpolation=_str(pre["interpolation"], f"{where}.preprocessing.interpolation", INTERPOLATIONS),
        )
    return DatasetSpec(
        name=name,
        num_classes=_int(table["num_classes"], f"{where}.num_classes", minimum=2),
        input_shape=_shape(table["input_shape"], f"{where}.input_shape"),
        eps=eps,
        architectures=architectures,
        trained_architecture=trained,
        static_models=static_models,
        held_out_sources=sources,
        attacks=attacks,
        nattack=_parse_nattack(table["nattack"], f"{where}.nattack"),
        budgets=budgets,
        preprocessing=preprocessing,
    )


def parse_spec(document: dict[str, Any], *, sha256: str, path: Path) -> Spec:
    _check_keys(document, "", {"schema", "version", "norm", "seed", "confidence", "randomized",
                               "diagnostics", "datasets"}, {"adaptive"})
    schema = _str(document["schema"], "schema")
    if schema != SPEC_SCHEMA:
        raise SpecError(f"schema: this threatbench reads {SPEC_SCHEMA!r}, the file says {schema!r}")
    datasets_table = document["datasets"]
    if not isinstance(datasets_table, dict) or not datasets_table:
        raise SpecError("datasets: expected at least one [datasets.<name>] table")
    known = DATASETS
    for name in datasets_table:
        if name not in known:
            raise SpecError(f"datasets.{name}: unknown dataset (known: {', '.join(known)})")
    return Spec(
        schema=schema,
        version=_str(document["version"], "version"),
        norm=_str(document["norm"], "norm", ("linf",)),
        seed=_int(document["seed"], "seed"),
        confidence=_float(document["confidence"], "confidence", low=0.5, high=0.999),
        randomized=_parse_randomized(document["randomized"]),
        diagnostics=_parse_diagnostics(document["diagnostics"]),
        adaptive=_parse_adaptive(document["adaptive"]) if "adaptive" in document else AdaptivePolicy(),
        datasets={name: _parse_dataset(name, t) for name, t in datasets_table.items()},
        sha256=sha256,
        path=path,
    )
