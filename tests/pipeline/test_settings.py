"""Settings declared once: the ``analyze`` flags, a ``--config`` file's ``[analysis]`` table and a
site spec's are read and checked by the fields of AnalysisSettings, and agree with each other."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from jaxvit_interp.cli import UsageError, _read_config_file, _settings_from, build_parser
from jaxvit_interp.errors import InputError
from jaxvit_interp.patterns.train import AutoencoderSettings
from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.setting import declared
from jaxvit_interp.site.spec import SiteSpecError, load_site_spec

FIELDS = declared(AnalysisSettings)
FLAGGED = {name: how for name, how in FIELDS.items() if how.flag_name}
AE_FIELDS = declared(AutoencoderSettings)
SPEC = 'model = "builtin:digits"\nimages = "builtin:digits"\nmax_images = 100000\n'


def obviously_allowed(how, value) -> bool:
    """The bounds a field declares, applied the slow obvious way."""
    if value is None:
        return how.none is not None
    if how.word is not None and isinstance(value, str) and value == how.word:
        return True
    if how.many:
        items = [value] if isinstance(value, str) else value
        one = dataclasses.replace(how, many=False)
        return (
            isinstance(items, list | tuple)
            and len(items) > 0
            and all(obviously_allowed(one, item) for item in items)
            and not (how.distinct and any(items.count(item) > 1 for item in items))
        )
    if how.choices is not None:
        return isinstance(value, str) and value in how.choices
    if type(value) not in ((int,) if how.type is int else (int, float)):
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return (
        (how.least is None or value >= how.least)
        and (how.more_than is None or value > how.more_than)
        and (how.less_than is None or value < how.less_than)
    )


def draw(how, rng):
    """A random value for the field, allowed or not, often near its bounds."""

    def item():
        if how.choices is not None:
            return str(rng.choice([*how.choices, "bogus", "CLS", ""]))
        if how.type is float:
            edge = how.least if how.least is not None else how.more_than or 0.0
            return float(rng.choice([edge, edge + rng.uniform(-1, 2), how.less_than or 5.0]))
        low = how.least if how.least is not None else 0
        return int(
            rng.choice([low, low - 1, low + int(rng.integers(0, 5000)), -int(rng.integers(1, 9))])
        )

    roll = rng.random()
    if roll < 0.08:
        return [True, 1.5, "x", float("nan")][int(rng.integers(4))]
    if how.word is not None and roll < 0.2:
        return how.word if rng.random() < 0.7 else how.word.upper()
    if how.many:
        return [item() for _ in range(int(rng.integers(0, 4)))]
    return item()


def as_text(how, value) -> str:
    """The value as one writes it after the flag."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def parse_flags(capsys, *argv):
    """``analyze``'s parse of ``argv``: the namespace, or the error argparse printed."""
    try:
        return build_parser().parse_args(["analyze", *argv]), None
    except SystemExit:
        return None, capsys.readouterr().err


def settings_error(make) -> str | None:
    try:
        make()
    except InputError as err:
        return str(err)
    return None


def toml_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def test_every_flag_and_the_settings_accept_the_same_values(rng, capsys):
    for _ in range(12):
        for name, how in FLAGGED.items():
            value = draw(how, rng)
            if name == "memory_budget_bytes" and type(value) is not int:
                continue  # its flag takes MiB: the next test
            allowed = obviously_allowed(how, value)
            refused = settings_error(lambda: AnalysisSettings(**{name: value}))  # noqa: B023
            assert (refused is None) == allowed, (name, value, refused)
            text = as_text(how, value)
            if name == "memory_budget_bytes":
                text = repr(value / 2**20)
            args, error = parse_flags(capsys, f"{how.flag_name}={text}")
            assert (error is None) == allowed, (name, value, error)
            if allowed:
                got = getattr(args, name)
                assert got == (tuple(value) if isinstance(value, list) else value), (name, got)
            else:
                assert f"argument {how.flag_name}: must be " in error, error
                assert text in error or repr(value) in error, (text, error)  # named
                assert refused.startswith(f"{name} must be "), refused
                # Written alike as text and as a value: the same words, from the one check.
                alike = type(value) in (int, str, list) and (type(value) is list) == how.many
                if alike and value != [] and how.flag_unit == 1:
                    body = refused.removeprefix(f"{name} ")
                    assert f"argument {how.flag_name}: {body}" in error, (body, error)


