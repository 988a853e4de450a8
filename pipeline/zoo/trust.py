"""Consent for code named in zoo files: ``<python.module>:<factory>`` specs run their author's code.

Zoo files are shared like requirements files, so loading one must not import and
call arbitrary modules (``os:abort``, ``sys:exit``) unless the user says so, as
``trust_remote_code`` does in transformers. Built-in specs (``robustbench:``,
``timm:``, ``torchvision:``, ``pipeline.train.demo_models:``) need no consent. Consent
is ``--trust-zoo-code`` (every module) or ``FILTERLENS_TRUSTED_MODULES=a,b.c`` (those
modules and their submodules). An ``--arch`` typed on the command line is consent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pipeline.checkpoints.arch_spec import parse_arch_spec, runs_user_code
from pipeline.errors import UntrustedCodeError
from pipeline.zoo.spec import ModelSpec

TRUSTED_MODULES_ENV = "FILTERLENS_TRUSTED_MODULES"


def trusted_modules() -> tuple[str, ...]:
    """The modules the environment trusts (comma-separated in $FILTERLENS_TRUSTED_MODULES)."""
    return tuple(m.strip() for m in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if m.strip())


def _trusted(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def untrusted_code(entries: Iterable[ModelSpec], trust_all: bool = False) -> list[tuple[str, str]]:
    """(model_id, module) of each entry whose architecture would run code nobody agreed to."""
    if trust_all:
        return []
    allowed = trusted_modules()
    found = []
    for entry in entries:
        if not entry.arch:
            continue
        spec = parse_arch_spec(entry.arch)
        module = spec.name.split(":")[0]
        if runs_user_code(spec) and not _trusted(module, allowed):
            found.append((entry.model_id, module))
    return found


def require_consent(entries: Iterable[ModelSpec], trust_all: bool = False) -> None:
    """Raise UntrustedCodeError (before anything runs) when an entry names code without consent."""
    found = untrusted_code(entries, trust_all)
    if not found:
        return
    modules = sorted({m for _, m in found})
    example = ", ".join(f"{model_id} ({module})" for model_id, module in found[:3])
    raise UntrustedCodeError(
        f"{len(found)} zoo entries name Python code to import and run ({example}"
        f"{', ...' if len(found) > 3 else ''}); if you trust it, pass --trust-zoo-code or set "
        f"{TRUSTED_MODULES_ENV}={','.join(modules)}")
