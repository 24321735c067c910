"""A plain function served as a model: its parameters are the request's fields.

python examples/functions.py
"""

from __future__ import annotations


def add(a: float, b: float) -> float:
    """The sum of two numbers."""
    return a + b


if __name__ == "__main__":
    from modelpod.runtime.runner import Runner

    with Runner(add) as runner:
        print(runner.predict(a=2.0, b=3.5))