def test_the_budget_flag_takes_mib_and_refuses_what_the_settings_refuse(rng, capsys):
    how = FIELDS["memory_budget_bytes"]
    for mib in [*map(float, rng.uniform(-2, 3000, size=6)), 2.0**-21, 0.0, math.nan, 2.0**-20]:
        args, error = parse_flags(capsys, f"--memory-budget-mb={mib!r}")
        fits = mib > 0 and int(mib * 2**20) >= 1
        assert (error is None) == fits, (mib, error)
        if fits:
            assert args.memory_budget_bytes == int(mib * 2**20)
            AnalysisSettings(memory_budget_bytes=args.memory_budget_bytes)
        else:
            assert "argument --memory-budget-mb: must be " in error, error
    # The same flag, from the same declaration, in every command that runs the ablations.
    helps = set()
    for command in ("analyze", "prune", "benchmark"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]
        (action,) = [a for a in sub._actions if "--memory-budget-mb" in a.option_strings]
        helps.add(action.help)
        assert action.dest == "memory_budget_bytes"
    assert helps == {how.help_text()}


def test_every_field_reads_back_the_text_it_writes(rng):
    for fields, cls in ((FIELDS, AnalysisSettings), (AE_FIELDS, AutoencoderSettings)):
        for _ in range(20):
            for name, how in fields.items():
                value = draw(how, rng) if how.table is None else None
                if how.table is not None or value is None or not obviously_allowed(how, value):
                    continue
                stored = getattr(cls(**{name: value}), name)
                assert how.parse(how.text(stored)) == stored, (name, value)


def test_each_help_states_the_default_of_its_field():
    sub = build_parser()._subparsers._group_actions[0].choices["analyze"]
    actions = {a.dest: a for a in sub._actions}
    assert set(FLAGGED) <= set(actions)  # every field but the autoencoder table has a flag
    assert set(FIELDS) - set(FLAGGED) == {"autoencoder"}
    defaults = AnalysisSettings()
    for name, how in FLAGGED.items():
        action = actions[name]
        assert action.option_strings == [how.flag_name]
        assert action.default is None  # not given: the config file's value or the field's
        said = action.help.rsplit("default: ", 1)[1].removesuffix(")")
        default = getattr(defaults, name)
        if default is None:
            assert said == how.none and how.none, name
        else:
            assert how.parse(said) == default, (name, said, default)
    # The drift the declarations ended: --thumbnail-size said 112 while the field was 64.
    assert actions["thumbnail_size"].help.endswith("(default: 64)")
    text = sub.format_help()
    assert "--interaction-heads" in text and "--random-orders" in text


def random_settings(rng) -> dict:
    """A random allowed non-default value for every flagged field."""
    out = {}
    for name, how in FLAGGED.items():
        while True:
            value = draw(how, rng)
            if name == "memory_budget_bytes":
                value = int(rng.integers(1, 2**12)) << 20
            if obviously_allowed(how, value) and value is not None:
                out[name] = value
                break
    return out


def test_flags_config_file_and_site_spec_give_the_same_settings(rng, capsys, tmp_path):
    values = random_settings(rng)
    values["autoencoder"] = {"max_epochs": int(rng.integers(1, 50)), "features": [4, 8]}
    flags = [
        f"{FIELDS[name].flag_name}={FIELDS[name].text(value)}"
        for name, value in values.items()
        if name != "autoencoder"
    ]
    args, error = parse_flags(capsys, *flags)
    assert error is None, error
    from_flags = _settings_from(args, AnalysisSettings(autoencoder=values["autoencoder"]))

    table = "".join(f"{name} = {toml_value(value)}\n" for name, value in values.items())
    config = tmp_path / "run.toml"
    config.write_text("[analysis]\n" + table)
    args, error = parse_flags(capsys)
    from_file = _settings_from(args, _read_config_file(str(config))["analysis"])
    spec = tmp_path / "site.toml"
    spec.write_text(SPEC + "[analysis]\n" + table)
    from_spec = load_site_spec(spec).analysis

    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    got = from_flags.to_dict()
    ae = got.pop("autoencoder")
    assert {k: got[k] for k in expected if k != "autoencoder"} == {
        k: v for k, v in expected.items() if k != "autoencoder"
    }
    assert ae == {
        **AutoencoderSettings().to_dict(),
        "max_epochs": values["autoencoder"]["max_epochs"],
        "features": (4, 8),
    }
    assert from_file == from_flags == from_spec
    # Flags win over the file.
    args, _ = parse_flags(capsys, "--seed=12345")
    assert _settings_from(args, _read_config_file(str(config))["analysis"]).seed == 12345


