"""Nothing is lost: a run never overwrites an earlier run's folder, a resume is marked in the log and is
checked against the checkpoint's config, killed saves leave no litter, failed runs no empty folders."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import attngan_fast.train.damsm as damsm
from attngan_fast.atomic import NoSpaceError, atomic_path
from attngan_fast.cli import main as cli
from attngan_fast.train import gan
from attngan_fast.train.checkpoint import CheckpointError, load_checkpoint, save_atomic
from test_damsm_training import tiny_config
from test_gan import tiny_gan_config

TINY_DAMSM = ["--config", "synthetic", "--quiet", "--set", "data.image_size=32", "--set", "data.workers=0",
              "--set", "text_encoder.embedding_dim=16", "--set", "text_encoder.hidden_dim=16",
              "--set", "image_encoder.compact_width=8", "--set", "damsm.batch_size=8",
              "--set", "damsm.max_minutes=null", "--set", "runtime.eval_batches=1"]


def _damsm_cli(root, out, *extra):
    return ["pretrain-damsm", "--data", str(root), "--out", str(out), *TINY_DAMSM, *extra]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def damsm_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("damsm-run")
    damsm.train_damsm(tiny_config(synthetic_root, out, "damsm.max_steps=3"), progress=False)
    return out / "latest.pt"


def test_a_second_run_into_a_folder_that_holds_a_run_is_a_one_line_error(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=4")) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{out} already holds a DAMSM run (latest.pt at step 4" in err, err
    assert f"--resume {out / 'latest.pt'}" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched


def test_the_library_refuses_too_and_a_gan_folder_is_named_as_such(synthetic_root, damsm_run, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gan.train_gan(tiny_gan_config(synthetic_root, damsm_run, tmp_path, "gan.max_steps=2"), progress=False)
        with pytest.raises(ValueError, match=r"already holds an AttnGAN run \(latest.pt at step 2"):
            gan.train_gan(tiny_gan_config(synthetic_root, damsm_run, tmp_path, "gan.max_steps=2"), progress=False)
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 2


def test_a_log_without_a_checkpoint_is_a_run_too(synthetic_root, tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n')  # killed before its first checkpoint
    with pytest.raises(ValueError, match="holds the log of a run that saved no checkpoint") as caught:
        damsm.train_damsm(tiny_config(synthetic_root, tmp_path, "damsm.max_steps=1"), progress=False)
    assert "--resume" not in str(caught.value) and "--overwrite" in str(caught.value)  # nothing to resume from


def test_a_limit_stop_says_so_and_how_to_go_on(synthetic_root, tmp_path, capsys):
    """damsm.max_steps below the planned epochs: exit 0, but the run says where it stopped and how to go
    on; resumed as it was, it says there is nothing to train. --overwrite with a --resume of the same
    run is a contradiction, refused."""
    out = tmp_path / "run"
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=3")) == 0
    latest = out / "latest.pt"
    again = " ".join(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=3"))
    err = capsys.readouterr().err
    assert (f"stopped at damsm.max_steps at step 3; saved {latest}; to go on: raise damsm.max_steps, then "
            f"attngan-fast {again} --resume {latest}") in err, err
    assert _records(out / "log.jsonl")[-1]["stopped_at"] == "damsm.max_steps"
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=3", "--resume", str(latest))) == 0
    assert "has already trained to damsm.max_steps = 3 (step 3): nothing to train" in capsys.readouterr().err
    assert cli(_damsm_cli(synthetic_root, out, "--resume", str(latest), "--overwrite")) == 2
    assert "which --overwrite would move aside: give one of them" in capsys.readouterr().err


def test_overwrite_moves_the_earlier_run_aside_and_says_so(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=4")) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=2", "--overwrite")) == 0
    err = capsys.readouterr().err
    moved = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("replaced-")]
    assert len(moved) == 1 and f"moved the earlier DAMSM run (step 4) to {moved[0]}" in err, err
    assert {p.name: p.read_bytes() for p in moved[0].iterdir() if p.is_file()} == old  # every byte kept
    assert load_checkpoint(out / "latest.pt")["step"] == 2
    records = _records(out / "log.jsonl")
    assert records[0] == {"started": True, "replaced": str(moved[0])} and records[-1]["step"] == 2


def test_resume_continues_in_place_and_marks_the_log(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=3", "--set", "runtime.log_every=1")) == 0
    assert cli(_damsm_cli(synthetic_root, out, "--set", "damsm.max_steps=5", "--set", "runtime.log_every=1",
                          "--resume", str(out / "latest.pt"))) == 0
    records = _records(out / "log.jsonl")
    marks = [r for r in records if r.get("resumed")]
    assert len(marks) == 1 and marks[0]["step"] == 3 and marks[0]["from"] == str(out / "latest.pt")
    assert marks[0]["changed"] == {"damsm.max_steps": [3, 5]}
    after = records[records.index(marks[0]) + 1:]
    assert [r["step"] for r in after if "total" in r] == [4, 5]


def test_resuming_another_folders_checkpoint_into_a_run_is_refused(synthetic_root, damsm_run, tmp_path):
    damsm.train_damsm(tiny_config(synthetic_root, tmp_path, "damsm.max_steps=2"), progress=False)
    with pytest.raises(ValueError, match=rf"resuming {damsm_run} there would replace it"):
        damsm.train_damsm(tiny_config(synthetic_root, tmp_path, "damsm.max_steps=5"), resume=damsm_run, progress=False)


def test_resume_with_another_model_shape_names_the_keys_in_one_line(synthetic_root, damsm_run, tmp_path, capsys):
    args = _damsm_cli(synthetic_root, tmp_path / "new", "--resume", str(damsm_run), "--set", "damsm.max_steps=5",
                      "--set", "text_encoder.hidden_dim=24", "--set", "image_encoder.compact_width=4")
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (f"cannot resume {damsm_run}: the model's shape differs from the checkpoint's: "
            "text_encoder.hidden_dim 16 -> 24, image_encoder.compact_width 8 -> 4") in err, err
    assert not (tmp_path / "new").exists()


def test_resume_with_another_batch_size_and_lr_is_allowed_and_logged(synthetic_root, damsm_run, tmp_path, capsys):
    cfg = tiny_config(synthetic_root, tmp_path, "damsm.max_steps=5", "damsm.batch_size=4", "damsm.lr=1e-3")
    damsm.train_damsm(cfg, resume=damsm_run, progress=False)
    mark = _records(tmp_path / "log.jsonl")[0]
    assert mark["resumed"] and mark["changed"]["damsm.batch_size"] == [8, 4]
    assert mark["changed"]["damsm.lr"] == [0.002, 0.001] and mark["changed"]["damsm.max_steps"] == [3, 5]
    assert "damsm.out_dir" in mark["changed"]
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    # 3 batches of 8 were seen in this epoch; with batches of 4 the epoch continues after sample 24.
    assert ckpt["step"] == 5 and ckpt["position"] == 6 + 2
    err = capsys.readouterr().err
    assert err.startswith("attngan-fast: resuming with changed settings: ") and err.count("\n") == 1, err
    assert "damsm.batch_size 8 -> 4, damsm.lr 0.002 -> 0.001, damsm.max_steps 3 -> 5" in err, err


def test_a_gan_resume_applies_a_changed_learning_rate(synthetic_root, damsm_run, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gan.train_gan(tiny_gan_config(synthetic_root, damsm_run, tmp_path, "gan.max_steps=1"), progress=False)
        gan.train_gan(tiny_gan_config(synthetic_root, damsm_run, tmp_path, "gan.max_steps=2", "gan.lr_g=1e-3",
                                      "gan.lr_d=3e-4"), resume=tmp_path / "latest.pt", progress=False)
        ckpt = load_checkpoint(tmp_path / "latest.pt")
        assert ckpt["optG"]["param_groups"][0]["lr"] == 1e-3
        assert all(o["param_groups"][0]["lr"] == 3e-4 for o in ckpt["optsD"])
        with pytest.raises(CheckpointError, match=r"gan.gf_dim 4 -> 8$"):
            gan.train_gan(tiny_gan_config(synthetic_root, damsm_run, tmp_path, "gan.max_steps=3", "gan.gf_dim=8"),
                          resume=tmp_path / "latest.pt", progress=False)


def test_a_killed_save_leaves_no_temporary_file_after_the_next_save(tmp_path):
    target = tmp_path / "latest.pt"
    left = tmp_path / ".latest.pt.k1ll3d.tmp"  # what a save killed between write and rename leaves
    left.write_bytes(b"half a checkpoint")
    other = tmp_path / ".cache.json.x.tmp"
    other.write_text("another file's")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and not left.exists()
    assert other.exists()  # only this target's leftovers go
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.json.x.tmp", "latest.pt"]


def test_a_resume_removes_what_killed_writes_left_and_files_get_the_umask(synthetic_root, tmp_path):
    """A snapshot or picture write killed halfway leaves a checkpoint-sized temporary file whose target
    the resumed run may never write again: the run that takes the folder over removes them. Saved
    files have the mode a plain write would give them (mkstemp's is 0600)."""
    out = tmp_path / "run"
    damsm.train_damsm(tiny_config(synthetic_root, out, "damsm.max_steps=2"), progress=False)
    killed = [out / ".damsm_epoch0002.pt.a1b2c3.tmp", out / ".attention_maps_step0000002.png.x.tmp"]
    for path in killed:
        path.write_bytes(b"half of it")
    mine = out / ".notes.txt.tmp"  # not a write of ours: stays
    mine.write_text("mine")
    damsm.train_damsm(tiny_config(synthetic_root, out, "damsm.max_steps=3"), resume=out / "latest.pt", progress=False)
    assert not any(path.exists() for path in killed) and mine.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "latest.pt").stat().st_mode) == 0o666 & ~umask


