"""Bad inputs, table-driven: each row an input, the exception (API) or exit code 2 (CLI), and a
fragment of the one-line message that names the problem and what to do. No CLI case prints a
traceback."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from _trust_cases import REPORT, TRAIN, USER_PROGRAM, copy_run, make_run
from pyro.infer.autoguide import AutoNormal

from ppl_vae import evaluate, fit
from ppl_vae.cli import main
from ppl_vae.data.datasets import load_array
from ppl_vae.data.tensors import as_tensors
from ppl_vae.programs.registry import resolve
from ppl_vae.storage.files import CorruptFileError
from ppl_vae.train.checkpoint import load_checkpoint, save_checkpoint
from ppl_vae.train.run_dir import load_run, read_config


def model(x):
    n, d = x.shape[0], x.shape[1]  # a program that reads rows of features
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(x.new_zeros(d), 1.0).to_event(1), obs=x)


def guide(x):
    pass


def local_model(x):
    """A latent per data point, as Pyro's tutorials write one for an autoguide."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z[:, None], 1.0).to_event(1), obs=x)


X = torch.randn(6, 3)


def _fit(data, **extra):
    return fit(model, guide, data, epochs=1, batch_size=2, progress=False, estimator="mc",
               **extra)


def _file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


class _Planted:
    """Unpickling this runs code (os.system): a checkpoint must never be read that way."""

    def __reduce__(self):
        return (os.system, ("touch MARKER",))


