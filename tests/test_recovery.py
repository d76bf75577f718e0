"""Recovery (`vlmslim recover`): KD on a tiny pruned LLaVA lowers the KD loss and raises teacher agreement,
LoRA merges exactly, a killed run resumes to the same weights, recovery data never gets scored, and bad
inputs fail in one line with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from vlmslim.checkpoint import reference_logits, save_checkpoint
from vlmslim.cli import cli
from vlmslim.data import load as load_data
from vlmslim.data import make_synthetic
from vlmslim.data.hashes import check_disjoint, dataset_image_hashes, image_content_hash
from vlmslim.errors import DataError, RecoveryError
from vlmslim.io import sha256_file
from vlmslim.loading import load_model
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.pruning import PruneConfig, prune_checkpoint
from vlmslim.recovery import METHOD_NAMES, METHODS, RecoverConfig, recover_checkpoint
from vlmslim.recovery.batches import step_indices
from vlmslim.recovery.losses import aligned_layers, kd_loss
from vlmslim.recovery.methods import language_linears
from vlmslim.recovery.step import finish, resume_dir
from vlmslim.testing import BASE_WORDS, tiny_llava, tiny_model

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and a shared CI core does not thrash OpenMP spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def peaked_llava(seed: int = 0, **kw):
    """A tiny random LLaVA whose lm_head is scaled up: confident, input-dependent predictions (a random
    init gives near-uniform logits, against which every student would already 'agree')."""
    model, proc = tiny_llava(seed, **kw)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model, proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """teacher (tiny LLaVA), student (its heads-25 % prune: shapes only `load_model` rebuilds), a 16-image
    recovery set and a disjoint 4-image evaluation set (synthetic shapes, 32 px)."""
    root = tmp_path_factory.mktemp("recovery")
    model, proc = peaked_llava()
    save_checkpoint(model, proc, root / "teacher", new_manifest("tiny-teacher", model.config))
    prune_checkpoint(root / "teacher", root / "student", PruneConfig(heads=0.25))
    make_synthetic(root / "train", n=16, seed=1, size=32)
    make_synthetic(root / "eval", n=4, seed=0, size=32)
    return root


def config(tmp, **kw) -> RecoverConfig:
    options = dict(steps=20, batch_size=4, lr=3e-3, max_new_tokens=6, cache_dir=str(tmp / "cache"), progress=False)
    return RecoverConfig(**{**options, **kw})


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def state_dict(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------- config and registry


def test_config_validates_and_names_the_option():
    for kw, msg in [({"steps": 0}, "--steps"), ({"method": "lora"}, "--method"), ({"lr": 0}, "--lr"),
                    ({"kd_temperature": -1}, "--kd-temperature"), ({"save_every": 0}, "--save-every"),
                    ({"dtype": "int8"}, "--dtype"), ({"hidden_weight": -0.1}, "--hidden-weight")]:
        with pytest.raises(ValueError, match=msg):
            RecoverConfig(**kw)
    assert RecoverConfig(steps=50).warmup_steps == 5 and RecoverConfig(lora_rank=8).alpha == 16.0


def test_spelled_out_choices_equal_the_registry():
    from vlmslim.cli import recover as cli_recover
    from vlmslim.recovery.config import DTYPES

    assert tuple(METHODS) == METHOD_NAMES == cli_recover.RECOVER_METHODS
    assert cli_recover.RECOVER_DTYPES == DTYPES


def test_kd_loss_is_the_temperature_scaled_kl():
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    T = 2.0
    p, q = (t[mask] / T).softmax(-1), (s[mask] / T).softmax(-1)
    expect = (p * (p.log() - q.log())).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, mask, T), expect, atol=1e-6)
    assert kd_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_step_batches_are_a_function_of_seed_and_step():
    a = [step_indices(10, 4, 0, s) for s in range(6)]
    assert a == [step_indices(10, 4, 0, s) for s in range(6)]
    assert sorted(a[0] + a[1] + a[2][:2]) == list(range(10))  # one epoch covers every sample once
    assert a != [step_indices(10, 4, 1, s) for s in range(6)]


def test_aligned_layers_follow_the_dropped_layers():
    t = {"steps": []}
    s = {"steps": [{"kind": "prune", "method": "layers", "params": {}, "dropped_layers": [1]}]}
    assert aligned_layers(s, t, 3, 4) == [(0, 0), (1, 2), (2, 3)]
    assert aligned_layers({"steps": []}, t, 4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    with pytest.raises(RecoveryError, match="cannot tell which layers align"):
        aligned_layers({"steps": [{"kind": "prune", "params": {"x": 1}}]}, {"steps": [{"kind": "other"}]}, 3, 4)


# ---------------------------------------------------------------- distillation


@pytest.fixture(scope="module")
def recovered(setup, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd")
    out, manifest = recover_checkpoint(setup / "student", setup / "teacher", setup / "train", tmp / "kd",
                                       config(tmp, ce_weight=0.5, hidden_weight=0.1))
    return out, manifest


def test_kd_lowers_the_loss_and_raises_teacher_agreement(recovered, setup):
    out, manifest = recovered
    step = manifest["steps"][-1]
    before, after = step["probe"]["before"], step["probe"]["after"]
    assert after["kd"] < 0.6 * before["kd"], step["probe"]
    assert after["agreement"] > before["agreement"] + 0.15, step["probe"]
    assert step["kind"] == "recover" and step["method"] == "kd" and step["params"]["steps"] == 20
    assert step["teacher"]["model_sha256"] == _model_hash(setup / "teacher")
    assert step["hidden_layers"] == [[0, 0], [1, 1]] and set(step["final_losses"]) >= {"kd", "ce", "hidden"}
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    with Image.open(out / "loss.png") as im:
        assert im.size[0] > 300
    # the pruned shapes stay: same tensors (names and shapes) as the student, and the step is in the card
    s, r = state_dict(setup / "student"), state_dict(out)
    assert {k: v.shape for k, v in s.items()} == {k: v.shape for k, v in r.items()}
    assert any(not torch.equal(s[k], r[k]) for k in s)
    assert manifest["stock_loadable"] is False and "## Recovery" in (out / "README.md").read_text()
    assert not resume_dir(out).exists()


def _model_hash(path):
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.name not in ("README.md", "vlmslim.json")):
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def test_teacher_targets_are_cached(recovered, setup, tmp_path):
    out, manifest = recovered
    cache = sorted((out.parent / "cache" / "teacher-targets").glob("*.jsonl"))
    assert len(cache) == 1
    rows = [json.loads(line) for line in cache[0].read_text().splitlines()[1:]]
    assert len(rows) == 16 and all(1 <= len(r["answer_ids"]) <= 6 for r in rows)
    # a second run finds the cache: generating again would raise
    import vlmslim.recovery.targets as targets

    def no_generation(*a, **k):
        raise AssertionError("the teacher generated again")

    mp = pytest.MonkeyPatch()
    mp.setattr(targets, "generate_targets", no_generation)
    try:
        recover_checkpoint(setup / "student", setup / "teacher", setup / "train", tmp_path / "again",
                           config(out.parent, steps=1))
    finally:
        mp.undo()


def test_lora_merge_gives_the_unmerged_adapter_logits(llava):
    model, proc = llava
    original = reference_logits(model, proc)
    wrapped = METHODS["lora-kd"].prepare(model, RecoverConfig(method="lora-kd", lora_rank=4))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters something to merge
                p.normal_(0.0, 0.2)
    adapter = reference_logits(wrapped, proc)
    merged, diff = finish(wrapped, "lora-kd", proc)
    assert (adapter - original).abs().max() > 0.05  # the adapter changes the model...
    assert torch.allclose(reference_logits(merged, proc), adapter, atol=1e-5) and diff < 1e-5  # ...and merges exactly
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in language_linears(merged))


def test_lora_kd_checkpoint_is_plain_and_projector_trains_alone(setup, tmp_path):
    out, manifest = recover_checkpoint(setup / "student", setup / "teacher", setup / "train", tmp_path / "lora",
                                       config(tmp_path, method="lora-kd", lora_rank=4, steps=4))
    assert not list(out.glob("adapter_*")) and set(state_dict(out)) == set(state_dict(setup / "student"))
    assert manifest["steps"][-1]["lora_merge_max_abs_diff"] < 1e-4
    load_model(out)  # plain vlmslim checkpoint: no peft involved
    out, _ = recover_checkpoint(setup / "student", setup / "teacher", setup / "train", tmp_path / "proj",
                                config(tmp_path, method="projector", steps=2))
    s, r = state_dict(setup / "student"), state_dict(out)
    changed = {k for k in s if not torch.equal(s[k], r[k])}
    assert changed and all("multi_modal_projector." in k for k in changed)


@pytest.mark.slow  # two recovery runs (~2 s); the kd test covers the default loop
def test_kill_and_resume_gives_the_same_weights(setup, tmp_path, monkeypatch):
    cfg = config(tmp_path, steps=6, save_every=2)
    straight, _ = recover_checkpoint(setup / "student", setup / "teacher", setup / "train", tmp_path / "a", cfg)

    import vlmslim.recovery.step as step_module

    real = step_module.step_indices

    def killed_at_5(n, batch_size, seed, step):
        if step == 5:
            raise KeyboardInterrupt  # a kill after the state of step 4 was saved
        return real(n, batch_size, seed, step)

    monkeypatch.setattr(step_module, "step_indices", killed_at_5)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        recover_checkpoint(setup / "student", setup / "teacher", setup / "train", out, cfg)
    assert not out.exists() and (resume_dir(out) / "state.pt").is_file()
    monkeypatch.setattr(step_module, "step_indices", real)
    _, manifest = recover_checkpoint(setup / "student", setup / "teacher", setup / "train", out, cfg)
    assert manifest["steps"][-1]["resumed_from_step"] == 4 and not resume_dir(out).exists()
    a, b = state_dict(straight), state_dict(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "loss.jsonl").read_text() == (out / "loss.jsonl").read_text()  # same losses, step by step


def test_a_resume_state_of_other_options_is_refused(setup, tmp_path, monkeypatch):
    import vlmslim.recovery.step as step_module

    real = step_module.step_indices

    def killed_at_3(n, batch_size, seed, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(n, batch_size, seed, step)

    monkeypatch.setattr(step_module, "step_indices", killed_at_3)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        recover_checkpoint(setup / "student", setup / "teacher", setup / "train", out,
                           config(tmp_path, steps=6, save_every=2))
    monkeypatch.setattr(step_module, "step_indices", real)
    with pytest.raises(RecoveryError, match="differs in: config"):
        recover_checkpoint(setup / "student", setup / "teacher", setup / "train", out,
                           config(tmp_path, steps=6, save_every=2, lr=1e-2))
    assert not out.exists()


# ---------------------------------------------------------------- overlap by image content


def relabel(src, dst, prefix: str, fmt: str = "BMP"):
    """A copy of dataset `src` with new sample ids and image files re-encoded as `fmt`: same pixels."""
    (dst / "images").mkdir(parents=True)
    rows = []
    for i, line in enumerate((src / "samples.jsonl").read_text().splitlines()):
        r = json.loads(line)
        with Image.open(src / r["image"]) as im:
            name = f"images/{prefix}{i}.{fmt.lower()}"
            im.convert("RGB").save(dst / name, format=fmt)
        rows.append({**r, "id": f"{prefix}-{i}", "image": name})
    (dst / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (dst / "meta.json").write_text(json.dumps({"dataset": "relabelled",
                                               "samples_sha256": sha256_file(dst / "samples.jsonl")}))
    return dst


def test_content_hash_ignores_ids_and_encoding(setup, tmp_path):
    copy = relabel(setup / "train", tmp_path / "copy", "other")
    assert dataset_image_hashes(load_data(copy)) == dataset_image_hashes(load_data(setup / "train"))
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    other = img.copy()
    other.putpixel((7, 7), (1, 2, 4))
    assert image_content_hash(img) != image_content_hash(other)


def test_bench_refuses_data_the_recovery_trained_on(recovered, setup, tmp_path):
    out, manifest = recovered
    assert len(manifest["steps"][-1]["trained_on"]["image_hashes"]) == 16
    copy = relabel(setup / "train", tmp_path / "copy", "renamed", fmt="PNG")
    with pytest.raises(DataError, match="16 of the 16 images"):
        check_disjoint(load_data(copy), read_manifest(out))
    check_disjoint(load_data(setup / "eval"), read_manifest(out))  # another seed: disjoint
    r = run("bench", out, "--data", copy, "--out", tmp_path / "res", "--no-bertscore", "--no-energy")
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "trained on" in r.output, r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "res").exists()


def test_recover_refuses_heldout_overlap(setup, tmp_path):
    held = relabel(setup / "train", tmp_path / "held", "eval")
    with pytest.raises(RecoveryError, match="16 images of the held-out set"):
        recover_checkpoint(setup / "student", setup / "teacher", setup / "train", tmp_path / "o",
                           config(tmp_path, heldout=(str(held),)))
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- bad inputs: one line, nothing written


@pytest.fixture(scope="module")
def bad_sources(setup):
    root = setup / "bad"
    idefics, iproc = tiny_model("idefics3")
    save_checkpoint(idefics, iproc, root / "idefics3", new_manifest("tiny-idefics3", idefics.config))
    wide, wproc = tiny_llava(words=BASE_WORDS + [f"w{i}" for i in range(80)])  # vocab 192, not 128
    save_checkpoint(wide, wproc, root / "vocab192", new_manifest("tiny-wide", wide.config))
    shutil.copytree(setup / "student", root / "quantized")
    cfg = json.loads((root / "quantized" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (root / "quantized" / "config.json").write_text(json.dumps(cfg))
    (root / "empty").mkdir()
    (root / "empty" / "samples.jsonl").write_text("")
    (root / "empty" / "meta.json").write_text(json.dumps({"samples_sha256": sha256_file(root / "empty" / "samples.jsonl")}))
    return root


@pytest.mark.parametrize("student, teacher, data, extra, message", [
    ("student", "bad/idefics3", "train", [], "is a llava model, the teacher"),
    ("student", "bad/vocab192", "train", [], "vocabulary has 128 entries, the teacher's 192"),
    ("bad/quantized", "teacher", "train", [], "quantized checkpoint; recover the 16-bit checkpoint"),
    ("student", "teacher", "bad/empty", [], "has no samples"),
    ("student", "teacher", "nonexistent", [], "dataset directory not found"),
    ("student", "teacher", "train", ["--steps", "0"], "--steps must be an integer >= 1"),
    ("student", "teacher", "train", ["--heldout", "{root}/train"], "held-out set"),
])
def test_cli_bad_inputs_fail_in_one_line(setup, bad_sources, tmp_path, monkeypatch, student, teacher, data, extra,
                                         message):
    monkeypatch.setenv("VLMSLIM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    r = run("recover", setup / student, "--teacher", setup / teacher, "--data", setup / data, "--out", out,
            "--steps", "2", *[e.format(root=setup) for e in extra])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and message in r.output, r.output
    assert r.output.count("\n") == 1
    assert not list(tmp_path.glob("out*"))


def test_cli_recovers_and_reports(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMSLIM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    r = run("recover", setup / "student", "--teacher", setup / "teacher", "--data", setup / "train", "--out", out,
            "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--max-new-tokens", "4", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "kd 3 steps; KD loss" in r.output and (tmp_path / "cache" / "teacher-targets").is_dir()
    step = read_manifest(out)["steps"][-1]
    assert step["params"]["lr"] == 1e-3 and step["params"]["max_new_tokens"] == 4
    r = run("recover", setup / "student", "--teacher", setup / "teacher", "--data", setup / "train", "--out", out)
    assert r.exit_code == 1 and "already exists" in r.output


@pytest.mark.slow
def test_gpu_study_runs_on_a_tiny_config_on_cpu(tmp_path):
    """studies/recovery_gpu.py (the lead's H200 run) on its tiny config: both methods step and report."""
    from studies.recovery_gpu import main as gpu_study

    out = tmp_path / "gpu.json"
    r = CliRunner().invoke(gpu_study, ["--smoke", "--out", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads(out.read_text())
    assert [x["method"] for x in record["results"]] == ["kd", "lora-kd"]
    kd, lora = record["results"]
    assert kd["tokens_per_s"] > 0 and len(kd["step_s"]) == 2 and all(torch.isfinite(torch.tensor(kd["losses"])))
    assert lora["trainable_params"] < kd["trainable_params"] < kd["student_params"] < record["teacher_params"]


def test_gpu_study_defaults_fit_the_7b_shape():
    """The study's default batch fits LLaVA-1.5-7B's 576 image tokens (checked on an empty skeleton)."""
    from studies.recovery_gpu import main as gpu_study
    from studies.recovery_gpu import make_batch

    from vlmslim.loading import empty_model, load_arch_config

    defaults = {p.name: p.default for p in gpu_study.params}
    skeleton = empty_model(load_arch_config(defaults["arch"]))
    batch = make_batch(skeleton, 1, defaults["seq_len"], defaults["answer_tokens"], seed=0)
    assert batch.inputs["input_ids"].shape == (1, 600) and batch.loss_mask.shape == (1, defaults["answer_tokens"])