def test_overwrite_moves_the_tensorboard_events_and_the_eval_curve_too(tmp_path):
    from attngan_fast.train.run_folder import claim_run_folder

    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1").write_text("old events")
    for name in ("log.jsonl", "eval_curve.png"):
        (out / name).write_text("old")
    _, first = claim_run_folder(out, resume=None, overwrite=True)
    aside = Path(first["replaced"])
    assert sorted(p.name for p in out.iterdir()) == [aside.name]
    assert (aside / "tensorboard" / "events.out.tfevents.1").read_text() == "old events"
    assert (aside / "eval_curve.png").exists()


def test_a_snapshot_is_written_before_latest_so_a_kill_between_them_loses_nothing(synthetic_root, tmp_path,
                                                                                    monkeypatch):
    """Killed right after the epoch's snapshot, before latest.pt: the resume redoes that epoch from the
    previous latest.pt and the snapshot exists (the other order would skip it for good)."""
    order = []
    real_save = damsm.save_atomic

    def recording_save(payload, path):
        order.append(Path(path).name)
        return real_save(payload, path)

    monkeypatch.setattr(damsm, "save_atomic", recording_save)
    damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "run", "damsm.epochs=1", "damsm.snapshot_every=1",
                                  "damsm.snapshot_epochs=[]", "damsm.max_steps=null"), progress=False)
    assert order[-2:] == ["damsm_epoch0001.pt", "latest.pt"], order