# (id, call(tmp_path), exception class, message fragment)
API_CASES = [
    ("list-of-rows", lambda t: as_tensors([[0.1, 0.2], [0.3, 0.4]]), ValueError,
     "is a Python list; pass an array of rows"),
    ("int64-tensor", lambda t: _fit(torch.arange(18).reshape(6, 3)), ValueError,
     "data is int64; pass floats, e.g. x.float()"),
    ("int-ndarray", lambda t: _fit(np.arange(18).reshape(6, 3)), ValueError,
     "x.astype(np.float32)"),
    ("bool-tensor", lambda t: _fit(X > 0), ValueError, "data is bool; pass floats"),
    ("complex-tensor", lambda t: _fit(X.to(torch.complex64)), ValueError,
     "complex64: likelihoods take real values"),
    ("float16-tensor", lambda t: _fit(X.half()), ValueError, "float16: too coarse"),
    ("bfloat16-tensor", lambda t: _fit(X.bfloat16()), ValueError, "bfloat16: too coarse"),
    ("meta-device", lambda t: _fit(torch.zeros(6, 3, device="meta")), ValueError,
     "'meta' device"),
    ("dataframe-pd-NA", lambda t: _fit(pd.DataFrame({"a": pd.array([1.0, None, 2.0, 3.0, 4.0, 5.0],
                                                                   dtype="Float64"),
                                                     "b": 1.0, "c": 2.0})),
     ValueError, "missing values (NaN / pd.NA) in 1 row(s): 1"),
    ("dataframe-int", lambda t: _fit(pd.DataFrame(np.ones((6, 3), dtype=int))), ValueError,
     "df.astype('float32')"),
    ("autoguide-local-latent-mini-batches", lambda t: fit(
        local_model, AutoNormal(local_model), X, epochs=1, batch_size=2, progress=False),
     ValueError, "the guide is an autoguide (AutoNormal) and the model's latent site(s) ['z'] "
     "lie in the plate over data points"),
    ("one-d-data", lambda t: _fit(torch.randn(6)), ValueError, "the data is 1-D"),
    ("validation-int", lambda t: fit(model, guide, X, validation_data=X.long(), epochs=1,
                                     batch_size=2, progress=False), ValueError,
     "validation_data is int64"),
    ("checkpoint-truncated", lambda t: load_checkpoint(_file(t, "checkpoint.pt", b"PK\x03\x04")),
     CorruptFileError, "checkpoint.pt is not a ppl-vae checkpoint (truncated or corrupted)"),
    ("checkpoint-empty", lambda t: load_checkpoint(_file(t, "checkpoint.pt", b"")),
     CorruptFileError, "checkpoint.pt is not a ppl-vae checkpoint (truncated or corrupted)"),
    ("checkpoint-foreign", lambda t: (torch.save({"w": torch.ones(2)}, t / "checkpoint.pt"),
                                      load_checkpoint(t / "checkpoint.pt")),
     CorruptFileError, "checkpoint.pt is not a ppl-vae checkpoint"),
    ("checkpoint-pickle-code", lambda t: load_checkpoint(
        _file(t, "checkpoint.pt", pickle.dumps(_Planted()))), CorruptFileError,
     "not a ppl-vae checkpoint (truncated or corrupted)"),
    ("checkpoint-bit-flip", lambda t: (save_checkpoint(t / "final.pt", {"params": {"w": X}}),
                                       _flip(t / "final.pt"), load_checkpoint(t / "final.pt")),
     CorruptFileError, "final.pt does not match its checksum"),
    ("csv-text-column", lambda t: load_array(_file(t, "d.csv", "a,b\n1,x\n2,y\n3,z\n4,w\n5,v\n")),
     ValueError, "columns ['b'] are not numeric"),
    ("csv-empty", lambda t: load_array(_file(t, "d.csv", "")), ValueError, "is empty"),
    ("npy-pickled-objects", lambda t: (np.save(t / "d.npy", np.array([_Planted()], dtype=object),
                                               allow_pickle=True), load_array(t / "d.npy")),
     ValueError, "never unpickles"),
    ("zero-columns", lambda t: _fit(torch.zeros(6, 0)), ValueError,
     "data has rows of shape (0,): no values per row"),
    ("npy-zero-columns", lambda t: load_array(_npy(t, np.zeros((6, 0)))), ValueError,
     "d.npy has rows of shape (0,): no values per row"),
    ("npy-one-row", lambda t: load_array(_npy(t, np.ones((1, 3)))), ValueError,
     "d.npy has 1 row(s): a train/test split needs at least 2 rows"),
    ("npy-no-rows", lambda t: load_array(_npy(t, np.ones((0, 3)))), ValueError,
     "d.npy has 0 row(s)"),
    ("npy-nan-names-file-rows", lambda t: load_array(_npy(t, _with_nan(np.ones((9, 2)), 7))),
     ValueError, "d.npy has NaN or infinite values in 1 row(s) (0-based): 7"),
    ("csv-nan-names-the-line", lambda t: load_array(_file(t, "d.csv", "a,b\n1,2\n3,\n5,6\n7,8\n")),
     ValueError, "d.csv has NaN or infinite values in 1 line(s): 3"),
    ("csv-ragged-names-the-file", lambda t: load_array(_file(t, "d.csv", "1,2\n3,4,5\n6,7\n")),
     ValueError, "d.csv cannot be read as a CSV table"),
    ("npz-fractional-labels", lambda t: load_array(_npz(t, x=np.ones((8, 2)),
                                                        y=np.repeat([0.5, 1.5], 4))),
     ValueError, "d.npz: labels are class numbers (whole numbers), but 8 row(s)"),
    ("npz-without-x-lists-its-arrays", lambda t: load_array(_npz(t, a=np.ones((8, 2)))),
     ValueError, "needs an array named 'x' (it holds 'a')"),
    ("data-is-a-folder", lambda t: (t.joinpath("d.npy").mkdir(), load_array(t / "d.npy")),
     ValueError, "d.npy is a folder"),
    ("user-file-syntax-error", lambda t: resolve("model", f"{_file(t, 'm.py', 'def model(:')}:model"),
     ValueError, "line 1: syntax error"),
    ("user-file-import-error", lambda t: resolve("model", f"{_file(t, 'm.py', 'import nope_x')}:model"),
     ValueError, "importing"),
    ("csv-decimal-comma-semicolons", lambda t: load_array(_file(t, "d.csv", "a;b\n1,5;2,5\n"
                                                                "3,5;4,5\n5,5;6,5\n")),
     ValueError, "d.csv: its lines are separated by ';' (a decimal-comma locale's CSV?)"),
    ("csv-decimal-comma-quoted", lambda t: load_array(_file(t, "d.csv", 'a,b\n"1,5","2,5"\n'
                                                            '"3,5","4,5"\n"5,5","6,5"\n')),
     ValueError, "values like '1,5': decimal commas"),
    ("csv-trailing-commas", lambda t: load_array(_file(t, "d.csv", "1,2,\n3,4,\n5,6,\n7,8,\n")),
     ValueError, "d.csv: every line ends with a comma (an empty last column)"),
    ("csv-trailing-commas-header", lambda t: load_array(_file(t, "d.csv", "a,b,\n1,2,\n3,4,\n"
                                                              "5,6,\n")),
     ValueError, "every line ends with a comma"),
    ("csv-header-only", lambda t: load_array(_file(t, "d.csv", "a,b\n")), ValueError,
     "d.csv has a header line and no data rows"),
    ("user-file-sys-exit", lambda t: resolve("model", f"{_file(t, 'm.py', 'import sys; sys.exit(3)')}"
                                                      ":model"),
     ValueError, "m.py called sys.exit(3) at import"),
    ("dtype-float16-argument", lambda t: _fit(X, dtype=torch.float16), ValueError,
     "dtype must be torch.float32 or torch.float64, got torch.float16"),
    ("devices-many", lambda t: _fit(X, devices="many"), ValueError,
     "devices must be a number of devices, a list of device indices or 'auto', got 'many'"),
    ("checkpoint-is-a-folder", lambda t: load_checkpoint(t), ValueError, "is a folder, not a "
     "checkpoint file"),
    ("sparse-coo-data", lambda t: _fit(X.to_sparse()), ValueError,
     "data is a sparse tensor (torch.sparse_coo)"),
    ("sparse-csr-data", lambda t: _fit(X.to_sparse_csr()), ValueError,
     "data is a sparse tensor (torch.sparse_csr)"),
    ("evaluate-num-samples-zero", lambda t: evaluate(model, guide, X, num_samples=0), ValueError,
     "num_samples must be >= 1, got 0"),
    ("evaluate-num-samples-negative", lambda t: evaluate(model, guide, X, num_samples=-3),
     ValueError, "num_samples must be >= 1, got -3"),
    ("evaluate-num-samples-fraction", lambda t: evaluate(model, guide, X, num_samples=2.5),
     TypeError, "num_samples must be an integer, got 2.5"),
    ("evaluate-num-samples-bool", lambda t: evaluate(model, guide, X, num_samples=True),
     TypeError, "num_samples must be an integer, got True"),
    ("npz-too-large-for-memory", lambda t: load_array(_npz_claiming(t, (10**7, 10**5))),
     ValueError, "GiB once decompressed, more than the"),
    ("label-beyond-embedding", lambda t: fit(_embedding_model, _no_guide, (X, torch.tensor(
        [0, 1, 2, 0, 7, 1])), epochs=1, batch_size=3, progress=False, estimator="mc"),
     ValueError, "row 4 holds index 7, outside nn.Embedding(3, ...)"),
    ("config-not-json", lambda t: (_file(t, "config.json", "{bad"), read_config(t)), ValueError,
     "config.json is not valid JSON"),
    ("config-missing-key", lambda t: (_file(t, "config.json", '{"guide": "mlp", "data": "x"}'),
                                      read_config(t)), ValueError, "'model' is missing"),
    ("config-dtype-is-a-function", lambda t: (_file(t, "config.json", json.dumps(
        {"model": "vae", "guide": "mlp", "data": "digits", "settings": {"dtype": "load"}})),
        read_config(t)), ValueError, "settings.dtype 'load' is not one of"),
]


