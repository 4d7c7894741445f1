"""The registry: built-in names, entry-point fallback, errors that list the known names, options checks."""

import importlib.metadata
import subprocess
import sys

import pytest

from capidsl.errors import CapidslError
from capidsl.models import ENTRY_POINT_GROUP, ModelError, ModelFamily, family_names, get_family, registry
from capidsl.models.mlp import MLPFamily


def test_builtin_names():
    assert family_names()[:2] == ["gpt", "mlp"]
    assert get_family("gpt").name == "gpt"
    assert isinstance(get_family("mlp"), ModelFamily)


def test_unknown_family_lists_known_names():
    with pytest.raises(ModelError) as err:
        get_family("gtp")
    assert isinstance(err.value, CapidslError)
    assert "gpt" in err.value.render() and "mlp" in err.value.render()


class _Toy(MLPFamily):
    name = "toy"


def _fake_entry_points(monkeypatch, value):
    ep = importlib.metadata.EntryPoint(name="toy", value=value, group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"toy": ep})
    monkeypatch.setattr(registry, "_loaded", {})


def test_entry_point_class_is_loaded(monkeypatch):
    _fake_entry_points(monkeypatch, f"{__name__}:_Toy")
    assert "toy" in family_names()
    fam = get_family("toy")
    assert isinstance(fam, _Toy) and get_family("toy") is fam


def test_entry_point_that_is_not_a_family(monkeypatch):
    _fake_entry_points(monkeypatch, "math:pi")
    with pytest.raises(ModelError, match="does not provide a model family"):
        get_family("toy")


class _Half(ModelFamily):  # a subclass that forgot most of the contract
    def normalize(self, options):
        return dict(options)


def test_entry_point_class_missing_methods_names_them(monkeypatch):
    _fake_entry_points(monkeypatch, f"{__name__}:_Half")
    with pytest.raises(ModelError, match=r"missing activation_bytes_per_layer, batch_shapes, build"):
        get_family("toy")


def test_broken_entry_point_names_itself(monkeypatch):
    _fake_entry_points(monkeypatch, "no_such_module_xyz:Family")
    with pytest.raises(ModelError, match="no_such_module_xyz"):
        get_family("toy")


def test_listing_names_imports_no_jax():
    code = "import sys, capidsl.models as m; m.family_names(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("family, options", [
    ("gpt", dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=4)),
    ("gpt", dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=None, d_ff=None, mlp="swiglu")),
    ("mlp", dict(input_dim=8, num_classes=3)),
])
def test_normalize_is_idempotent_and_plain(family, options):
    fam = get_family(family)
    cfg = fam.normalize(options)
    assert fam.normalize(cfg) == cfg
    assert all(isinstance(v, (int, float, str, bool, list)) for v in cfg.values())


def test_gpt_defaults():
    gpt = get_family("gpt")
    base = dict(vocab_size=64, seq_len=16, d_model=4096, n_layers=2, n_heads=32)
    assert gpt.normalize(base)["n_kv_heads"] == 32
    assert gpt.normalize(base)["d_ff"] == 4 * 4096
    assert gpt.normalize(base | {"mlp": "swiglu"})["d_ff"] == 11008  # Llama-2-7B's


@pytest.mark.parametrize("bad, key", [
    ({"d_modle": 32}, "d_modle"),
    ({"n_heads": 5}, "n_heads"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"norm": "batchnorm"}, "norm"),
    ({"dropout": 1.5}, "dropout"),
    ({"bias": "yes"}, "bias"),
])
def test_gpt_bad_options(bad, key):
    options = dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=4) | bad
    with pytest.raises(ModelError) as err:
        get_family("gpt").normalize(options)
    assert key in err.value.render()


def test_missing_required_option():
    with pytest.raises(ModelError, match="num_classes"):
        get_family("mlp").normalize({"input_dim": 4})