def _signal_at_step(monkeypatch, at: int, sig=signal.SIGTERM):
    """The loop's stop check raises ``sig`` in this process when it reaches step ``at`` (as Ctrl-C or a
    scheduler's SIGTERM would arrive during that step)."""
    from attngan_fast.train import runtime

    original = runtime.Deadline.passed

    def passed(self, step):
        if step == at:
            signal.raise_signal(sig)
        return original(self, step)

    monkeypatch.setattr(runtime.Deadline, "passed", passed)


def test_a_signal_saves_where_the_run_is_and_the_resume_is_exact(synthetic_root, tmp_path, monkeypatch, capsys):
    """SIGTERM (or Ctrl-C) in the middle of an epoch: the run saves that step and ends with the signal's
    code, saying how to go on; resumed, it ends exactly where an uninterrupted run does. The handlers are
    the previous ones afterwards."""
    whole = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "whole", "damsm.max_steps=6"), progress=False)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        _signal_at_step(patch, 3)
        code = cli(_damsm_cli(synthetic_root, tmp_path / "cut", "--set", "damsm.max_steps=6"))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    latest = tmp_path / "cut" / "latest.pt"
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, err
    # The command that goes on is this one, resuming: the same folder, data and settings.
    again = " ".join(_damsm_cli(synthetic_root, tmp_path / "cut", "--set", "damsm.max_steps=6"))
    assert f"stopped by SIGTERM at step 3; saved {latest}; to go on: attngan-fast {again} --resume {latest}" in err
    ckpt = load_checkpoint(latest)
    assert ckpt["step"] == 3 and ckpt["position"] == 3  # mid-epoch
    assert _records(tmp_path / "cut" / "log.jsonl")[-1]["stopped_by"] == "SIGTERM"
    resumed = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "cut", "damsm.max_steps=6"), resume=latest,
                                progress=False)
    assert resumed["step"] == 6 and resumed["param_checksum"] == whole["param_checksum"]