_EMBEDDING = torch.nn.Embedding(3, 3)


def _embedding_model(x, y):
    pyro.module("emb", _EMBEDDING)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(_EMBEDDING(y), 1.0).to_event(1), obs=x)


def _no_guide(x, y):
    pass


def _npz_claiming(tmp_path, shape):
    """A compressed .npz of a few bytes whose x.npy header claims ``shape`` float64 values."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(tmp_path / "d.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(1000))
    return tmp_path / "d.npz"


def _npy(tmp_path, array):
    np.save(tmp_path / "d.npy", array)
    return tmp_path / "d.npy"


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


def _with_nan(array, row):
    array[row, 0] = np.nan
    return array


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case, call, error, fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(tmp_path, monkeypatch, case, call, error, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        call(tmp_path)
    assert fragment in str(info.value)
    assert "weights_only=False" not in str(info.value)
    assert not (tmp_path / "MARKER").exists()


def test_an_autoguide_trains_on_all_rows_or_for_global_latents_only():
    full = fit(local_model, AutoNormal(local_model), X, epochs=3, batch_size=6, progress=False)
    pyro.clear_param_store()
    global_only = fit(model_with_global, AutoNormal(model_with_global), X, epochs=3,
                      batch_size=2, progress=False)
    for result in (full, global_only):
        assert np.isfinite(result.history["train_elbo"]).all()


def model_with_global(x):
    loc = pyro.sample("loc", dist.Normal(x.new_zeros(x.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def test_integer_labels_after_floating_features_are_kept():
    x, y = as_tensors((X, torch.arange(6)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_csv_without_header_keeps_its_first_row(tmp_path):
    rows = "\n".join(f"{i}.5,{2 * i}.25" for i in range(10))
    assert load_array(_file(tmp_path, "a.csv", rows), test_fraction=0.5).train.shape[0] \
        + load_array(tmp_path / "a.csv", test_fraction=0.5).test.shape[0] == 10
    with_header = load_array(_file(tmp_path, "b.csv", "a,b\n" + rows), test_fraction=0.5)
    assert with_header.train.shape[0] + with_header.test.shape[0] == 10
    with pytest.warns(UserWarning, match="pandas' default column names"):
        load_array(_file(tmp_path, "c.csv", "0,1\n" + rows), test_fraction=0.5)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("trained") / "run", report=False)


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    program = folder / "prog.py"
    program.write_text(USER_PROGRAM)
    spec = ["--model", f"{program}:model", "--guide", f"{program}:guide"]
    assert main([*TRAIN, *spec, "--out", str(folder / "run")]) == 0
    return folder / "run", program, spec


# A user program written for batches of 3 rows: the last batch of 8 rows has 2.
HARD_CODED = USER_PROGRAM.replace('dist.Normal(mu, sigma', 'dist.Normal(mu + sigma.new_zeros(3), sigma')


def _train_then_change_data(tmp_path):
    """A run trained on a data file, which then changes: its numbers would be another data set's."""
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).random((40, 4), dtype=np.float32))
    argv = ["train", "--model", "ppca", "--guide", "mlp", "--latent-dim", "2", "--data", str(data),
            "--estimator", "mc", "--epochs", "1", "--no-progress", "--eval-samples", "3"]
    assert main([*argv, "--out", str(tmp_path / "on-file")]) == 0
    np.save(data, np.random.default_rng(1).random((40, 4), dtype=np.float32))
    return ["evaluate", str(tmp_path / "on-file"), "--num-samples", "3"]


