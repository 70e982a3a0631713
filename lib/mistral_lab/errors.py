"""Errors the user can act on: each names the field at fault and the fix."""

from __future__ import annotations


class MistralLabError(Exception):
    """Base of every error we raise on purpose. The CLI prints it without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None):
        self.message = message
        self.field = field
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class BadInput(MistralLabError):
    """The caller asked for something that cannot be: unknown name, out-of-range value, does not fit."""

    exit_code = 2


class DoesNotFit(BadInput):
    """The model at the requested context and concurrency needs more memory than the hardware has."""


class TargetError(MistralLabError):
    """A host or cloud refused or failed an operation."""


class EngineError(MistralLabError):
    """The inference server failed to install, start or answer."""
