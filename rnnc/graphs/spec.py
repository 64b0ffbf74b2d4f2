"""The YAML model spec of SPEC section 1: parsed, validated and normalised by pydantic.

Every problem in a spec is reported at once, one line each, naming the field path
(`rnn.hidden_size: must be >= 1, got 0`); unknown keys are refused so that a typo is never
silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

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
    state: Annotated[bool, Field(strict=True)] = False

    @field_validator("nonlinearity")
    @classmethod
    def _only_for_rnn(cls, value: str | None, info: Any) -> str | None:
        cell = info.data.get("cell")
        if value is not None and cell is not None and cell != "rnn":
            raise ValueError(f"only cell rnn takes a nonlinearity, not cell {cell}")
        return value

    @field_validator("bias", mode="before")
    @classmethod
    def _bias_as_written(cls, value: Any) -> Any:
        """`true`, `false` or `single` only: YAML's 1, 0 or 1.0 would pass Literal[True, False]
        (1 == True in Python), while every other flag of the spec refuses them."""
        if isinstance(value, bool) or value == "single":
            return value
        raise ValueError(f"must be one of true, false or single, got {_show(value)}")

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


GENERATIVE = ("one_to_many", "encoder_decoder")


class OutputSpec(_Strict):
    mode: Literal["many_to_many", "many_to_one", "one_to_many", "encoder_decoder"] = "many_to_many"
    steps: PositiveInt | None = None  # one_to_many only
    dense: DenseSpec | None = None


class DecoderSpec(_Strict):
    """The generating half of an encoder-decoder (SPEC section 1, `decoder:`)."""

    cell: Literal["rnn", "lstm", "gru"]
    hidden_size: PositiveInt
    num_layers: PositiveInt = 1
    nonlinearity: Literal["tanh", "relu"] | None = None
    bias: Literal[True, False, "single"] = True
    vocab_size: PositiveInt
    embedding_dim: PositiveInt
    max_steps: PositiveInt
    start_token: Annotated[int, Field(strict=True)] = 0

    _only_for_rnn = field_validator("nonlinearity")(RNNSpec._only_for_rnn.__func__)
    _bias_as_written = field_validator("bias", mode="before")(RNNSpec._bias_as_written.__func__)

    @property
    def directions(self) -> int:
        return 1

    @property
    def bidirectional(self) -> bool:
        return False

    @property
    def activation(self) -> str:
        return self.nonlinearity or "tanh"


class ShapesSpec(_Strict):
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 8]
    seq_lens: Annotated[list[PositiveInt], Field(min_length=1)] = [16, 64, 256]


class ModelSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    input: Annotated[Union[TokensInput, FeaturesInput], Field(discriminator="type")]
    rnn: RNNSpec
    output: OutputSpec = OutputSpec()
    decoder: DecoderSpec | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    shapes: ShapesSpec = ShapesSpec()

    @property
    def input_name(self) -> str:
        return self.input.type

    @property
    def mode(self) -> str:
        return self.output.mode

    @property
    def generative(self) -> bool:
        """one_to_many or encoder_decoder: each step's input is the step before's output."""
        return self.output.mode in GENERATIVE

    @property
    def steps(self) -> int | None:
        """Steps generated per call (one_to_many: output.steps; encoder_decoder: decoder.max_steps)."""
        if self.output.mode == "one_to_many":
            return self.output.steps
        if self.output.mode == "encoder_decoder" and self.decoder is not None:
            return self.decoder.max_steps
        return None

    def normalised(self) -> dict[str, Any]:
        """The spec with every default filled in, as stored in the manifest. Keys of the modes
        a spec does not use (rnn.state when false, output.steps, decoder) are left out, so that a
        spec written before they existed keeps its normalised form (and its fingerprint)."""
        data = self.model_dump(mode="json")
        for part, cell in (("rnn", self.rnn), ("decoder", self.decoder)):
            if cell is None:
                continue
            if cell.cell == "rnn":
                data[part]["nonlinearity"] = cell.activation
            else:
                data[part].pop("nonlinearity")
        if not self.rnn.state:
            data["rnn"].pop("state")
        if self.output.steps is None:
            data["output"].pop("steps")
        if self.decoder is None:
            data.pop("decoder")
        return data


# the values pydantic accepts: a cross-field rule judges only these (any other is pydantic's own line)
_MODES = get_args(OutputSpec.model_fields["mode"].annotation)
_ACTIVATIONS = get_args(DenseSpec.model_fields["activation"].annotation)


def parse_spec(data: Any, source: str = "spec") -> ModelSpec:
    """Validate a parsed YAML document; raises UserError listing every problem."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a spec is a YAML mapping, got {type(data).__name__}")
    rules = _mode_rules(data)  # checked on the raw mapping, so that they join the field errors
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(*[_describe(e, data) for e in err.errors()], *rules) from None
    if rules:
        raise UserError(*rules)
    return spec