def _corrupt_json(run):
    (run / "config.json").write_text("{bad")
    (run / "manifest.json").unlink()


def _truncate_final_no_manifest(run):
    (run / "final.pt").write_bytes((run / "final.pt").read_bytes()[:200])
    (run / "manifest.json").unlink()


def _pickle_final_no_manifest(run):
    (run / "final.pt").write_bytes(pickle.dumps(_Planted()))
    (run / "manifest.json").unlink()


# (id, prepare(run folder, tmp_path) -> argv, message fragment)
CLI_CASES = [
    ("train-over-existing-run", lambda r, t: [*TRAIN, "--out", str(r)], "already holds a run"),
    ("resume-and-overwrite", lambda r, t: [*TRAIN, "--out", str(r), "--resume", "--overwrite"],
     "give one"),
    ("resume-other-model", lambda r, t: [*TRAIN[:2], "vae", *TRAIN[3:], "--out", str(r),
                                         "--resume"], "was started with other settings"),
    ("epochs-not-integer", lambda r, t: [*TRAIN, "--epochs", "1.5", "--out", str(t / "n")],
     "expected a whole number >= 1, got '1.5'"),
    ("batch-size-zero", lambda r, t: [*TRAIN, "--batch-size", "0", "--out", str(t / "n")],
     "expected a whole number >= 1"),
    ("lr-zero", lambda r, t: [*TRAIN, "--lr", "0", "--out", str(t / "n")],
     "expected a finite number > 0"),
    ("lr-nan", lambda r, t: [*TRAIN, "--lr", "nan", "--out", str(t / "n")],
     "expected a finite number > 0"),
    ("out-is-a-file", lambda r, t: [*TRAIN, "--out", str(_file(t, "f", "x"))], "is a file"),
    ("out-below-a-file", lambda r, t: [*TRAIN, "--out", str(_file(t, "f", "x") / "run")],
     "not a directory"),
    ("data-missing", lambda r, t: [*TRAIN[:6], "nope.csv", *TRAIN[7:], "--out", str(t / "n")],
     "data file not found"),
    ("seed-too-large", lambda r, t: [*TRAIN, "--seed", str(2**32), "--out", str(t / "n")],
     "argument --seed: expected a whole number in [0, 4294967295]"),
    ("data-is-a-folder", lambda r, t: [*TRAIN[:6], str(t), *TRAIN[7:], "--out", str(t / "n")],
     "is a folder: pass a .npy/.npz/.csv file in it, or mnist:"),
    ("model-option-latent-dim-negative", lambda r, t: [*TRAIN, "--model-option", "latent_dim=-3",
                                                       "--out", str(t / "n")],
     "argument --model-option: latent_dim: expected a whole number >= 1, got '-3'"),
    ("model-option-latent-dim-text", lambda r, t: [*TRAIN, "--model-option", "latent_dim=abc",
                                                   "--out", str(t / "n")],
     "argument --model-option: latent_dim: expected a whole number >= 1, got 'abc'"),
    ("evaluate-data-changed-since-training", lambda r, t: _train_then_change_data(t),
     "is not the data the run was trained on (data: other values"),
    ("particles-beyond-memory", lambda r, t: [*TRAIN, "--num-particles", str(10**12),
                                             "--vectorize-particles", "--out", str(t / "n")],
     "out of memory: lower --batch-size, --num-particles"),
    ("device-unknown", lambda r, t: [*TRAIN, "--device", "warp", "--out", str(t / "n")],
     "unknown device"),
    ("user-file-syntax-error", lambda r, t: [*TRAIN[:1], "--model", f"{_file(t, 'm.py', 'def (')}:m",
                                             *TRAIN[3:], "--out", str(t / "n")], "syntax error"),
    ("evaluate-not-a-run", lambda r, t: ["evaluate", str(t)], "not a ppl-vae run folder"),
    # A billion draws of one point cannot be chunked (chunks split points, not draws): refused
    # up front instead of asking the allocator for terabytes.
    ("evaluate-num-samples-huge", lambda r, t: ["evaluate", str(r), "--num-samples", "1000000000"],
     "num_samples=1,000,000,000: the draws of a single data point would hold"),
    ("evaluate-config-not-json", lambda r, t: (_corrupt_json(r), ["evaluate", str(r)])[1],
     "config.json is not valid JSON"),
    ("evaluate-final-bit-flip", lambda r, t: (_flip(r / "final.pt"), ["evaluate", str(r)])[1],
     "final.pt does not match its checksum"),
    ("evaluate-final-truncated-legacy", lambda r, t: (_truncate_final_no_manifest(r),
                                                      ["evaluate", str(r)])[1],
     "final.pt is not a ppl-vae checkpoint (truncated or corrupted)"),
    ("evaluate-final-pickle-code", lambda r, t: (_pickle_final_no_manifest(r),
                                                 ["evaluate", str(r)])[1],
     "final.pt is not a ppl-vae checkpoint"),
    ("resume-checkpoint-bit-flip", lambda r, t: (_flip(r / "checkpoint.pt"),
                                                 [*TRAIN, "--out", str(r), "--resume"])[1],
     "checkpoint.pt does not match its checksum"),
    ("verify-history-bit-flip", lambda r, t: (_flip(r / "history.csv"), ["verify", str(r)])[1],
     "history.csv do(es) not match"),
    ("report-too-few-draws", lambda r, t: ["report", str(r), "--num-draws", "0"],
     "expected a whole number >= 1"),
    ("unknown-flag", lambda r, t: ["evaluate", str(r), "--bogus"], "unrecognized arguments"),
    ("loss-diverges", lambda r, t: [*TRAIN, "--epochs", "30", "--lr", "1e30", "--out",
                                    str(t / "n")], "ELBO became nan at epoch 1"),
    ("program-hard-codes-the-batch", lambda r, t: [
        *TRAIN, "--batch-size", "3", "--out", str(t / "n"),
        "--model", f"{_file(t, 'hard.py', HARD_CODED)}:model", "--guide", f"{t / 'hard.py'}:guide"],
     "the model failed on a batch of shape(s)"),
]


