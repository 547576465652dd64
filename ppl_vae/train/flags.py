"""The command line's training flags, generated from ``fit``'s option declarations
(:mod:`ppl_vae.train.options`), and parsed arguments turned back into ``fit``'s keywords.

Here, beside the declarations, so that whatever trains from parsed arguments (the CLI, a
run-folder job) uses the same two functions.

A flag's value is checked as ``fit`` checks it, while the command line is parsed: a bad value
is argparse's one-line usage error naming the flag.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ppl_vae.train.keywords import legacy_keywords
from ppl_vae.train.objective import TERMS
from ppl_vae.train.options import GROUPS, Check, FitConfig

__all__ = ["add_fit_arguments", "fit_options_from_args"]


def _declared():
    """(group or None, field) of every option with a flag, flat ones first, then the terms'
    (group "terms")."""
    for group, cls in ((None, FitConfig), *GROUPS.items()):
        for f in fields(cls):
            if f.metadata.get("flag"):
                yield group, f
    for term in TERMS:
        for f in fields(term):
            yield "terms", f


def _cli(f) -> dict:
    cli = f.metadata.get("cli")
    return dict(cli) if isinstance(cli, dict) else ({"type": cli} if cli else {})


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def _parse(check, parse, name):
    """argparse type: ``parse`` the text, then the option's declared check on it (the parsed
    value is kept: ``fit`` checks it again). The usage error says what was expected."""
    expected = check.expected if isinstance(check, Check) else None

    def typed(text: str):
        try:
            value = parse(text)
            if check is not None:
                check(name, value)
        except (TypeError, ValueError) as exc:
            said = f"expected {expected}" if expected else str(exc).split(", got")[0]
            raise argparse.ArgumentTypeError(f"{said}, got {text!r}") from None
        return value
    return typed


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every declared option that has one (``--lr``, ``--patience`` /
    ``--early-stopping``, ``--kl-warmup-epochs``, ...), with its doc as help."""
    for _, f in _declared():
        flags, default = f.metadata["flag"], _default(f)
        flags = (flags,) if isinstance(flags, str) else flags
        kwargs = _cli(f)
        kwargs.pop("convert", None)
        check = kwargs.pop("check", f.metadata.get("check"))  # a term's fields: its own check
        name = f.metadata.get("legacy") or f.name
        text = kwargs.pop("help", f.metadata["doc"])
        if flags[0].startswith("--no-") or default is False:
            parser.add_argument(*flags, action="store_true", help=text)
            continue
        parse = kwargs.pop("type", None) or (type(default) if default is not None else str)
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        else:
            kwargs["type"] = _parse(check, parse, name)
        kwargs.setdefault("default", default)
        parser.add_argument(*flags, help=text, **kwargs)


def _value(args, f):
    flags = f.metadata["flag"]
    flag = flags if isinstance(flags, str) else flags[0]
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    if flag.startswith("--no-"):
        return False if value else _default(f)
    convert = _cli(f).get("convert")
    return convert(value) if convert is not None and value is not None else value


def fit_options_from_args(args: argparse.Namespace, **given) -> dict:
    """``fit``'s keywords from the parsed flags (:func:`add_fit_arguments`), with ``given``
    (options without a flag, or set by the command: ``checkpoint_dir=out``, ``callbacks=``)
    taking precedence; each name is a flat keyword of ``fit`` or a group field's keyword as
    ``docs/options.md`` lists it (``checkpoint_dir`` for ``Checkpoint.dir``)."""
    flat, groups, terms = {}, {group: {} for group in GROUPS}, {}
    legacy = legacy_keywords()
    for group, f in _declared():
        if group is None:
            flat[f.name] = _value(args, f)
        elif group == "terms":
            continue
        else:
            groups[group][f.name] = _value(args, f)
    for term in TERMS:
        values = {f.name: _value(args, f) for f in fields(term)}
        first = fields(term)[0].name
        if values[first] not in (None, 0):  # the first field's default: the term is off
            terms[term] = values
    for name, value in given.items():
        if name in legacy:
            group, attr = legacy[name]
            groups[group][attr] = value
        else:
            flat[name] = value
    groups["objective"]["terms"] = (*groups["objective"].get("terms", ()),
                                    *(term(**kw) for term, kw in terms.items()))
    return {**flat, **{group: GROUPS[group](**kw) for group, kw in groups.items()}}
