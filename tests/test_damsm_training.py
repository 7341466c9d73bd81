"""DAMSM pretraining on tiny synthetic data: learning, the kernel path, exact resume, divergence,
the command line, and a 2-process gloo DDP run."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

import attngan_fast.train.damsm as damsm
from attngan_fast.cli import main as cli
from attngan_fast.config import load_config
from attngan_fast.data.dataset import TextImageDataset, collate
from attngan_fast.data.prepare import load_captions
from attngan_fast.train.checkpoint import load_checkpoint
from attngan_fast.train.runtime import TrainingDiverged
from host_sync import HostReads, free_port
from numerics import assert_rel, needs_interpreter


def tiny_config(root, out, *extra):
    return load_config("synthetic", [
        f"data.root={root}", f"damsm.out_dir={out}", "data.image_size=32", "data.workers=0",
        "text_encoder.embedding_dim=16", "text_encoder.hidden_dim=16", "image_encoder.compact_width=8",
        "damsm.batch_size=8", "damsm.epochs=2", "damsm.max_minutes=null", "damsm.pictures_every=1",
        "runtime.eval_batches=2", "runtime.log_every=1", *extra,
    ])


def _batch(cfg, n=8):
    cache = load_captions(cfg.data.root, "cub", 10, progress=False)
    ds = TextImageDataset(cfg.data.root, "cub", "train", captions_per_image=10, words_num=18, image_size=32, cache=cache)
    return cache.vocab, collate([ds[(i, i)] for i in range(n)])


def test_optimisation_lowers_the_loss_on_a_fixed_batch(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path)
    vocab, batch = _batch(cfg)
    torch.manual_seed(0)
    text_encoder, image_encoder = damsm.build_models(cfg, vocab)
    params = list(text_encoder.parameters()) + list(image_encoder.parameters())
    opt = torch.optim.Adam(params, lr=2e-3, betas=(0.5, 0.999))
    first = None
    for _ in range(12):
        losses, _ = damsm.damsm_losses(text_encoder, image_encoder, batch, cfg, torch.device("cpu"))
        first = first if first is not None else float(losses["total"].detach())
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    with torch.no_grad():
        last = float(damsm.damsm_losses(text_encoder.eval(), image_encoder.eval(), batch, cfg, torch.device("cpu"))[0]["total"])
    assert torch.isfinite(torch.tensor(last)) and last < 0.7 * first, (first, last)


def test_a_training_step_reads_nothing_back_from_the_device(synthetic_root, tmp_path):
    # Each read of a device value makes the host wait for the GPU's queue; the step has none of ours
    # (the encoder gets the loader's host lengths, the ops' value checks are off for loader batches).
    cfg = tiny_config(synthetic_root, tmp_path)
    vocab, batch = _batch(cfg)
    text_encoder, image_encoder = damsm.build_models(cfg, vocab)
    with HostReads() as reads:
        losses, _ = damsm.damsm_losses(text_encoder, image_encoder, batch, cfg, torch.device("cpu"))
        losses["total"].backward()
    assert reads.found == []
    with HostReads() as reads:  # the control: called directly, the op checks the lengths' values
        damsm.words_loss(torch.randn(8, 16, 3, 3), torch.randn(8, 16, 5), torch.full((8,), 5))
    assert any("kernels/_checks.py" in r for r in reads.found), reads.found


@needs_interpreter
def test_losses_through_the_fused_kernels_equal_the_reference(synthetic_root, tmp_path):
    cfg_ref = tiny_config(synthetic_root, tmp_path, "runtime.impl=reference")
    cfg_tri = tiny_config(synthetic_root, tmp_path, "runtime.impl=triton")
    vocab, batch = _batch(cfg_ref, n=4)
    text_encoder, image_encoder = damsm.build_models(cfg_ref, vocab)
    text_encoder.eval(), image_encoder.eval()
    grads = []
    for cfg in (cfg_ref, cfg_tri):
        image_encoder.zero_grad()
        losses, attn = damsm.damsm_losses(text_encoder, image_encoder, batch, cfg, torch.device("cpu"), return_attn=True)
        losses["total"].backward()
        grads.append((losses, attn, [p.grad.clone() for p in image_encoder.parameters()]))
    (l_ref, a_ref, g_ref), (l_tri, a_tri, g_tri) = grads
    for k in l_ref:
        assert_rel(l_tri[k], l_ref[k], 1e-5, f"loss {k}")
    assert_rel(a_tri, a_ref, 1e-5, "attention maps")
    # Two fp32 computations through a whole encoder's backward: BatchNorm-parameter gradients are sums
    # with cancellation (measured over 60 seeds: up to 7e-6 apart). A real bug is off by > 1e-3.
    for (name, _), a, b in zip(image_encoder.named_parameters(), g_tri, g_ref):
        assert_rel(a, b, 5e-5, f"gradient of {name}")


def _final_state(path):
    ckpt = load_checkpoint(path, damsm.FORMAT)
    return ckpt["text_encoder"], ckpt["image_encoder"], ckpt["optimizer"]["state"]


def _assert_same(a, b):
    for part_a, part_b in zip(a, b):
        flat_a = {k: v for k, v in part_a.items()}
        for k, v in flat_a.items():
            w = part_b[k]
            if isinstance(v, dict):
                for kk in v:
                    assert torch.equal(torch.as_tensor(v[kk]), torch.as_tensor(w[kk])), f"{k}.{kk}"
            else:
                assert torch.equal(v, w), k


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(synthetic_root, tmp_path):
    full = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "full"), progress=False)
    # Stopped inside the first epoch (9 steps per epoch), then resumed to the end.
    part = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "part", "damsm.max_steps=4"), progress=False)
    assert part["step"] == 4 and load_checkpoint(tmp_path / "part" / "latest.pt")["position"] == 4
    resumed = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "part"), resume=tmp_path / "part" / "latest.pt",
                                progress=False)
    assert resumed["step"] == full["step"] == 18
    _assert_same(_final_state(tmp_path / "full" / "latest.pt"), _final_state(tmp_path / "part" / "latest.pt"))
    # And from an epoch boundary.
    damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "epoch", "damsm.epochs=1"), progress=False)
    damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "epoch"), resume=tmp_path / "epoch" / "latest.pt",
                      progress=False)
    _assert_same(_final_state(tmp_path / "full" / "latest.pt"), _final_state(tmp_path / "epoch" / "latest.pt"))


def test_nan_loss_stops_with_last_checkpoint_kept(synthetic_root, tmp_path, monkeypatch):
    damsm.train_damsm(tiny_config(synthetic_root, tmp_path, "damsm.epochs=1"), progress=False)
    before = (tmp_path / "latest.pt").read_bytes()
    real = damsm.sent_loss

    def poisoned(*args, **kwargs):
        s0, s1 = real(*args, **kwargs)
        return s0 * float("nan"), s1

    monkeypatch.setattr(damsm, "sent_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"DAMSM loss became non-finite at step \d+ \(w0 .*s0 nan.*total nan\); "
                                               r"training stopped .* last good checkpoint is .*latest.pt"):
        damsm.train_damsm(tiny_config(synthetic_root, tmp_path), resume=tmp_path / "latest.pt", progress=False)
    assert (tmp_path / "latest.pt").read_bytes() == before


@pytest.mark.slow
def test_cli_pretrain_writes_checkpoint_log_and_pictures(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--out", str(out), "--quiet",
            "--set", "data.image_size=32", "--set", "damsm.batch_size=8", "--set", "damsm.epochs=1",
            "--set", "text_encoder.hidden_dim=16", "--set", "runtime.eval_batches=1", "--amp", "bf16"]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert 0.0 <= result["retrieval_top1"] <= 1.0 and result["retrieval_candidates"] >= 2
    assert (out / "latest.pt").exists() and (out / "damsm_epoch0000.pt").exists() is False
    assert list(out.glob("attention_maps_step*.png")), "attention-map picture written"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("eval") for r in records)
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in records if "total" in r)
    assert records[-1]["final"] and records[-1]["steps_per_s"] > 0 and result["speed"] == {
        k: v for k, v in records[-1].items() if k not in ("final", "step")}
    models = damsm.load_damsm(out / "latest.pt")
    assert models.config.runtime.amp == "bf16" and len(models.vocab) > 10


def test_cli_config_errors_are_clear(synthetic_root, tmp_path, capsys):
    code = cli(["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--set", "damsm.gama1=3"])
    assert code == 2 and "unknown config key 'gama1' in damsm" in capsys.readouterr().err


def _ddp_worker(rank, world, port, root, out, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = tiny_config(root, out, "damsm.epochs=1", "runtime.device=cpu")
    results[rank] = damsm.train_damsm(cfg, progress=False)


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_in_sync(synthetic_root, tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), str(synthetic_root), str(tmp_path), results), nprocs=2, join=True)
    assert results[0]["step"] == results[1]["step"] == 72 // 2 // 8
    assert results[0]["param_checksum"] == results[1]["param_checksum"], "DDP ranks diverged"
    ckpt = load_checkpoint(tmp_path / "latest.pt", damsm.FORMAT)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2


@pytest.mark.slow
def test_fp16_scaler_and_compile_smoke(synthetic_root, tmp_path):
    """fp16 autocast with a gradient scaler, the image encoder compiled, channels_last: a few steps run,
    losses stay finite, weights change."""
    torch._dynamo.reset()
    cfg = tiny_config(synthetic_root, tmp_path, "runtime.amp=fp16", "runtime.compile=true",
                      "runtime.channels_last=true", "damsm.max_steps=3", "damsm.epochs=1")
    vocab = load_captions(synthetic_root, "cub", 10, progress=False).vocab
    torch.manual_seed(cfg.runtime.seed)
    initial = damsm.build_models(cfg, vocab)[1].state_dict()
    result = damsm.train_damsm(cfg, progress=False)
    assert result["step"] == 3 and torch.isfinite(torch.tensor(result["val_total"]))
    trained = load_checkpoint(tmp_path / "latest.pt")
    assert trained["scaler"]["scale"] > 0, "the fp16 gradient scaler is active and saved"
    changed = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained["image_encoder"][k])]
    assert changed, "training changed the image encoder"


@pytest.mark.parametrize("layout", ["cub", "coco"])
def test_same_command_trains_on_cub_and_coco_layouts(tmp_path, capsys, layout):
    """Real layouts (CUB with boxes and classes, COCO without classes) train with no code change."""
    from data_fixtures import make_coco, make_cub

    root = make_cub(tmp_path / "data", n_train=8, n_test=4) if layout == "cub" else make_coco(tmp_path / "data", n_train=8, n_test=4)
    cpi = "10" if layout == "cub" else "5"
    args = ["pretrain-damsm", "--config", "synthetic", "--data", str(root), "--out", str(tmp_path / "run"), "--quiet",
            "--set", f"data.layout={layout}", "--set", f"data.captions_per_image={cpi}", "--set", "data.image_size=32",
            "--set", "damsm.batch_size=4", "--set", "damsm.epochs=1", "--set", "text_encoder.hidden_dim=16"]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert result["step"] == 2 and result["retrieval_images"] == 4


def test_evaluating_every_few_epochs_changes_nothing_but_the_evaluations(synthetic_root, tmp_path):
    every = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "every", "damsm.epochs=3"), progress=False)
    sparse = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "sparse", "damsm.epochs=3", "damsm.eval_every=2"),
                               progress=False)
    assert sparse["param_checksum"] == every["param_checksum"]  # evaluation never touches the training's RNG
    rows = [json.loads(line) for line in (tmp_path / "sparse" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("eval")] == [2, 3]  # every 2nd epoch, and the last
    assert sparse["retrieval_top1"] == every["retrieval_top1"] and sparse["epoch"] == 3
    assert len(list((tmp_path / "sparse").glob("attention_maps_step*.png"))) == 2  # pictures at evaluated epochs


def test_an_evaluation_of_one_class_has_no_retrieval_score_and_training_goes_on(tmp_path, capsys):
    """runtime.eval_batches = 1 over a test split in class order can evaluate images of one class only:
    no caption may then serve as a distractor, so retrieval has no value (null in the JSON, n/a) for that
    evaluation, nor have the losses (every negative masked), and it is not a crash."""
    import pickle

    from data_fixtures import make_cub

    root = make_cub(tmp_path / "data", n_train=8, n_test=4)
    with open(root / "test" / "class_info.pickle", "wb") as fh:
        pickle.dump([1, 1, 2, 2], fh, protocol=2)
    args = ["pretrain-damsm", "--config", "synthetic", "--data", str(root), "--out", str(tmp_path / "run"), "--quiet",
            "--set", "data.layout=cub", "--set", "data.captions_per_image=10", "--set", "data.image_size=32",
            "--set", "damsm.batch_size=2", "--set", "damsm.epochs=1", "--set", "text_encoder.hidden_dim=16",
            "--set", "runtime.eval_batches=1"]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert result["retrieval_top1"] is None and result["retrieval_candidates"] == 0
    assert result["retrieval_images"] == 2 and result["val_total"] is None
