"""YAML reading: YAML 1.2 scalars, positions, and refusal of hostile input."""

from __future__ import annotations

import math
import time
import tracemalloc

import pytest

from capidsl.recipe import Location, RecipeError
from capidsl.recipe import yaml12
from capidsl.recipe.yaml12 import decode, read_yaml

SEED = """\
training:
  batch_size: 32
  learning_rate: 2e-5
  num_epochs: 100
  early_stopping_patience: 5
  checkpoint_frequency: 10
  seed: 42
  mixed_precision: true
  gradient_accumulation_steps: 8
optimizer:
  name: "adamw"
  beta1: 0.9
  beta2: 0.999
  epsilon: 1e-8
  weight_decay: 0.01
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        read_yaml(text, "t.yaml")
    return info.value.render().splitlines()


def test_seed_blocks_load_with_yaml_1_2_floats():
    data = read_yaml(SEED, "seed.yaml").data
    assert data["training"] == {"batch_size": 32, "learning_rate": 2e-5, "num_epochs": 100,
                                "early_stopping_patience": 5, "checkpoint_frequency": 10, "seed": 42,
                                "mixed_precision": True, "gradient_accumulation_steps": 8}
    assert data["optimizer"] == {"name": "adamw", "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.01}
    assert type(data["training"]["learning_rate"]) is float and type(data["optimizer"]["epsilon"]) is float


@pytest.mark.parametrize("text, value", [
    ("1e3", 1000.0), ("-2E-5", -2e-5), ("+.5", 0.5), ("1.", 1.0), (".inf", math.inf), ("-.Inf", -math.inf),
    ("42", 42), ("-7", -7), ("0o17", 15), ("0x1F", 31),
    ("true", True), ("False", False), ("TRUE", True),
    ("null", None), ("~", None), ("", None),
    # YAML 1.1 readings that YAML 1.2 drops: these stay text
    ("yes", "yes"), ("off", "off"), ("2024-01-01", "2024-01-01"), ("1_000", "1_000"), ("0b101", "0b101"),
    ("'2e-5'", "2e-5"), ('"true"', "true"),
])
def test_scalars_follow_the_yaml_1_2_core_schema(text, value):
    got = read_yaml(f"k: {text}\n", "t.yaml").data["k"]
    assert got == value and type(got) is type(value)


def test_nan():
    assert math.isnan(read_yaml("k: .nan\n", "t.yaml").data["k"])


@pytest.mark.parametrize("text, why", [
    ("1" + "0" * 400, "10000000...0000 (401 characters) is outside the range of numbers"),
    ("-" + "9" * 5000, "-9999999...9999 (5001 characters) is outside the range of numbers"),  # past int()'s 4300 digits
    ("9" * 309, "99999999...9999 (309 characters) is outside the range of numbers"),
    ("0x1" + "0" * 256, "0x100000...0000 (259 characters) is outside the range of numbers"),
    ("1e400", "1e400 is outside the range of numbers"), ("-1.8E308", "-1.8E308 is outside the range of numbers"),
    ("!!float 1e999", "1e999 is outside the range of numbers"),
    ("2e-324", "2e-324 is too small to hold as a number (it rounds to 0"),
])
def test_numbers_no_float_can_hold_are_located_problems(text, why):
    (line,) = problems(f"a:\n  k: {text}\n")
    assert line.startswith(f"t.yaml:2:6: a.k: {why}"), line


@pytest.mark.parametrize("text", ["1" + "0" * 308, "1.7976931348623157e308", "5e-324", "0e999", "0." + "0" * 400,
                                  "0" * 400 + "7", "-" + "1" * 300, ".inf", "-.Inf", ".nan", "0x" + "f" * 255])
def test_numbers_at_the_edge_of_the_range_still_read(text):
    read_yaml(f"k: {text}\n", "t.yaml")


def test_explicit_core_tags():
    data = read_yaml("a: !!str 5\nb: !!float 2\nc: !!int '7'\n", "t.yaml").data
    assert data == {"a": "5", "b": 2.0, "c": 7}
    assert problems("a: !!int 1.5\n") == ["t.yaml:1:4: a: '1.5' is not a valid int"]


def test_positions_of_keys_and_values():
    doc = read_yaml(SEED, "seed.yaml")
    pos = doc.positions[("training", "learning_rate")]
    assert pos.key == Location("seed.yaml", 3, 3) and pos.value == Location("seed.yaml", 3, 18)
    assert doc.positions[("optimizer",)].key == Location("seed.yaml", 10, 1)
    doc = read_yaml("a:\n  - 1\n  - [x, y]\n", "l.yaml")
    assert doc.positions[("a", 1, 1)].value == Location("l.yaml", 3, 9)


def test_duplicate_keys_are_errors_all_reported():
    assert problems("a: 1\nb: {c: 1, c: 2}\na: 3\n") == [
        "t.yaml:2:11: b.c: duplicate key 'c' (first written at line 2); remove one",
        "t.yaml:3:1: a: duplicate key 'a' (first written at line 1); remove one",
    ]


def test_non_string_keys_are_errors():
    assert problems("1: a\n~: b\n[x]: c\n") == [
        "t.yaml:1:1: keys must be strings, not an integer 1; quote it if you mean the text",
        "t.yaml:2:1: keys must be strings, not null; quote it if you mean the text",
        "t.yaml:3:1: keys must be plain strings, not a list or mapping",
    ]


def test_unsafe_tags_are_refused():
    assert problems("a: !!python/object/apply:os.system ['echo hi']\n") == [
        "t.yaml:1:4: a: the tag !!python/object/apply:os.system is not allowed in a recipe"]
    assert problems("a: !custom 1\n") == ["t.yaml:1:4: a: the tag !custom is not allowed in a recipe"]


def _bomb(levels: int, width: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_quickly_with_bounded_memory():
    text = _bomb(10, 10)  # 10**10 strings if expanded
    tracemalloc.start()
    start = time.perf_counter()
    lines = problems(text)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(lines) == 1 and "alias bomb" in lines[0]
    assert elapsed < 5 and peak < 50 * 2**20


def test_small_alias_use_is_fine():
    data = read_yaml("base: &b {x: 1}\nother: *b\n", "t.yaml").data
    assert data == {"base": {"x": 1}, "other": {"x": 1}}


def test_recursive_alias_is_refused():
    assert problems("a: &a [1, *a]\n") == ["t.yaml:1:4: a recursive alias (a value that contains itself) is refused"]


@pytest.mark.parametrize("text", ["a: " + "[" * 10_000 + "]" * 10_000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 500)),
                                  "a: " + "{b: " * 5000 + "1" + "}" * 5000])
def test_deep_nesting_is_refused_without_recursion_error(text):
    lines = problems(text)
    assert len(lines) == 1 and f"nesting deeper than {yaml12.MAX_DEPTH} levels is refused" in lines[0]


def test_large_files_are_refused_before_reading_them_whole(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (yaml12.MAX_BYTES + 10) + b"\n")
    with pytest.raises(RecipeError) as info:
        yaml12.read_bytes(big, "big.yaml")
    assert info.value.render() == "big.yaml:1:1: file is larger than 1024 KiB; refused"
    with pytest.raises(RecipeError):
        read_yaml("a: " + "x" * yaml12.MAX_BYTES, "t.yaml")


def test_bytes_that_are_not_utf8_are_located():
    with pytest.raises(RecipeError) as info:
        decode("a: 1\nname: café \xff\n".encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"), "x.yaml")
    assert info.value.render() == "x.yaml:2:12: not UTF-8 text (byte 0xff); save the file as UTF-8"
    assert decode(b"\xef\xbb\xbfa: 1\n", "bom.yaml") == "a: 1\n"


def test_syntax_errors_are_located():
    (line,) = problems("a: [1, 2\n")
    assert line.startswith("t.yaml:2:1: invalid YAML: ") and line.endswith("(while parsing a flow sequence at line 1)")
    assert problems("a:\n\tb: 1\n")[0].startswith("t.yaml:2:1: invalid YAML: found character")
    assert problems("a: 1\n---\nb: 2\n") == ["t.yaml:2:1: a recipe is one YAML document; remove this second one (and its ---)"]


def test_control_characters_are_refused():
    assert problems("a: 1\nb: x\x07\n") == ["t.yaml:2:5: invalid YAML: control character U+0007 is not allowed"]


SAMPLES = [SEED, "a: &x {b: [1, 'two', \"thr\\u00e9e\"]}\nc: *x\nd: |\n  text\n  more\n", "k: é\nl: [1, 2e-5, .inf, ~]\n",
           "a: [1, 2\n", "a:\n  b: 1\n   c: 2\n", "a: 1\nb: x\x07\n", "a: 1\n---\nb: 2\n", "a: " + "[" * 40 + "]" * 40,
           _bomb(6, 10), "a: &a [*a]\n", "1: x\na: 1\na: 2\n"]


@pytest.mark.skipif(not yaml12.yaml.__with_libyaml__, reason="PyYAML without libyaml: only the Python loader exists")
@pytest.mark.parametrize("text", SAMPLES)
def test_libyaml_and_python_loaders_agree(text, monkeypatch):
    """The fast loader (libyaml) and the fallback (pure Python) read the same data and positions,
    and put errors at the same places (their YAML syntax messages may be worded differently)."""
    def outcome():
        try:
            doc = read_yaml(text, "t.yaml")
            return ("ok", doc.data, doc.positions)
        except RecipeError as err:
            return ("error", [(p.location, p.path) for p in err.problems])

    fast = outcome()
    monkeypatch.setattr(yaml12, "_Loader", yaml12._PyLoader)
    slow = outcome()
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        assert fast[1] == slow[1] and fast[2] == slow[2]
    else:
        assert fast[1] == slow[1]