def _mode_rules(data: dict[str, Any]) -> list[str]:
    """The rules that tie fields together (SPEC section 1: state, one_to_many, encoder_decoder),
    one line each, naming the field to change. Fields of the wrong type are left to pydantic."""
    rnn, out, dec, inp = (_mapping(data.get(k)) for k in ("rnn", "output", "decoder", "input"))
    mode = out.get("mode", "many_to_many")
    dense = _mapping(out.get("dense"))
    hidden = _int(rnn.get("hidden_size"))
    bidirectional = rnn.get("bidirectional") is True
    directions = (2 if bidirectional else 1) if isinstance(rnn.get("bidirectional", False), bool) else None
    found = []
    if mode not in _MODES or not isinstance(data.get("output", {}), dict):
        mode = None  # refused by pydantic; the rules of a mode the user did not name would only mislead
    if rnn.get("state") is True and bidirectional:
        found.append("rnn.state: a bidirectional network cannot stream (its backward direction needs the "
                     "whole sequence); set rnn.bidirectional: false or rnn.state: false")
    if rnn.get("state") is True and mode == "encoder_decoder":
        found.append("rnn.state: an encoder-decoder starts its decoder from the encoder's final state, "
                     "it carries none across calls; state is for many_to_many, many_to_one and one_to_many")
    if "steps" in out and mode not in ("one_to_many", None):
        found.append(f"output.steps: only for mode one_to_many, not {mode}"
                     + ("; an encoder-decoder generates decoder.max_steps" if mode == "encoder_decoder" else ""))
    if "decoder" in data and mode not in ("encoder_decoder", None):
        found.append(f"decoder: only for mode encoder_decoder, not {mode}")
    if mode == "one_to_many":
        found += _one_to_many_rules(out, dense, inp, bidirectional)
    if mode == "encoder_decoder":
        if "dense" in out and out["dense"] is not None:
            found.append("output.dense: an encoder-decoder has no head; its projection to decoder.vocab_size "
                         "(with softmax) is the head")
        if data.get("decoder") is None:  # absent or null
            found.append("decoder: required for mode encoder_decoder")
        else:
            want = hidden * directions if hidden and directions else None
            got = dec.get("hidden_size")
            if want and _int(got) and got != want:
                found.append(f"decoder.hidden_size: must equal rnn.hidden_size x directions = {want} "
                             f"(each decoder layer starts from the encoder's final state), got {got}")
            vocab, start = _int(dec.get("vocab_size")), dec.get("start_token", 0)
            if vocab and isinstance(start, int) and not isinstance(start, bool) and not 0 <= start < vocab:
                found.append(f"decoder.start_token: must be in [0, decoder.vocab_size) = [0, {vocab}), got {start}")
    return found


def _one_to_many_rules(out: dict[str, Any], dense: dict[str, Any], inp: dict[str, Any],
                       bidirectional: bool) -> list[str]:
    found = []
    if out.get("steps") is None:  # absent or null
        found.append("output.steps: required for mode one_to_many (how many steps to generate)")
    if bidirectional:
        found.append("rnn.bidirectional: one_to_many generates one step at a time; a backward direction "
                     "needs the whole sequence")
    if not dense:
        feedback = "vocab_size units with softmax" if inp.get("type") == "tokens" else "features units"
        found.append(f"output.dense: required for mode one_to_many: the head makes the next step's input "
                     f"({feedback})")
        return found
    units = dense.get("units")
    if inp.get("type") == "tokens":
        vocab = _int(inp.get("vocab_size"))
        if vocab and _int(units) and units != vocab:
            found.append(f"output.dense.units: must equal input.vocab_size = {vocab} (the argmax of the head "
                         f"is the next token), got {units}")
        if dense.get("activation", "none") in _ACTIVATIONS and dense.get("activation", "none") != "softmax":
            found.append(f"output.dense.activation: must be softmax for token generation, got "
                         f"{dense.get('activation', 'none')!r}")
    elif inp.get("type") == "features":
        features = _int(inp.get("features"))
        if features and _int(units) and units != features:
            found.append(f"output.dense.units: must equal input.features = {features} (the head's output is "
                         f"the next step's input), got {units}")
    return found


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


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
    # a key that would break the line or vanish in it (a newline, an empty key) is shown quoted
    loc = [str(p) if str(p).isprintable() and str(p).strip() == str(p) != "" else repr(str(p)) for p in error["loc"]]
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
    if "\n" in text:  # a string with a newline inside a list or mapping, bytes (!!binary): one line
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
