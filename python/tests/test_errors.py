"""Bad input raises the documented exception (attrpatch.Error subclasses) with a message naming
the problem, never a panic or a bare RuntimeError."""

from __future__ import annotations

import subprocess
import sys

import pytest

import attrpatch


def test_missing_model_file_is_an_input_error_naming_it(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(attrpatch.InputError, match="nope.onnx"):
        attrpatch.run(missing)


def test_bytes_that_are_not_onnx_are_a_model_error():
    with pytest.raises(attrpatch.ModelError) as e:
        attrpatch.rewrite(b"this is not a protobuf")
    assert "<in-memory model>" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"metric": "logit-dif"}, attrpatch.InputError, "unknown metric 'logit-dif'"),
        ({"device": "gpu"}, attrpatch.InputError, "unknown device 'gpu'"),
        ({"runtime": "trt"}, attrpatch.InputError, "unknown runtime 'trt'"),
        ({"hook": "("}, attrpatch.InputError, "not a preset (attn, resid, mlp) nor a valid regex"),
        ({"threads": -1}, attrpatch.InputError, "threads"),
    ],
)
def test_bad_options(model_path, kwargs, exc, words):
    with pytest.raises(exc) as e:
        attrpatch.run(model_path, **kwargs)
    assert words in str(e.value)


def test_ort_lib_that_does_not_exist_is_a_backend_error(model_path):
    """In a fresh process: ONNX Runtime is loaded once per process, so in this one (where other
    tests loaded it) a later ort_lib is not read."""
    code = (
        "import attrpatch, sys\n"
        "try:\n"
        f"    attrpatch.run({str(model_path)!r}, ort_lib='/no/such/libonnxruntime.so')\n"
        "except attrpatch.BackendError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "/no/such/libonnxruntime.so" in p.stdout


def test_hook_pattern_matching_nothing_names_the_pattern(model_path):
    with pytest.raises(attrpatch.Error) as e:
        attrpatch.run(model_path, hook="no_such_tensor_xyz")
    assert "no_such_tensor_xyz" in str(e.value)


@pytest.mark.parametrize(
    "pairs, words",
    [
        ([], "the list is empty"),
        ([{"clean": "a", "corrupted": "b", "corect": " x"}], "unknown key 'corect'"),
        ([{"clean": "a"}], "missing 'corrupted'"),
        ([{"clean": "a b", "corrupted": "a c", "correct": " x", "incorrect": " y"},
          {"clean": [1, 2], "corrupted": [1, 3], "correct": 4, "incorrect": 5}], "mix texts and token ids"),
        ([{"clean": [1, 2], "corrupted": [1, 3], "correct": 4}], "no 'incorrect' answer id"),
        ([{"clean": [1, 2.5], "corrupted": [1, 3], "correct": 4, "incorrect": 5}], "expected a token id"),
        (42, "expected a JSONL file path"),
    ],
)
def test_bad_pairs_are_input_errors(model_path, pairs, words):
    with pytest.raises(attrpatch.InputError) as e:
        attrpatch.run(model_path, pairs)
    assert words in str(e.value)


def test_token_ids_outside_the_vocabulary(model_path):
    pairs = [{"clean": [1, 99_999_999], "corrupted": [1, 3], "correct": 4, "incorrect": 5}]
    with pytest.raises(attrpatch.InputError, match="outside the model's vocabulary"):
        attrpatch.run(model_path, pairs)


def test_answer_of_two_tokens_is_named(model_path):
    pairs = [{"clean": "When John and Mary went to the shops, John gave the bag to",
              "corrupted": "When John and Mary went to the shops, Mary gave the bag to",
              "correct": " Mary Poppins", "incorrect": " John"}]
    with pytest.raises(attrpatch.InputError, match="Mary Poppins"):
        attrpatch.run(model_path, pairs)


def test_bad_jsonl_names_the_file_and_line(model_path, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"clean": "a", "corrupted": "b", "correct": " x", "incorrect": " y"}\n{not json}\n')
    with pytest.raises(attrpatch.InputError, match=r"pairs.jsonl:2"):
        attrpatch.run(model_path, f)


def test_model_in_memory_with_text_pairs_needs_a_tokenizer(model_path):
    with pytest.raises(attrpatch.InputError, match="need a tokenizer"):
        attrpatch.run(model_path.read_bytes())


def test_wrong_model_type():
    with pytest.raises(attrpatch.InputError, match="expected a path"):
        attrpatch.inspect(3.5)


def test_errors_are_one_family():
    for cls in (attrpatch.InputError, attrpatch.ModelError, attrpatch.BackendError, attrpatch.NumericError):
        assert issubclass(cls, attrpatch.Error)
    assert issubclass(attrpatch.InputError, ValueError)
