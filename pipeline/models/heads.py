"""A trained head's architecture (`HeadSpec`): what `pipeline train` builds and a saved head's card holds to
rebuild it, with the choice lists the CLI reads. Light: the torch networks are in `nets`."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.console import split_names
from pipeline.errors import PipelineError

HEADS = ("linear", "mlp")
TRANSFORMS = ("auto", "sqrt", "none")
LABELS = {"linear": "Linear head", "mlp": "MLP head"}


def parse_hidden(text: str) -> tuple[int, ...]:
    """`--hidden`'s text as layer widths: '1024, 512' -> (1024, 512) (blank entries dropped); one line naming
    the option otherwise."""
    try:
        return tuple(int(w) for w in split_names(text))
    except ValueError:
        raise PipelineError(f"--hidden {text!r}: give layer widths as integers, e.g. 1024,512") from None


@dataclass
class HeadSpec:
    """The head's architecture: what a saved model's card holds to rebuild it."""
    kind: str = "mlp"
    hidden: tuple[int, ...] = (512,)
    input_dropout: float = 0.2
    dropout: float = 0.3
    transform: str = "auto"  # sqrt | none | auto: sqrt when every training feature is >= 0 (pooled activations)

    def check(self) -> None:
        if self.kind not in HEADS:
            raise PipelineError(f"--head {self.kind!r}: use one of {', '.join(HEADS)}")
        if self.kind == "mlp" and (not self.hidden or any(h < 1 for h in self.hidden)):
            raise PipelineError(f"--hidden {','.join(map(str, self.hidden))}: give one or more layer widths, e.g. 512")
        if self.transform not in TRANSFORMS:
            raise PipelineError(f"--input-transform {self.transform!r}: use one of {', '.join(TRANSFORMS)}")
        for name, p in (("--input-dropout", self.input_dropout), ("--dropout", self.dropout)):
            if not 0 <= p < 1:
                raise PipelineError(f"{name} {p}: use a probability in [0, 1)")

    def describe(self) -> dict:
        if self.kind == "linear":
            return {"kind": "linear", "transform": self.transform}
        return {"kind": "mlp", "hidden": list(self.hidden), "input_dropout": self.input_dropout,
                "dropout": self.dropout, "transform": self.transform}