def test_a_signal_after_an_evaluation_reports_the_step_it_stopped_at(synthetic_root, tmp_path, monkeypatch):
    """The result's step is where the run stopped, not the last evaluation's (a probe saw step 36 printed
    for a checkpoint at step 37)."""
    cfg = tiny_config(synthetic_root, tmp_path, "damsm.epochs=3")
    with monkeypatch.context() as patch:
        _signal_at_step(patch, 96 * 3 // 4 // 8 + 2)  # two steps into the second epoch, after its evaluation
        result = damsm.train_damsm(cfg, progress=False)
    assert result["stopped_by"] == "SIGTERM" and result["step"] == 11 == load_checkpoint(tmp_path / "latest.pt")["step"]


def test_a_signal_at_the_runs_last_step_changes_nothing(synthetic_root, tmp_path, monkeypatch, capsys):
    """The run's planned end reached: no "stopped", no --resume line, exit 0, the closing evaluation made."""
    cfg = tiny_config(synthetic_root, tmp_path, "damsm.epochs=1")
    with monkeypatch.context() as patch:
        _signal_at_step(patch, 96 * 3 // 4 // 8)  # the epoch's last step: 72 training images, batch 8
        result = damsm.train_damsm(cfg, progress=False)
    assert result["step"] == 9 and "stopped_by" not in result and "retrieval_top1" in result
    assert "stopped_by" not in _records(tmp_path / "log.jsonl")[-1]


def test_a_second_ctrl_c_stops_at_once_and_a_second_sigterm_changes_nothing(synthetic_root, tmp_path, monkeypatch):
    from attngan_fast.train import runtime

    original = runtime.Deadline.passed

    def passed(self, step):
        if step == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return original(self, step)

    monkeypatch.setattr(runtime.Deadline, "passed", passed)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "run", "damsm.max_steps=6"), progress=False)
    assert signal.getsignal(signal.SIGINT) is before
    twice = runtime.Runtime(torch.device("cpu"))
    with runtime.stopping_on_signals(twice):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # a scheduler and torchrun both send one: still a clean stop
    assert twice.stop == "SIGTERM"


def test_a_process_whose_loader_workers_are_alive_at_exit_still_exits(tmp_path):
    """A persistent-worker loader still alive at exit (held in a reference cycle, as the bird preset's
    was): Python's exit ends the workers with SIGTERM, so a worker that ignored it hung the process
    forever (a CI run did)."""
    probe = ("from torch.utils.data import DataLoader; from attngan_fast.train.runtime import leave_the_process_group; "
             "loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True, "
             "worker_init_fn=leave_the_process_group); batches = iter(loader); print(next(batches).tolist())")
    # TMPDIR: workers ended at exit leave multiprocessing's pymp-* folders behind
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.strip() == "[0, 1]", done.stderr[-2000:]


