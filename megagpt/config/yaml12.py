"""YAML with YAML 1.2's numbers. PyYAML resolves plain scalars by YAML 1.1 rules, under which
``3e-3``, ``6e-4`` and ``375e6`` are strings (only ``3.0e-3`` is a float), though GPT-3's own
hyperparameters are written that way. This loader resolves them as YAML 1.2's core schema does
(``[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?``), and a number in scientific notation
whose value is a whole number (``375e6``, ``1e5``, ``1.5e3``) is an int, so it fits an integer key."""
from __future__ import annotations

import re
from decimal import Decimal

import yaml


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 numbers in scientific notation."""


def _number(loader: Loader, node: yaml.ScalarNode):
    text = loader.construct_scalar(node)
    exact = Decimal(text)
    if exact == exact.to_integral_value() and abs(exact.adjusted()) < 40:  # 375e6, 1.5e3: whole numbers
        return int(exact)
    return float(text)


# resolved before PyYAML's own float rule (first match wins); plain ints and YAML 1.1 floats
# keep their resolution since they never reach the exponent-only forms below
Loader.add_implicit_resolver("tag:yaml.org,2002:megagpt-number",
                             re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
                             list("-+0123456789."))
Loader.add_constructor("tag:yaml.org,2002:megagpt-number", _number)


def load(text: str):
    """``yaml.safe_load`` with YAML 1.2 numbers."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
