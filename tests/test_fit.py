import math
import re
import warnings

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

import ppl_vae
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE


def small_vae(dtype=torch.float32, obs=64, latent=4, hidden=32):
    return VAE(obs, latent, hidden=hidden).to(dtype), MLPEncoder(obs, latent, hidden=hidden).to(dtype)


def test_history_and_result(digits):
    model, guide = small_vae()
    result = ppl_vae.fit(model, guide, digits.train[:256], validation_data=digits.test[:64],
                         epochs=3, batch_size=64, progress=False)
    h = result.history
    assert list(h.columns) == ["epoch", "train_elbo", "val_elbo", "seconds", "steps"]
    assert h["epoch"].tolist() == [1, 2, 3] and (h["steps"] == 4).all()
    assert h["train_elbo"].iloc[-1] > h["train_elbo"].iloc[0]  # it learns
    assert result.settings["estimator"] == "analytic" and result.settings["num_data"] == 256
    assert set(result.params) == {"pyro_params", "model", "guide"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.params["model"][k])


def test_same_seed_same_history(digits):
    runs = []
    for _ in range(2):
        pyro.clear_param_store()
        torch.manual_seed(123)  # same initial weights
        model, guide = small_vae()
        runs.append(ppl_vae.fit(model, guide, digits.train[:200], epochs=2, batch_size=50,
                                seed=7, progress=False).history)
    pd.testing.assert_series_equal(runs[0]["train_elbo"], runs[1]["train_elbo"])


def test_float64_pipeline_every_site(digits):
    model, guide = small_vae(torch.float32)  # fit casts the modules to the data's dtype
    x = digits.train[:100].double()
    result = ppl_vae.fit(model, guide, x, epochs=1, batch_size=50, estimator="mc",
                         progress=False)
    assert result.settings["dtype"] == "float64"
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    checked = {"guide": set(), "model": set()}
    for part, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert site["value"].dtype == torch.float64, (part, name)
                assert site["fn"].log_prob(site["value"]).dtype == torch.float64, (part, name)
                checked[part].add(name)
            elif site["type"] == "param":
                assert site["value"].dtype == torch.float64, (part, name)
    # Every sample site of both programs was looked at: the guide's latent, the model's latent
    # and its likelihood.
    assert checked == {"guide": {"z"}, "model": {"z", "x"}}
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert all(p.dtype == torch.float64 for p in result.state.params)


def test_numpy_and_dataframe_data(digits):
    # NumPy and pandas data train exactly as the same rows as a float32 tensor do.
    arr = digits.train[:64].numpy().astype(np.float64)
    histories = []
    for data in (torch.from_numpy(arr).float(), arr, pd.DataFrame(arr)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = small_vae()
        result = ppl_vae.fit(model, guide, data, epochs=2, batch_size=32, progress=False)
        assert result.settings["dtype"] == "float32" and result.settings["num_data"] == 64
        histories.append(result.history.drop(columns="seconds"))
    for history in histories[1:]:
        pd.testing.assert_frame_equal(history, histories[0], check_exact=True)


# A conjugate model with one global latent: mu ~ N(0, 10^2), x_i ~ N(mu, 1).
PRIOR_SD = 10.0


def normal_mean_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), x.new_tensor(PRIOR_SD)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def normal_mean_guide(x):
    loc = pyro.param("loc", lambda: x.new_tensor(0.0))
    scale = pyro.param("scale", lambda: x.new_tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _exact_posterior(x):
    post_var = 1.0 / (1.0 / PRIOR_SD**2 + len(x))
    return post_var * float(x.sum()), math.sqrt(post_var)


def test_data_plate_is_found_recorded_and_checked():
    def model(x):  # the plate over data points has its own name
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), x.new_tensor(PRIOR_SD)))
        with pyro.plate("points", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    x = torch.randn(20)
    result = ppl_vae.fit(model, normal_mean_guide, x, epochs=1, batch_size=5, progress=False)
    assert result.settings["data_plate"] == "points"
    with pytest.raises(ValueError, match=r"data_plate='data': .*their plates: 'points' \(size 20\)"):
        ppl_vae.fit(model, normal_mean_guide, x, epochs=1, batch_size=5, progress=False,
                    data_plate="data")


def test_minibatch_gradient_is_unbiased_for_the_full_data_gradient():
    # With the same noise draw for the global latent, the gradient of the scaled mini-batch loss,
    # averaged over a partition of the data, equals the full-batch gradient exactly.
    x = 2.0 + torch.randn(12)
    elbo = ppl_vae.make_elbo("mc")

    def grads(batch):
        state = ppl_vae.init_state(normal_mean_model, normal_mean_guide, elbo, (batch,),
                                   num_data=12)
        torch.manual_seed(5)
        loss = state.loss_fn(batch)
        return torch.autograd.grad(loss, state.params)

    full = grads(x)
    parts = [grads(x[i : i + 3]) for i in range(0, 12, 3)]
    for j, g in enumerate(full):
        torch.testing.assert_close(torch.stack([p[j] for p in parts]).mean(0), g)


def test_minibatches_reach_the_full_data_posterior():
    g = torch.Generator().manual_seed(1)
    x = 2.0 + torch.randn(100, generator=g)
    post_mean, post_sd = _exact_posterior(x)  # post_sd = 0.0995
    ppl_vae.fit(normal_mean_model, normal_mean_guide, x, epochs=100, batch_size=10, lr=0.03,
                progress=False, estimator="analytic")
    # Adam keeps jittering around the optimum by about its step size (0.03), so the loose
    # tolerances below are about that size; a fit that forgot the N / B factor would give a
    # scale sqrt(N / B) = 3.2 times too large (0.31), far outside them.
    assert abs(pyro.param("loc").item() - post_mean) < post_sd
    assert pyro.param("scale").item() == pytest.approx(post_sd, rel=0.4)


def test_plain_torch_module_without_pyro_module_is_trained():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(self.loc, 1.0).to_event(1), obs=x)

    model = Model()
    x = torch.randn(64, 2) + torch.tensor([3.0, -1.0])
    ppl_vae.fit(model, lambda x: None, x, epochs=300, batch_size=64, lr=0.05, progress=False,
                estimator="mc")
    # The MLE is the sample mean; standard error 1/8, Adam jitter ~lr.
    assert torch.allclose(model.loc.detach(), x.mean(0), atol=0.1)


