"""The YAML model spec of SPEC section 1: parsed, validated and normalised by pydantic.

Every problem in a spec is reported at once, one line each, naming the field path
(`rnn.hidden_size: must be >= 1, got 0`); unknown keys are refused so that a typo is never
silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rnnc.errors import UserError

PositiveInt = Annotated[int, Field(ge=1, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokensInput(_Strict):
    type: Literal["tokens"]
    vocab_size: PositiveInt
    embedding_dim: PositiveInt


class FeaturesInput(_Strict):
    type: Literal["features"]
    features: PositiveInt


class RNNSpec(_Strict):
    cell: Literal["rnn", "lstm", "gru"]
    hidden_size: PositiveInt
    num_layers: PositiveInt = 1
    bidirectional: Annotated[bool, Field(strict=True)] = False
    nonlinearity: Literal["tanh", "relu"] | None = None
    bias: Literal[True, False, "single"] = True

    @field_validator("nonlinearity")
    @classmethod
    def _only_for_rnn(cls, value: str | None, info: Any) -> str | None:
        cell = info.data.get("cell")
        if value is not None and cell is not None and cell != "rnn":
            raise ValueError(f"only cell rnn takes a nonlinearity, not cell {cell}")
        return value

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def activation(self) -> str:
        """The cell's nonlinearity, with the default filled in (tanh for rnn)."""
        return self.nonlinearity or "tanh"


class DenseSpec(_Strict):
    units: PositiveInt
    activation: Literal["none", "softmax", "sigmoid", "tanh", "relu", "leaky_relu"] = "none"


class OutputSpec(_Strict):
    mode: Literal["many_to_many", "many_to_one"] = "many_to_many"
    dense: DenseSpec | None = None


class ShapesSpec(_Strict):
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 8]
    seq_lens: Annotated[list[PositiveInt], Field(min_length=1)] = [16, 64, 256]


class ModelSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    input: Annotated[Union[TokensInput, FeaturesInput], Field(discriminator="type")]
    rnn: RNNSpec
    output: OutputSpec = OutputSpec()
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    shapes: ShapesSpec = ShapesSpec()

    @property
    def input_name(self) -> str:
        return self.input.type

    def normalised(self) -> dict[str, Any]:
        """The spec with every default filled in, as stored in the manifest."""
        data = self.model_dump(mode="json")
        if self.rnn.cell == "rnn":
            data["rnn"]["nonlinearity"] = self.rnn.activation
        else:
            data["rnn"].pop("nonlinearity")
        return data


def parse_spec(data: Any, source: str = "spec") -> ModelSpec:
    """Validate a parsed YAML document; raises UserError listing every problem."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a spec is a YAML mapping, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(*[_describe(e, data) for e in err.errors()]) from None


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise UserError(f"{path}: YAML does not parse{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    return parse_spec(data, str(path))


def _describe(error: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for one pydantic error: `field.path: what is wrong, got what`."""
    loc = [str(p) for p in error["loc"]]
    # a discriminated union puts the tag in the path (input.tokens.vocab_size): drop it
    if len(loc) >= 2 and loc[0] == "input" and loc[1] in ("tokens", "features"):
        del loc[1]
    path = ".".join(loc) or "spec"
    kind, ctx, got = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "missing":
        return f"{path}: required"
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"{path}.type: must be one of tokens, features, got {_show(_get(data, loc + ['type']))}"
    if kind == "greater_than_equal":
        return f"{path}: must be >= {ctx['ge']}, got {_show(got)}"
    if kind == "literal_error":
        expected = ctx["expected"].replace("'", "").replace("True", "true").replace("False", "false")
        return f"{path}: must be one of {expected}, got {_show(got)}"
    if kind == "string_pattern_mismatch":
        return f"{path}: must match {ctx['pattern']} (lower-case letters, digits, - and _), got {_show(got)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{path}: must be an integer, got {_show(got)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{path}: must be true or false, got {_show(got)}"
    if kind in ("string_type",):
        return f"{path}: must be a string, got {_show(got)}"
    if kind in ("list_type",):
        return f"{path}: must be a list, got {_show(got)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: must be a mapping, got {_show(got)}"
    if kind == "too_short":
        return f"{path}: must not be empty"
    if kind == "value_error":
        return f"{path}: {error['msg'].removeprefix('Value error, ')}"
    return f"{path}: {error['msg']}, got {_show(got)}"


def _get(data: Any, loc: list[str]) -> Any:
    for key in loc:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."
