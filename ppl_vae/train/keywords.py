"""``fit``'s keywords: the previous release's spellings (each still accepted for one release,
with a ``FutureWarning`` naming the new one) and the options table of ``docs/options.md``, both
from the declarations of :mod:`ppl_vae.train.options`."""

from __future__ import annotations

import warnings
from dataclasses import MISSING, fields, replace

from ppl_vae.train.objective import TERMS
from ppl_vae.train.options import GROUPS, Checkpoint, FitConfig, Objective

__all__ = ["fit_config", "legacy_keywords", "options_table"]


def legacy_keywords() -> dict[str, tuple[str, str]]:
    """Each keyword ``fit`` took before the groups -> (group, field)."""
    return {f.metadata.get("legacy") or f.name: (group, f.name)
            for group, cls in GROUPS.items() for f in fields(cls) if f.name != "terms"}


def _term_keywords() -> dict[str, tuple[type, str]]:
    """The old term keywords (kl_warmup_epochs, free_bits, free_bits_per) -> (term, field)."""
    out = {}
    for term in TERMS:
        for f in fields(term):
            out[f.metadata["flag"].lstrip("-").replace("-", "_")] = (term, f.name)
    return out


def _legacy_patience(old: dict, epochs, schedule) -> int | None:
    """One patience from the two old ones, as each was used: with epochs='auto' patience
    (convergence); with integer epochs early_stopping_patience (early stopping), else patience
    only where the plateau ``schedule`` read it (it had no other effect there)."""
    stop, conv = old.pop("early_stopping_patience", None), old.pop("patience", None)
    if epochs == "auto":
        return conv
    return stop if stop is not None else (conv if schedule else None)


def fit_config(*, groups: dict, legacy: dict, **flat) -> FitConfig:
    """``fit``'s keywords checked into a :class:`FitConfig`; ``legacy`` holds old keywords,
    each warned about once (``FutureWarning``) with its new spelling, and applied over the
    groups. Unknown keywords are a ``TypeError``, as Python says it."""
    old, legacy_map, term_map = dict(legacy), legacy_keywords(), _term_keywords()
    unknown = sorted(set(old) - set(legacy_map) - set(term_map) - {"early_stopping_patience"})
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    for name in sorted(old):
        warnings.warn(_deprecation(name, legacy_map, term_map), FutureWarning, stacklevel=3)
    groups = dict(groups)
    if "patience" in old or "early_stopping_patience" in old:
        loop = _given(groups.get("loop"), GROUPS["loop"])
        old["patience"] = _legacy_patience(old, flat.get("epochs"),
                                           old.get("lr_schedule", loop.lr_schedule))
    changes: dict[str, dict] = {}
    terms: dict[type, dict] = {}
    for name, value in old.items():
        if name in term_map:
            term, attr = term_map[name]
            terms.setdefault(term, {})[attr] = value
        else:
            group, attr = legacy_map[name]
            changes.setdefault(group, {})[attr] = value
    # In the built-in order (the warm-up's handler inside the free bits'), as before.
    built = tuple(term(**terms[term]) for term in TERMS if term in terms
                  and terms[term].get(fields(term)[0].name) not in (None, 0))
    if built:
        changes.setdefault("objective", {})["terms"] = (
            *_given(groups.get("objective"), Objective).terms, *built)
    for group, kw in changes.items():
        groups[group] = replace(_given(groups.get(group), GROUPS[group]), **kw)
    return FitConfig(**flat, **groups)


def _given(value, cls):
    if value is None:
        return cls()
    return value if isinstance(value, cls) or cls is not Checkpoint else Checkpoint(dir=value)


def _deprecation(name: str, legacy_map: dict, term_map: dict) -> str:
    if name == "early_stopping_patience":
        return ("fit(early_stopping_patience=N) is deprecated (removed in the next release): use "
                "loop=Loop(patience=N); with integer epochs it stops after N epochs without a "
                "better validation ELBO, as early_stopping_patience did, and with epochs='auto' "
                "it is the convergence patience, as patience was")
    if name == "patience":
        return ("fit(patience=N) is deprecated (removed in the next release): use "
                "loop=Loop(patience=N), the one patience (epochs='auto': convergence, as before; "
                "integer epochs: also early stopping on the validation ELBO, which "
                "early_stopping_patience was)")
    if name in term_map:
        term, attr = term_map[name]
        return (f"fit({name}=...) is deprecated (removed in the next release): use "
                f"objective=Objective(terms=[{term.__name__}({attr}=...)])")
    group, attr = legacy_map[name]
    return (f"fit({name}=...) is deprecated (removed in the next release): use "
            f"{group}={GROUPS[group].__name__}({attr}=...)")


def _declared_rows():
    """(group, keyword, flags, default, allowed, doc) of every declared option (a term's
    first field's default is the flag's "off")."""
    for group, cls in (("", FitConfig), *GROUPS.items()):
        for f in fields(cls):
            if "group" in f.metadata or f.metadata.get("internal"):
                continue
            default = f.default if f.default is not MISSING else f.default_factory()
            yield (group, f.name, f.metadata["flag"] or (), default, f.metadata["choices"],
                   f.metadata["doc"])
    for term in TERMS:
        for f in fields(term):
            yield (f"objective.terms: {term.__name__}", f.name, (f.metadata["flag"],),
                   f.default, f.metadata["choices"], f.metadata["doc"])


def options_table() -> str:
    """The Markdown of ``docs/options.md``, generated from the declarations (a test fails when
    the file is stale: ``python -m ppl_vae.train.keywords > docs/options.md``)."""
    lines = ["# `fit`'s options", "",
             "Generated from `ppl_vae/train/options.py` by `python -m ppl_vae.train.keywords > "
             "docs/options.md`; do not edit by hand.", "",
             "`fit(model, guide, data, *, validation_data=None, <flat options>, objective=, "
             "loop=, checkpoint=, parallel=, compute=)`: the flat options first, then each "
             "group's fields (`loop=Loop(patience=5)`). Terms go in "
             "`objective=Objective(terms=[KLWarmup(10), FreeBits(0.5)])`.", "",
             "The last column is the keyword `fit` took before the groups: it still works for one "
             "release, with a `FutureWarning`.", "",
             "| group | option | CLI flag | default | allowed | what it does | was |",
             "|---|---|---|---|---|---|---|"]
    old = {new: name for name, new in legacy_keywords().items()}
    old.update({(term.__name__, attr): name for name, (term, attr) in _term_keywords().items()})
    for group, name, flags, default, choices, doc in _declared_rows():
        flag = " / ".join(f"`{f}`" for f in flags) or "-"
        allowed = ", ".join(map(repr, choices)) if choices else ""
        key = (group.split(": ")[-1], name) if group.startswith("objective.terms") \
            else (group, name)
        was = old.get(key)
        was = f"`{was}`" + (", `early_stopping_patience`" if was == "patience" else "") \
            if was else ""
        lines.append(f"| {group or 'fit'} | `{name}` | {flag} | `{default!r}` | {allowed} | "
                     f"{doc} | {was} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(options_table(), end="")