def test_nothing_to_train_is_an_error():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="nothing to train"):
        ppl_vae.fit(model, lambda x: None, torch.randn(10), epochs=1, batch_size=5, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"estimator": "bogus"}, "unknown estimator"),
        ({"batch_size": 0}, "batch_size must lie in"),
        ({"batch_size": 10_000}, "batch_size must lie in"),
        ({"device": "no-such-device"}, "unknown device"),
        ({"optimizer": "adamish"}, "unknown optimizer"),
        ({"epochs": 0}, "epochs must be"),
    ],
)
def test_bad_arguments(digits, kwargs, message):
    model, guide = small_vae()
    args = {"epochs": 1, "batch_size": 32, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        ppl_vae.fit(model, guide, digits.train[:64], **args)


def test_bad_data_errors_name_rows_and_sites(digits):
    model, guide = small_vae()
    x = digits.train[:64].clone()
    x[5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"data has NaN or infinite values in 1 row\(s\): 5"):
        ppl_vae.fit(model, guide, x, epochs=1, batch_size=32, progress=False)
    x = digits.train[:64].clone()
    x[[7, 40], 0] = 1.5
    with pytest.raises(ValueError, match=r"site 'x': 2 row\(s\) lie outside.*rows 7, 40"):
        ppl_vae.fit(model, guide, x, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="built for 64 features"):
        ppl_vae.fit(model, guide, digits.train[:64, :10], epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ppl_vae.fit(model, guide, digits.train[:0], epochs=1, batch_size=1, progress=False)


def test_model_and_guide_sites_must_agree(digits):
    model, _ = small_vae()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(x.new_zeros(4), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"missing from the guide: \['z'\].*not in the model: \['w'\]"):
        ppl_vae.fit(model, guide, digits.train[:32], epochs=1, batch_size=32, progress=False)


def test_latent_shapes_must_agree(digits):
    model = VAE(64, 4, hidden=8)
    guide = MLPEncoder(64, 5, hidden=8)
    with pytest.raises(ValueError, match=r"site 'z'.*event shape \(4,\).*\(5,\)"):
        ppl_vae.fit(model, guide, digits.train[:32], epochs=1, batch_size=32, progress=False)


def test_checkpoint_resume_continues_the_same_run(digits, tmp_path):
    x = digits.train[:128]
    torch.manual_seed(0)
    model, guide = small_vae()
    init = ({k: v.clone() for k, v in model.state_dict().items()},
            {k: v.clone() for k, v in guide.state_dict().items()})
    full = ppl_vae.fit(model, guide, x, epochs=4, batch_size=32, seed=3, progress=False)

    pyro.clear_param_store()
    model2, guide2 = small_vae()
    model2.load_state_dict(init[0]), guide2.load_state_dict(init[1])
    ppl_vae.fit(model2, guide2, x, epochs=2, batch_size=32, seed=3, progress=False,
                checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "history.csv").exists()
    pyro.clear_param_store()
    model3, guide3 = small_vae()  # fresh weights: everything must come from the checkpoint
    resumed = ppl_vae.fit(model3, guide3, x, epochs=4, batch_size=32, seed=3, progress=False,
                          checkpoint_dir=tmp_path, resume=True)
    assert resumed.history["epoch"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history["train_elbo"], full.history["train_elbo"], rtol=1e-6)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(model3.state_dict()[k], v)


def test_checkpoint_is_weights_only(digits, tmp_path):
    model, guide = small_vae()
    ppl_vae.fit(model, guide, digits.train[:64], epochs=1, batch_size=32, progress=False,
                checkpoint_dir=tmp_path)
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # raises if it held code


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(digits, tmp_path):
    model, guide = small_vae()
    poisoned = {"on": False}

    class Poison(nn.Module):
        def forward(self, x):
            if poisoned["on"]:
                pyro.factor("poison", x.new_tensor(float("nan")))
            return model(x)

    def poison_after_epoch_1(record, state):
        # From epoch 2 on, however many times the pre-flight checks ran the programs.
        poisoned["on"] = True

    x = digits.train[:128]
    # jit=False: Poison changes what it computes from Python state after its first calls, which
    # no recording can see (jit="auto" checks the first two calls of each batch shape only).
    with pytest.raises(ppl_vae.TrainingDivergedError, match=r"at epoch \d+, step \d+") as info:
        ppl_vae.fit(Poison(), guide, x, epochs=5, batch_size=32, progress=False,
                    checkpoint_dir=tmp_path, jit=False, callbacks=[poison_after_epoch_1])
    assert info.value.epoch >= 2
    assert len(info.value.history) == info.value.epoch - 1
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == info.value.epoch - 1
    assert f"the last good checkpoint is {tmp_path / 'checkpoint.pt'} (epoch {ckpt['epoch']})" \
        in str(info.value)


def test_nan_in_the_first_epoch_says_no_checkpoint_was_written(digits, tmp_path):
    model, guide = small_vae()
    calls = {"n": 0, "after": float("inf")}

    class Poison(nn.Module):
        def forward(self, x):
            calls["n"] += 1
            if calls["n"] > calls["after"]:  # after the pre-flight's calls: a training step
                pyro.factor("poison", x.new_tensor(float("nan")))
            return model(x)

    # How many calls the pre-flight makes is its own business: one clean epoch of 4 steps
    # counts them (the programs are stateful, so every step runs them eagerly).
    ppl_vae.fit(Poison(), guide, digits.train[:128], epochs=1, batch_size=32, progress=False)
    calls["after"], calls["n"] = calls["n"] - 4, 0
    with pytest.raises(ppl_vae.TrainingDivergedError) as info:
        ppl_vae.fit(Poison(), guide, digits.train[:128], epochs=3, batch_size=32,
                    progress=False, checkpoint_dir=tmp_path / "run")
    message = str(info.value)
    assert re.search(r"at epoch 1, step [1-4] of 4", message), message
    assert f"no checkpoint was written to {tmp_path / 'run'}" in message
    assert "the last good checkpoint is" not in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert info.value.epoch == 1 and len(info.value.history) == 0


def test_early_stopping_restores_the_best_parameters(digits):
    model, guide = small_vae()
    snapshots = {}  # epoch -> every trained tensor after that epoch

    def snapshot(record, state):
        snapshots[record["epoch"]] = [p.detach().clone() for p in state.params]

    result = ppl_vae.fit(model, guide, digits.train[:64], validation_data=digits.test[:64],
                         epochs=60, batch_size=16, lr=0.02, early_stopping_patience=2,
                         progress=False, callbacks=[snapshot])
    h = result.history
    assert result.stopped_early  # 64 points, lr 0.02: it overfits well before 60 epochs
    best = int(h["val_elbo"].idxmax())
    assert len(h) - 1 - best == 2
    best_epoch, last_epoch = int(h["epoch"].iloc[best]), int(h["epoch"].iloc[-1])
    final = [p.detach() for p in result.state.params]
    # The final parameters are the best epoch's, bit for bit, and not the last epoch's.
    assert all(torch.equal(a, b) for a, b in zip(final, snapshots[best_epoch], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(final, snapshots[last_epoch], strict=True))
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.params["model"][k])


def test_callbacks_can_stop(digits):
    model, guide = small_vae()
    seen = []
    result = ppl_vae.fit(model, guide, digits.train[:64], epochs=5, batch_size=32, progress=False,
                         callbacks=[lambda record, state: seen.append(record["epoch"]) or len(seen) == 2])
    assert seen == [1, 2] and len(result.history) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_every_site_on_the_gpu(digits):
    model, guide = small_vae()
    ppl_vae.fit(model, guide, digits.train[:64], epochs=1, batch_size=32, device="cuda",
                progress=False)
    x = digits.train[:8].cuda()
    trace = poutine.trace(guide).get_trace(x)
    assert trace.nodes["z"]["value"].is_cuda


def test_observations_outside_the_data_plate_are_named_with_mini_batches():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), x.new_tensor(PRIOR_SD)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        pyro.sample("total", dist.Normal(mu * x.shape[0], 1.0), obs=x.sum())  # per batch!

    x = torch.randn(20)
    with pytest.warns(UserWarning, match=r"\['total'\] lie outside the data plate 'data'"):
        ppl_vae.fit(model, normal_mean_guide, x, epochs=1, batch_size=5, progress=False)
    pyro.clear_param_store()  # else the second fit says it does not start from the first's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full batches: nothing to scale, nothing to say
        ppl_vae.fit(model, normal_mean_guide, x, epochs=1, batch_size=20, progress=False)


class _UserVAE(nn.Module):
    """A VAE as Pyro's tutorial writes it: networks registered under fixed names."""

    def __init__(self, obs=64, latent=2):
        super().__init__()
        self.latent = latent
        self.decoder = nn.Sequential(nn.Linear(latent, 16), nn.Tanh(), nn.Linear(16, obs))
        self.encoder = nn.Sequential(nn.Linear(obs, 16), nn.Tanh(), nn.Linear(16, 2 * latent))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _fresh_networks(seed=3):
    torch.manual_seed(seed)  # the same initial weights each time
    vae = _UserVAE().double()
    return vae.model, vae.guide


def test_second_fit_in_a_process_equals_a_fresh_one(digits):
    x = digits.train[:128].double()
    kwargs = dict(epochs=2, batch_size=32, seed=5, progress=False)
    first = ppl_vae.fit(*_fresh_networks(), x, **kwargs)
    with pytest.warns(UserWarning, match=r"fit trained its own parameters.*(decoder|encoder)"):
        second = ppl_vae.fit(*_fresh_networks(), x, **kwargs)
    pyro.clear_param_store()  # what a fresh process starts from
    fresh = ppl_vae.fit(*_fresh_networks(), x, **kwargs)
    pd.testing.assert_series_equal(second.history["train_elbo"], fresh.history["train_elbo"])
    pd.testing.assert_series_equal(first.history["train_elbo"], fresh.history["train_elbo"])
    # The caller's store holds the last fit's trained parameters (what evaluate finds).
    decoder = dict(fresh.model.__self__.decoder.named_parameters())
    for name, value in pyro.get_param_store().named_parameters():
        if name.startswith("decoder$$$"):
            assert value is decoder[name.split("$$$", 1)[1]]


def test_plain_param_programs_start_from_their_init_each_fit():
    def model(x):
        loc = pyro.param("loc", torch.zeros((), dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.full((20,), 2.0, dtype=torch.float64)
    kwargs = dict(epochs=3, batch_size=10, lr=0.1, progress=False, estimator="mc")
    first = ppl_vae.fit(model, guide, x, **kwargs)
    assert 0.0 < pyro.param("loc").item()  # the store holds the trained value afterwards
    with pytest.warns(UserWarning, match="'loc'"):
        second = ppl_vae.fit(model, guide, x, **kwargs)
    pd.testing.assert_series_equal(first.history["train_elbo"], second.history["train_elbo"])


def test_failed_fit_leaves_the_param_store_as_it_was(digits):
    model, guide = small_vae()
    kept = pyro.param("kept", torch.ones(2)).unconstrained()
    with pytest.raises(ValueError, match="batch_size"):
        ppl_vae.fit(model, guide, digits.train[:10], batch_size=50, progress=False)
    stored = dict(pyro.get_param_store().named_parameters())
    assert list(stored) == ["kept"] and stored["kept"] is kept