def test_loader_workers_leave_the_process_group_and_keep_the_default_handlers():
    """torchrun signals a rank's whole process group and Ctrl-C the terminal's: a worker that died of it
    would end the run unsaved. Workers move to a group of their own instead of ignoring the signals,
    which would make the loader's (and Python's exit's) SIGTERM hang the run's end."""
    probe = ("import os, signal; from attngan_fast.train.runtime import leave_the_process_group as start; start(0); "
             "print([os.getpgrp() == os.getpid()] + [signal.getsignal(s) is not signal.SIG_IGN "
             "for s in (signal.SIGINT, signal.SIGTERM)])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True, True, True]"


def test_failed_runs_leave_no_empty_output_folders(synthetic_root, damsm_run, tmp_path, capsys):
    assert cli(_damsm_cli(tmp_path / "no-data", tmp_path / "a")) == 2
    assert cli(_damsm_cli(synthetic_root, tmp_path / "b", "--set", "damsm.batch_size=500")) == 2
    assert cli(["train", "--config", "synthetic", "--data", str(synthetic_root), "--damsm", str(damsm_run),
                "--out", str(tmp_path / "c"), "--quiet", "--set", "gan.batch_size=500",
                "--set", "text_encoder.hidden_dim=16", "--set", "text_encoder.embedding_dim=16"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_zero_steps_reports_no_checkpoint_that_does_not_exist(synthetic_root, tmp_path):
    result = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "d", "damsm.max_steps=0"), progress=False)
    assert result["checkpoint"] is None and result["step"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damsm_ckpt = tmp_path / "dm" / "latest.pt"
        damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "dm", "damsm.max_steps=1"), progress=False)
        result = gan.train_gan(tiny_gan_config(synthetic_root, damsm_ckpt, tmp_path / "g", "gan.max_steps=0"),
                               progress=False)
    assert result["checkpoint"] is None and result["step"] == 0
    assert not (tmp_path / "g" / "latest.pt").exists() and not (tmp_path / "d" / "latest.pt").exists()
    assert torch.isfinite(torch.tensor(result["param_checksum"]))


def test_a_resume_on_another_number_of_processes_continues_after_every_sample_seen():
    """Two processes of batch 4 saved at position 5 had seen 40 samples of the epoch (the permutation
    dealt to the ranks in turn): one process of batch 8 goes on at its batch 5, of batch 16 at batch 2
    (32 samples; fewer than one global batch are seen again); four processes of batch 2 at batch 5.
    On another number of processes every rank seeds a stream of its own (no two share one)."""
    from attngan_fast.train.common import position_for_batch_size, restore_progress, saved_world
    from attngan_fast.train.checkpoint import rng_state
    from attngan_fast.train.runtime import Runtime

    ckpt = {"config": {"gan": {"batch_size": 4}, "runtime": {"seed": 7}}, "position": 5, "rng": [rng_state(), rng_state()],
            "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "epoch": 1, "step": 30}
    assert saved_world(ckpt) == 2 and saved_world({**ckpt, "rng": rng_state()}) == 1
    assert position_for_batch_size(ckpt, "gan", 8, world=1) == 5
    assert position_for_batch_size(ckpt, "gan", 16, world=1) == 2
    assert position_for_batch_size(ckpt, "gan", 2, world=4) == 5
    assert position_for_batch_size(ckpt, "gan", 4, world=2) == 5  # unchanged: the same run
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    draws = []
    for rank in (1, 3):  # ranks 1 and 3 of 4 would share saved rank 1's stream if it were reused
        assert restore_progress(ckpt, scaler, Runtime(torch.device("cpu"), rank=rank, world=4)) == (1, 5, 30)
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])