def _one_error_line(err: str) -> None:
    """One error line; any warnings before it are one line each too; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert sum(": error: " in line for line in lines) == 1, err
    assert all(line.startswith("ppl-vae") for line in lines), err


@pytest.mark.parametrize("case, prepare, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(run_folder, tmp_path, monkeypatch, capsys, case,
                                              prepare, fragment):
    monkeypatch.chdir(tmp_path)
    run = copy_run(run_folder, tmp_path / "copy")
    argv = prepare(run, tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err
    _one_error_line(err)
    assert not (tmp_path / "MARKER").exists()


def test_user_program_must_be_named_again_and_unchanged(user_run, tmp_path, capsys):
    run, program, spec = user_run
    assert main(["evaluate", str(run)]) == 2
    assert "never imports code a run folder names: pass --model" in capsys.readouterr().err
    assert main(["evaluate", str(run), *spec]) == 0
    changed = tmp_path / "prog.py"
    changed.write_text(USER_PROGRAM + "\n# edited\n")
    other = ["--model", f"{changed}:model", "--guide", f"{changed}:guide"]
    assert main(["evaluate", str(run), *other]) == 2
    assert "the file differs from the one" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--model", f"{program}:guide", "--guide",
                 f"{program}:guide"]) == 2
    assert "was trained with model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="never imports code"):
        load_run(run)
    load_run(run, model=f"{program}:model", guide=f"{program}:guide")
    assert float(pyro.param("loc").detach()) != 0.0  # trained value restored


def test_debug_prints_the_traceback(run_folder, tmp_path, capsys):
    assert main(["--debug", "evaluate", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_real_process_exits_2_with_one_line(tmp_path):
    """Through the installed entry point: exit status 2, one stderr line, no traceback."""
    (tmp_path / "config.json").write_text("{bad")
    proc = subprocess.run([sys.executable, "-m", "ppl_vae.cli", "evaluate", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _one_error_line(proc.stderr)
    assert "config.json is not valid JSON" in proc.stderr


def test_evaluate_refuses_a_one_value_change_anywhere_in_the_data(tmp_path, capsys):
    """The data fingerprint hashes every value: a change of one value in any row of a 1,000-row
    CSV (train or test split) is refused, not only one in a sampled row."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1000, 3)).round(3)
    data = tmp_path / "d.csv"
    pd.DataFrame(table, columns=["a", "b", "c"]).to_csv(data, index=False)
    original = data.read_bytes()
    argv = ["train", "--model", "ppca", "--guide", "mlp", "--latent-dim", "1", "--data",
            str(data), "--estimator", "mc", "--epochs", "1", "--batch-size", "400",
            "--no-progress", "--eval-samples", "2", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    for row in (0, 137, 512, 998):
        changed = table.copy()
        changed[row, 1] += 0.001
        pd.DataFrame(changed, columns=["a", "b", "c"]).to_csv(data, index=False)
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "2"]) == 2, row
        assert "is not the data the run was trained on" in capsys.readouterr().err
    data.write_bytes(original)
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "2"]) == 0


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("two") / "run", report=False)