def test_without_settings_every_source_gives_the_fields_defaults(capsys, tmp_path):
    args, _ = parse_flags(capsys)
    spec = tmp_path / "site.toml"
    spec.write_text('model = "builtin:digits"\nimages = "builtin:digits"\n')
    loaded = load_site_spec(spec)
    assert _settings_from(args, None) == loaded.analysis == AnalysisSettings()
    # The spec's own defaults (batch_size 64, partial_images from attention_images) are gone.
    assert loaded.analysis.batch_size is None and loaded.analysis.partial_images == 64
    assert loaded.thumbnail_size == AnalysisSettings().thumbnail_size


def out_of_bounds(how):
    """Values the field refuses, as Python values (each of its bounds, crossed)."""
    if how.choices is not None:
        return [["bogus"] if how.many else "bogus"]
    values = []
    if how.least is not None:
        values.append(how.least - 1 if how.type is int else how.least - 0.5)
    if how.more_than is not None:
        values.append(how.more_than)
    if how.less_than is not None:
        values.append(how.less_than)
    return [[v] if how.many else v for v in values]


CASES = [
    (key, name, value)
    for key, fields in (("", FIELDS), ("autoencoder.", AE_FIELDS))
    for name, how in fields.items()
    if how.table is None
    for value in out_of_bounds(how)
]


@pytest.mark.parametrize("prefix,name,value", CASES, ids=[f"{p}{n}={v}" for p, n, v in CASES])
def test_a_bound_is_refused_alike_by_flag_config_and_spec(prefix, name, value, tmp_path, capsys):
    key = prefix + name
    how = (AE_FIELDS if prefix else FIELDS)[name]
    direct = settings_error(
        lambda: (
            AutoencoderSettings(**{name: value}) if prefix else AnalysisSettings(**{name: value})
        )
    )
    assert direct is not None and direct.startswith(f"{name} must be ")
    body = direct.removeprefix(f"{name} ")  # "must be ..., got <value>"

    line = f"{name} = {toml_value(value)}\n"
    table = f"[analysis]\n{line}" if not prefix else f"[analysis.autoencoder]\n{line}"
    config = tmp_path / "run.toml"
    config.write_text(table)
    with pytest.raises(UsageError) as err:
        _read_config_file(str(config))
    assert str(err.value) == f"config file {config}: analysis.{key} {body}"
    spec = tmp_path / "site.toml"
    spec.write_text(SPEC + table)
    with pytest.raises(SiteSpecError) as err:
        load_site_spec(spec)
    assert str(err.value) == f"{spec}: analysis.{key} {body}"
    if not prefix and how.flag_name and name != "memory_budget_bytes":  # MiB: tested above
        _, error = parse_flags(capsys, f"{how.flag_name}={how.text(value)}")
        assert f"argument {how.flag_name}: {body}" in error, (body, error)


def test_unknown_keys_are_named_in_the_config_file_and_the_spec(tmp_path):
    for table, key in (
        ("[analysis]\nepochs = 3\n", "'analysis.epochs'"),
        ("[analysis.autoencoder]\nepochs = 3\n", "'analysis.autoencoder.epochs'"),
    ):
        config = tmp_path / "run.toml"
        config.write_text(table)
        with pytest.raises(UsageError, match=f"config file {config}: unknown key {key}"):
            _read_config_file(str(config))
        spec = tmp_path / "site.toml"
        spec.write_text(SPEC + table)
        with pytest.raises(SiteSpecError, match=f"{spec}: unknown key {key}"):
            load_site_spec(spec)


def test_settings_round_trip_through_to_dict(rng):
    for _ in range(5):
        values = random_settings(rng)
        settings = AnalysisSettings(**values)
        assert AnalysisSettings.from_dict(settings.to_dict()) == settings
    # A NumPy count (a value computed with NumPy) is stored as the int it is, for the JSON.
    assert type(AnalysisSettings(seed=np.int64(3)).seed) is int
