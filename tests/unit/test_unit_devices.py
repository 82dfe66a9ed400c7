"""Device selection and AMP, every branch on a CPU-only machine."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from modelsphere.core.devices import (
    DeviceChoice,
    autocast,
    configure_threads,
    make_grad_scaler,
    select_device,
)
from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.models.registry import build_model
from modelsphere.models.spec import ModelSpec
from modelsphere.training.epochs import NO_BAD_BATCH, train_one_epoch
from modelsphere.training.optimization import make_loss, make_optimizer, make_scheduler

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------
# select_device without CUDA


def test_auto_without_cuda_is_cpu_and_says_why():
    choice = select_device("auto", cuda_available=False)
    assert choice.device == CPU
    assert "CUDA is not available" in choice.reason
    assert not choice.amp_enabled
    assert choice.amp_dtype is None


def test_cpu_never_uses_amp():
    choice = select_device("cpu", amp=True, amp_dtype="bfloat16", cuda_available=True)
    assert choice.device == CPU
    assert choice.amp_dtype is None
    assert make_grad_scaler(choice) is None


def test_cuda_without_cuda_is_an_error():
    with pytest.raises(ModelSphereError) as err:
        select_device("cuda", cuda_available=False)
    message = str(err.value)
    assert "CUDA is not available" in message
    assert "device=cpu" in message


@pytest.mark.parametrize("name", ["gpu", "CUDA", "mps", ""])
def test_unknown_device_name_is_an_error(name):
    with pytest.raises(ModelSphereError, match=f"unknown device {name!r}"):
        select_device(name, cuda_available=False)


def test_unknown_amp_dtype_is_an_error():
    with pytest.raises(ModelSphereError, match="device.amp_dtype='fp8'"):
        select_device("auto", amp_dtype="fp8", cuda_available=True)


def test_default_path_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = select_device("auto")
    assert choice.device == CPU
    assert "CUDA is not available" in choice.reason
    with pytest.raises(ModelSphereError, match="CUDA"):
        select_device("cuda")


# ----------------------------------------------------------------------------
# select_device with CUDA forced (no GPU is touched)


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_cuda_with_bf16_support_uses_bfloat16(name):
    choice = select_device(name, cuda_available=True, bf16_supported=True)
    assert choice.device.type == "cuda"
    assert choice.amp_dtype == torch.bfloat16
    assert choice.amp_enabled
    assert not choice.needs_grad_scaler
    assert "bfloat16" in choice.reason
    assert f"device={name}" in choice.reason


def test_cuda_without_bf16_uses_float16_with_a_grad_scaler():
    choice = select_device("auto", cuda_available=True, bf16_supported=False)
    assert choice.device.type == "cuda"
    assert choice.amp_dtype == torch.float16
    assert choice.needs_grad_scaler
    assert "float16" in choice.reason


def test_amp_off_means_full_precision():
    choice = select_device("cuda", amp=False, cuda_available=True, bf16_supported=True)
    assert choice.device.type == "cuda"
    assert choice.amp_dtype is None
    assert not choice.amp_enabled and not choice.needs_grad_scaler
    assert make_grad_scaler(choice) is None


def test_requested_float16_on_a_bf16_gpu():
    choice = select_device(
        "auto", amp_dtype="float16", cuda_available=True, bf16_supported=True
    )
    assert choice.amp_dtype == torch.float16


def test_requested_bfloat16_on_a_gpu_without_it_is_an_error():
    assert (
        select_device(
            "auto", amp_dtype="bfloat16", cuda_available=True, bf16_supported=True
        ).amp_dtype
        == torch.bfloat16
    )
    with pytest.raises(ModelSphereError, match="does not support bfloat16"):
        select_device(
            "cuda", amp_dtype="bfloat16", cuda_available=True, bf16_supported=False
        )


# ----------------------------------------------------------------------------
# The AMP code path, exercised on the CPU


def test_autocast_bfloat16_on_cpu():
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    with autocast(DeviceChoice(CPU, "test", torch.bfloat16)):
        inside = a @ b
    assert inside.dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32
    with autocast(DeviceChoice(CPU, "test")):
        assert (a @ b).dtype == torch.float32


def test_grad_scaler_only_for_float16():
    scaler = make_grad_scaler(DeviceChoice(CPU, "test", torch.float16))
    assert isinstance(scaler, torch.amp.GradScaler)
    assert make_grad_scaler(DeviceChoice(CPU, "test", torch.bfloat16)) is None
    assert make_grad_scaler(DeviceChoice(CPU, "test")) is None


def test_configure_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    configure_threads(None)
    assert calls == []
    configure_threads(3)
    assert calls == [3]


def tiny_training(seed: int = 0, rows: int = 64):
    gen = torch.Generator().manual_seed(seed)
    spec = ModelSpec(
        n_numeric=4,
        cardinalities=[5],
        embedding_dims=[3],
        hidden_sizes=[16],
        n_outputs=1,
    )
    torch.manual_seed(seed)
    model = build_model(spec)
    numeric = torch.randn(rows, 4, generator=gen)
    data = SplitTensors(
        numeric,
        torch.randint(0, 5, (rows, 1), generator=gen),
        (numeric[:, 0] > 0).long(),
    )
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=1e-4)
    train_cfg = SimpleNamespace(max_epochs=1, warmup_epochs=0, scheduler="constant")
    scheduler = make_scheduler(optimizer, train_cfg, steps_per_epoch=rows // 16)
    loss_fn = make_loss("binary", data.target, "none")
    return model, data, optimizer, scheduler, loss_fn


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_train_one_epoch_with_amp_on_cpu(dtype):
    model, data, optimizer, scheduler, loss_fn = tiny_training()
    choice = DeviceChoice(CPU, "test", dtype)
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, bad_batch = train_one_epoch(
        model,
        data,
        16,
        optimizer,
        scheduler,
        loss_fn,
        choice,
        1.0,
        torch.Generator().manual_seed(0),
        scaler,
    )
    assert math.isfinite(loss)
    assert 0.0 < loss < 5.0
    assert bad_batch == NO_BAD_BATCH
    changed = [
        k for k, v in model.state_dict().items() if not torch.equal(v, before[k])
    ]
    assert "head.weight" in changed and "backbone.0.weight" in changed
    for value in model.state_dict().values():
        assert value.dtype == torch.float32  # AMP casts activations, not weights
    if scaler is not None:
        assert scaler.get_scale() > 0


def test_train_one_epoch_reports_the_first_nonfinite_batch():
    model, data, optimizer, scheduler, loss_fn = tiny_training()
    data.numeric[20, 0] = float("nan")
    _, bad_batch = train_one_epoch(
        model,
        data,
        16,
        optimizer,
        scheduler,
        loss_fn,
        DeviceChoice(CPU, "test"),
        None,
        torch.Generator().manual_seed(0),
        None,
    )
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert bad_batch == int((order == 20).nonzero()) // 16


def test_the_fused_optimizer_takes_the_plain_adamw_steps():
    """make_optimizer picks torch's fused AdamW on the CPU: the same updates as the
    per-tensor implementation (to float32 rounding), decay groups kept."""
    model, data, optimizer, _, loss_fn = tiny_training()
    assert optimizer.defaults["fused"] is True
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0]
    reference = copy.deepcopy(model)
    plain = torch.optim.AdamW(
        [
            {"params": g["params"], "weight_decay": g["weight_decay"]}
            for g in make_param_groups_like(optimizer, model, reference)
        ],
        lr=1e-2,
        foreach=False,
    )
    for step in range(5):
        rows = slice(step * 16, step * 16 + 16)
        for net, opt in ((model, optimizer), (reference, plain)):
            opt.zero_grad(set_to_none=True)
            out = net(data.numeric[rows], data.categorical[rows])
            loss_fn(out, data.target[rows]).backward()
            opt.step()
    for (name, fused), plain_value in zip(
        model.state_dict().items(), reference.state_dict().values()
    ):
        torch.testing.assert_close(fused, plain_value, rtol=1e-5, atol=1e-6, msg=name)


def make_param_groups_like(optimizer, model, reference):
    """`optimizer`'s groups with `model`'s parameters swapped for `reference`'s."""
    twin = dict(zip(model.parameters(), reference.parameters()))
    return [
        {
            "params": [twin[p] for p in group["params"]],
            "weight_decay": group["weight_decay"],
        }
        for group in optimizer.param_groups
    ]
