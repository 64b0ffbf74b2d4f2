"""The work of a call from the ONNX graph, against the closed forms: 2*D*G*H*(I+H) FLOPs per step and
batch row of each recurrent node, D*G*H*H weights of R read per step, plus the dense head's matmul."""
from __future__ import annotations

import itertools

import onnx
import pytest
from onnx import TensorProto, helper

from rnnc.graphs.from_onnx import model_from_onnx
from rnnc.graphs.from_spec import model_from_spec
from rnnc.graphs.spec import parse_spec
from rnnc.graphs.work import Work, model_work
from rnnc.records.manifest import TensorInfo
from tests.conftest import make_spec
from tests.graphs.test_reference import recurrent_model

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FEATURES, HIDDEN = 5, 6


def closed_form(cell: str, layers: int, d: int, batch: int, seq: int, features: int = FEATURES,
                hidden: int = HIDDEN) -> Work:
    g = GATES[cell]
    flops = sum(2 * d * g * hidden * ((features if layer == 0 else d * hidden) + hidden) * batch * seq
                for layer in range(layers))
    r = layers * d * g * hidden * hidden
    return Work(flops=flops, r_weights=r, r_reads=r * seq)


def spec_model(cell: str, layers: int = 1, bidirectional: bool = False, **overrides):
    rnn = {"cell": cell, "hidden_size": HIDDEN, "num_layers": layers, "bidirectional": bidirectional}
    return model_from_spec(parse_spec(make_spec(rnn=rnn, **({"output": {"mode": "many_to_one"}} | overrides))))


@pytest.mark.parametrize("cell, layers, bidirectional", list(itertools.product(["lstm", "gru", "rnn"], [1, 2],
                                                                                [False, True])))
def test_spec_cells_match_the_closed_form(cell, layers, bidirectional):
    model = spec_model(cell, layers, bidirectional)
    d = 2 if bidirectional else 1
    for batch, seq in ((1, 1), (3, 7), (16, 32)):
        assert model_work(model.onnx, model.inputs, batch, seq) == closed_form(cell, layers, d, batch, seq)


def test_r_bytes_follow_the_precision():
    work = closed_form("lstm", 2, 2, 4, 10)
    r = 2 * 2 * 4 * HIDDEN * HIDDEN
    assert work.r_bytes_per_step("fp32") == 4 * r and work.r_bytes_per_step("bf16") == 2 * r
    assert work.r_bytes_per_step("fp16") == 2 * r and work.r_bytes_per_step("int8") == r
    assert work.r_bytes_per_call("int8") == 10 * r and work.r_bytes_per_step("fp8") is None


def test_a_dense_head_adds_its_matmul():
    units = 9
    model = spec_model("gru", 2, True, output={"mode": "many_to_many", "dense": {"units": units}})
    batch, seq = 3, 7
    cells = closed_form("gru", 2, 2, batch, seq)
    head = 2 * batch * seq * (2 * HIDDEN) * units
    assert model_work(model.onnx, model.inputs, batch, seq) == Work(cells.flops + head, cells.r_weights,
                                                                    cells.r_reads)


def test_a_generator_counts_its_cells_per_generated_step():
    steps = 6
    model = spec_model("lstm", output={"mode": "one_to_many", "steps": steps, "dense": {"units": FEATURES}})
    batch = 5
    cell = closed_form("lstm", 1, 1, batch, 1)  # one step per iteration, its output fed back
    want = Work(flops=steps * (cell.flops + 2 * batch * HIDDEN * FEATURES), r_weights=cell.r_weights,
                r_reads=steps * cell.r_weights)
    assert model_work(model.onnx, model.inputs, batch, 1) == want


def test_an_imported_onnx_model(tmp_path):
    proto, _ = recurrent_model("LSTM", seq=5, batch=3, size=4, hidden=3, layout=1, symbolic=True,
                               direction="bidirectional")
    onnx.save(proto, tmp_path / "m.onnx")
    model = model_from_onnx(tmp_path / "m.onnx", {"X": (3, 5, 4)})
    for batch, seq in ((3, 5), (8, 20)):
        assert model_work(model.onnx, model.inputs, batch, seq) == closed_form("lstm", 1, 2, batch, seq, 4, 3)


def test_none_where_the_work_is_unknown():
    assert model_work(None, [], 1, 1) is None
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3])
    plain = helper.make_model(helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "g", [x], [y]))
    assert model_work(plain, [TensorInfo(name="x", dtype="float32", dims=("batch", "seq", 3))], 2, 4) is None
    generator = spec_model("gru", output={"mode": "one_to_many", "steps": 3, "dense": {"units": FEATURES}})
    endless = onnx.ModelProto()
    endless.CopyFrom(generator.onnx)
    loop = next(n for n in endless.graph.node if n.op_type == "Loop")
    loop.input[0] = ""  # no trip count: runs until its condition says stop
    assert model_work(endless, generator.inputs, 2, 1) is None


def test_a_spec_encoder_decoder_counts_both_halves():
    spec = make_spec(input={"type": "tokens", "vocab_size": 11, "embedding_dim": 4},
                     rnn={"cell": "gru", "hidden_size": HIDDEN, "bidirectional": True},
                     output={"mode": "encoder_decoder"},
                     decoder={"cell": "lstm", "hidden_size": 2 * HIDDEN, "vocab_size": 7, "embedding_dim": 3,
                              "max_steps": 5, "start_token": 0})
    model = model_from_spec(parse_spec(spec))
    batch, seq = 2, 9
    encoder = closed_form("gru", 1, 2, batch, seq, features=4)
    decoder = closed_form("lstm", 1, 1, batch, 1, features=3, hidden=2 * HIDDEN)
    projection = 2 * batch * 2 * HIDDEN * 7
    want = Work(encoder.flops + 5 * (decoder.flops + projection), encoder.r_weights + decoder.r_weights,
                encoder.r_reads + 5 * decoder.r_weights)
    assert model_work(model.onnx, model.inputs, batch, seq) == want