def _resume(*extra):
    return lambda r, o: [*TRAIN, "--epochs", "2", *extra, "--out", str(r), "--resume"]


# (id, argv(run, another run), message fragment): each refused, with no file of either
# folder changed by a byte.
REFUSED_KEEP_FILES = [
    ("resume-other-lr", _resume("--lr", "0.01"), "lr: 0.001 in the checkpoint, 0.01 now"),
    ("resume-other-estimator", _resume("--estimator", "score"), "estimator: 'mc'"),
    ("resume-other-seed", _resume("--seed", "5"), "seed: 0 in the checkpoint, 5 now"),
    ("resume-other-batch-size", _resume("--batch-size", "4"), "batch_size: 8"),
    ("resume-other-dtype", _resume("--dtype", "float64"), "dtype: 'float32'"),
    ("resume-fewer-epochs", lambda r, o: [*TRAIN, "--epochs", "1", "--out", str(r), "--resume"],
     "may only get more epochs"),
    ("report-out-own-final", lambda r, o: ["report", str(r), *REPORT, "--out", str(r / "final.pt")],
     "is a ppl-vae run folder"),
    ("report-out-other-config", lambda r, o: ["report", str(r), *REPORT, "--out",
                                              str(o / "config.json")], "is a ppl-vae run folder"),
    ("overwrite-then-data-missing", lambda r, o: [*TRAIN[:6], "nope.csv", *TRAIN[7:], "--out",
                                                  str(r), "--overwrite"], "data file not found"),
    ("overwrite-then-program-fails", lambda r, o: [*TRAIN[:2], "vae", *TRAIN[3:], "--out", str(r),
                                                   "--overwrite"], "ppl-vae train: error:"),
    ("overwrite-and-resume", lambda r, o: [*TRAIN, "--out", str(r), "--overwrite", "--resume"],
     "give one"),
    ("compare-csv-history", lambda r, o: ["compare-estimators", str(r), "--num-draws", "2",
                                          "--csv", str(r / "history.csv")],
     "--csv " ),
]


