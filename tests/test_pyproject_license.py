"""pyproject.toml's license metadata: an SPDX string that setuptools applies without a deprecation warning."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import setuptools
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_and_the_build_requirement_supports_it() -> None:
    data = tomllib.loads(PYPROJECT.read_text())
    assert data["project"]["license"] == "Apache-2.0"
    # The string form (PEP 639) exists from setuptools 77.0; older versions reject it.
    (req,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = tuple(int(x) for x in re.fullmatch(r"setuptools>=([\d.]+)", req).group(1).split("."))
    assert minimum >= (77, 0)
    installed = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    assert installed >= minimum[:2], "the environment's setuptools is older than build-system requires"


def test_setuptools_applies_the_metadata_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the table form raised SetuptoolsDeprecationWarning here
        dist = apply_configuration(Distribution(), str(PYPROJECT))
    assert dist.metadata.license_expression == "Apache-2.0"
