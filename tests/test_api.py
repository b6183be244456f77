"""The package as a user meets it first: a light ``import galparam``, a deliberate public API, and
errors worded for whoever reads them (keyword arguments in Python, flags on the console)."""

import subprocess
import sys

import pytest

import galparam
from galparam.cli.common import flag_names
from galparam.cli.evaluate import build_parser as evaluate_parser
from galparam.cli.simulate import build_parser as simulate_parser
from galparam.errors import GalparamError, Remedy


def test_import_galparam_loads_neither_galsim_nor_tensorflow():
    code = "import sys, galparam; print(sorted(m for m in ('galsim', 'tensorflow', 'keras', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves_to_what_it_documents():
    for name in galparam.__all__:
        assert getattr(galparam, name) is not None, name
    from galparam.data import load_dataset
    from galparam.evaluate.crb import cramer_rao

    assert galparam.load_dataset is load_dataset and galparam.cramer_rao is cramer_rao
    assert galparam.LABEL_NAMES == ("flux", "sersic_n", "hlr", "g1", "g2")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        galparam.nothing  # noqa: B018


def test_errors_name_keyword_arguments_in_python_and_flags_on_the_console():
    error = GalparamError("n_images 9: too many", argument="n_images", remedy=Remedy("overwrite", "start again"))
    assert str(error) == "n_images 9: too many; to start again, pass overwrite=True"
    flags = flag_names(evaluate_parser())
    assert flags["n_images"] == "--n-images" and flags["overwrite"] == "--overwrite" and flags["jobs"] == "--jobs"
    assert error.render(flags) == "--n-images 9: too many; to start again, pass --overwrite"
    assert flag_names(simulate_parser())["shard"] == "--shard"