def _hashes(*folders):
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("case, argv, fragment", REFUSED_KEEP_FILES,
                         ids=[c[0] for c in REFUSED_KEEP_FILES])
def test_refused_command_changes_no_byte(two_epoch_run, tmp_path, capsys, case, argv, fragment):
    run = copy_run(two_epoch_run, tmp_path / "run")
    other = copy_run(two_epoch_run, tmp_path / "other")
    if case == "resume-fewer-epochs":  # a run of 2 epochs, resumed with 1
        assert main([*TRAIN, "--epochs", "2", "--out", str(run), "--resume"]) == 0
    before = _hashes(run, other)
    capsys.readouterr()
    assert main(argv(run, other)) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    _one_error_line(err)
    assert _hashes(run, other) == before


HELPED_PROGRAM = """
import pathlib, sys
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import pyro, pyro.distributions as dist
import helper_h5cli as helper

def model(sigma, y):
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), 10.0))
    with pyro.plate("data", sigma.shape[0]):
        pyro.sample("y", dist.Normal(mu, helper.scale(sigma.squeeze(-1))), obs=y)

def guide(sigma, y):
    loc = pyro.param("loc", lambda: sigma.new_zeros(()))
    pyro.sample("mu", dist.Normal(loc, 1.0))
"""


def test_evaluate_refuses_a_changed_helper_module(tmp_path, capsys):
    """Only the named file was checksummed: a helper it imports from its folder could change
    between train and evaluate (the ELBO of other code, exit 0)."""
    (tmp_path / "helper_h5cli.py").write_text("def scale(s):\n    return s\n")
    (tmp_path / "prog.py").write_text(HELPED_PROGRAM)
    spec = ["--model", f"{tmp_path / 'prog.py'}:model", "--guide", f"{tmp_path / 'prog.py'}:guide"]
    try:
        assert main([*TRAIN, *spec, "--out", str(tmp_path / "run")]) == 0
        (tmp_path / "helper_h5cli.py").write_text("def scale(s):\n    return 0.01 * s\n")
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "run"), *spec, "--num-samples", "3"]) == 2
        err = capsys.readouterr().err
        assert "model: helper_h5cli.py changed" in err, err
        _one_error_line(err)
    finally:
        sys.modules.pop("helper_h5cli", None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
