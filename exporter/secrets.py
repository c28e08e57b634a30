"""A value holder that keeps API keys and secrets out of repr(), str(), logs and tracebacks."""

from __future__ import annotations


class Secret:
    """Wraps a sensitive string; only `reveal()` gives it back.

    Every accidental path to text (repr, str, f-strings, logging `%s`, dataclass
    reprs of objects that hold one, pickling) shows a mask instead, so a config
    object can be printed or logged while debugging without leaking a key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple:
        raise TypeError("Secret values are not picklable")

    def __len__(self) -> int:
        return len(self._value)