def _disk_full(*_args, **_kwargs):
    """What torch.save does on a full disk: the file's OSError, reported as torch's RuntimeError."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    save_atomic({"step": 1}, target)
    monkeypatch.setattr(torch, "save", _disk_full)
    with pytest.raises(NoSpaceError, match=f"no space left on the device \\({tmp_path}\\) to write latest.pt; the "
                                           "previous latest.pt is unchanged"):
        save_atomic({"step": 2}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
    assert torch.load(target, weights_only=True) == {"step": 1}
    with pytest.raises(RuntimeError, match="unexpected pos"):  # any other failure stays what it was
        with atomic_path(tmp_path / "other.pt"):
            raise RuntimeError("unexpected pos")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/filesystems").read_text().count("tmpfs"),
                    reason="mounts a tiny tmpfs (needs root)")
def test_a_really_full_disk_is_named_as_such(tmp_path):
    """torch.save into a 256 KiB tmpfs: NoSpaceError (torch's own message is "unexpected pos")."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs was refused here")
    try:
        save_atomic({"w": torch.zeros(1000)}, folder / "latest.pt")
        with pytest.raises(NoSpaceError, match="the previous latest.pt is unchanged"):
            save_atomic({"w": torch.zeros(1 << 20)}, folder / "latest.pt")
        assert [p.name for p in folder.iterdir()] == ["latest.pt"]
        assert torch.load(folder / "latest.pt", weights_only=True)["w"].numel() == 1000
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_a_run_is_one_line_with_the_command_that_goes_on(synthetic_root, tmp_path, monkeypatch,
                                                                             capsys):
    """The second save of a run finds the disk full: exit 2, one line naming the file, the last complete
    checkpoint and the command that resumes from it; latest.pt is the first save's."""
    real_save, calls = torch.save, []

    def save_once_then_full(*args, **kwargs):
        calls.append(1)
        return real_save(*args, **kwargs) if len(calls) == 1 else _disk_full()

    monkeypatch.setattr(torch, "save", save_once_then_full)
    args = _damsm_cli(synthetic_root, tmp_path / "run", "--set", "damsm.epochs=2", "--set", "damsm.max_steps=null",
                      "--set", "damsm.snapshot_every=100")
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    latest = tmp_path / "run" / "latest.pt"
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"attngan-fast: error: no space left on the device ({tmp_path / 'run'}) to write "
                          "latest.pt; the previous latest.pt is unchanged; the run's last complete checkpoint is "
                          f"{latest}: free some space, then attngan-fast {' '.join(args)} --resume {latest}"), err
    assert load_checkpoint(latest)["epoch"] == 1


def test_a_full_disk_on_a_plain_write_or_a_quota_still_says_how_to_go_on(synthetic_root, tmp_path, monkeypatch,
                                                                        capsys):
    """A log line that finds the disk full (an OSError without a file name) and a quota: the run's
    latest.pt and the command still come; a quota is called one. The error pickles (it may cross a
    process boundary)."""
    import pickle

    from attngan_fast.train import runtime

    real_write = runtime.JsonlLog.write

    def write_then_full(self, record):
        if (self.path.parent / "latest.pt").is_file():  # the first line after the first checkpoint
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real_write(self, record)

    monkeypatch.setattr(runtime.JsonlLog, "write", write_then_full)
    args = _damsm_cli(synthetic_root, tmp_path / "run", "--set", "damsm.epochs=2", "--set", "damsm.max_steps=null")
    assert cli(args) == 2
    latest = tmp_path / "run" / "latest.pt"
    err = capsys.readouterr().err.strip()
    assert err == (f"attngan-fast: error: the disk quota is exceeded; the run's last complete checkpoint is {latest}: "
                   f"free some space, then attngan-fast {' '.join(args)} --resume {latest}"), err
    copy = pickle.loads(pickle.dumps(NoSpaceError("no space left on the device (x) to write y", "y")))
    assert str(copy) == "no space left on the device (x) to write y" and copy.errno == errno.ENOSPC
