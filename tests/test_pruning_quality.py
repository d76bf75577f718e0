"""Pruning quality: Taylor importance on the teacher's own answers, non-uniform allocation under one global
budget, `--plan-only` (tiny offline models)."""

import copy

import pytest
import torch
from click.testing import CliRunner

from vlmslim import cli as cli_module
from vlmslim.checkpoint import save_checkpoint
from vlmslim.cli import cli
from vlmslim.errors import PruningError
from vlmslim.families import get_family
from vlmslim.loading import load_model
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.pruning import HEAD_IMPORTANCE, NEURON_IMPORTANCE, PruneConfig, prune, prune_checkpoint
from vlmslim.pruning.calibrate import (answer_loss, collect_taylor, load_calibration, masked_loss, mean_answer_loss,
                                       placeholder_token_ids, teacher_answers)
from vlmslim.pruning.glu import glu_weights
from vlmslim.pruning.importance import HeadStats, NeuronStats, outlier_ratio
from vlmslim.pruning.select import ALLOCATIONS, allocate, neuron_levels, unit_levels
from vlmslim.shapes import prune_glu, prune_heads
from vlmslim.testing import tiny_llava, tiny_model


def save_base(model, processor, path):
    save_checkpoint(model, processor, path, new_manifest("tiny", model.config))
    return path


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def teacher(model, proc, calib_dir, n=2, tokens=6):
    data = load_calibration(calib_dir)
    return teacher_answers(model, get_family(model), proc, data, data.samples[:n], max_new_tokens=tokens)


# ---------------------------------------------------------------- teacher answers + Taylor scores


@pytest.mark.parametrize("name", ["llava", "paligemma", "idefics3"])
def test_teacher_answers_are_greedy_and_the_loss_covers_only_them(name, calib_dir):
    model, proc = tiny_model(name)
    for b in teacher(model, proc, calib_dir):
        ids, labels = b.inputs["input_ids"], b.labels  # (1, T)
        n = ids.shape[1] - b.answer_tokens
        assert b.answer_tokens >= 1 and (labels[0, :n] == -100).all() and torch.equal(labels[0, n:], ids[0, n:])
        logits = model(**b.inputs, use_cache=False).logits[0].float()  # (T, V)
        logits[:, placeholder_token_ids(model.config)] = float("-inf")  # suppressed while generating
        # teacher forcing on a greedy answer: each answer token is the argmax at the position before it
        assert torch.equal(logits[n - 1:-1].argmax(-1), ids[0, n:])
        logits = model(**b.inputs, use_cache=False).logits[0].float()
        manual = torch.nn.functional.cross_entropy(logits[n - 1:-1], ids[0, n:])  # over the full vocabulary
        with torch.no_grad():
            assert float(answer_loss(model, b)) == pytest.approx(float(manual), rel=1e-5)


def test_teacher_never_answers_with_an_image_placeholder(calib_dir):
    # This random, sharpened model's greedy answer starts with the <image> token (id 4) when nothing stops
    # it; appended to the prompt, that token then fails the image-token count check of the forward pass.
    model, proc = tiny_llava(2, layers=2)
    model.lm_head.weight.data *= 10
    layer = model.model.language_model.layers[0].self_attn
    layer.o_proj.weight.data *= 4
    layer.v_proj.weight.data *= 4
    data = load_calibration(calib_dir)
    prompt = get_family(model).build_prompt(proc, "Provide a one-sentence caption for the provided image.")
    free = []
    for sample in data.samples[:2]:
        inputs = proc(images=[data.open_image(sample)], text=[prompt], return_tensors="pt")
        free += model.generate(**inputs, do_sample=False, max_new_tokens=4)[0, inputs["input_ids"].shape[1]:].tolist()
    assert 4 in free  # the unconstrained greedy answers do emit it
    for b in teacher(model, proc, calib_dir, tokens=4):
        assert 4 not in b.labels[0].tolist()
        assert torch.isfinite(answer_loss(model, b))


def test_masking_units_equals_cutting_them(calib_dir):
    model, proc = tiny_llava(layers=2)
    family = get_family(model)
    batches = teacher(model, proc, calib_dir, tokens=4)
    base = mean_answer_loss(model, batches)
    keep_q, keep_kv = torch.tensor([2, 3, 6, 7]), torch.tensor([1, 3])  # KV groups 1, 3 = query heads 2g, 2g+1
    head_mask = torch.zeros(8, 8)  # (H, hd) over the o_proj input
    head_mask[keep_q] = 1
    keep_n = torch.arange(0, 256, 3)
    glu_mask = torch.zeros(256)
    glu_mask[keep_n] = 1
    masked_heads = masked_loss(model, family, batches, 1, "heads", head_mask.flatten())
    masked_glu = masked_loss(model, family, batches, 0, "glu", glu_mask)
    assert mean_answer_loss(model, batches) == base  # the hooks are gone
    cut = copy.deepcopy(model)
    prune_heads(family, cut.model.language_model.layers[1].self_attn, keep_q, keep_kv, 8)
    assert masked_heads == pytest.approx(mean_answer_loss(cut, batches), rel=1e-6) and abs(masked_heads - base) > 1e-4
    cut = copy.deepcopy(model)
    prune_glu(family, cut.model.language_model.layers[0].mlp, keep_n)
    assert masked_glu == pytest.approx(mean_answer_loss(cut, batches), rel=1e-6) and abs(masked_glu - base) > 1e-4


def test_taylor_scores_equal_hand_computed_w_times_grad(calib_dir):
    model, proc = tiny_llava(layers=2)  # hidden 64, I 256, 8 query heads over 4 KV heads, head_dim 8
    family = get_family(model)
    batches = teacher(model, proc, calib_dir, n=2)
    glu, attn = collect_taylor(model, family, batches, neurons=True, heads=True)
    hd, n_q, n_kv = 8, 8, 4
    for i, layer in enumerate(family.decoder_layers(model)):
        mlp, sa = layer.mlp, layer.self_attn
        weights = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                   sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight, sa.o_proj.weight]
        neuron, head, group = torch.zeros(256), torch.zeros(n_q), torch.zeros(n_kv)
        for b in batches:  # the per-sample saliencies are summed
            with torch.enable_grad():
                for w in weights:
                    w.requires_grad_(True)
                grads = torch.autograd.grad(answer_loss(model, b), weights)
            s = [(w.detach() * g).abs() for w, g in zip(weights, grads)]
            gate, up, down, q, k, v, o = s
            neuron += gate.sum(1) + up.sum(1) + down.sum(0)  # gate row + up row + down column
            for h in range(n_q):
                rows = slice(h * hd, (h + 1) * hd)
                head += torch.nn.functional.one_hot(torch.tensor(h), n_q) * (q[rows].sum() + o[:, rows].sum())
            for g in range(n_kv):
                rows = slice(g * hd, (g + 1) * hd)
                q_rows = slice(g * 2 * hd, (g + 1) * 2 * hd)  # query heads 2g, 2g+1 read KV head g
                group[g] += q[q_rows].sum() + o[:, q_rows].sum() + k[rows].sum() + v[rows].sum()
        scores = NEURON_IMPORTANCE["taylor"].fn(glu_weights(family, mlp), NeuronStats(taylor=glu[i]))
        assert torch.allclose(scores, neuron, rtol=1e-4, atol=1e-9) and neuron.min() > 0
        head_scores = HEAD_IMPORTANCE["taylor"].fn(sa.o_proj.weight, hd, HeadStats(taylor=attn[i]))
        assert torch.allclose(head_scores.view(n_kv, 2).sum(1), group, rtol=1e-4)  # groups mode: exact per group
        # query mode ranks heads inside a group: q rows + o columns (+ the same share of the group's k/v)
        assert torch.allclose(head_scores.view(n_kv, 2).diff(dim=1).flatten(), head.view(n_kv, 2).diff(dim=1).flatten(),
                              rtol=1e-4, atol=1e-7)
    # the model is left as it was: no gradients, no requires_grad changes
    assert all(p.grad is None for p in model.parameters())


def test_taylor_prunes_end_to_end_and_records_the_teacher(tmp_path, llava, calib_dir):
    src = save_base(*llava, tmp_path / "base")
    r = run_cli("prune", src, "--out", tmp_path / "out", "--glu", "0.5", "--heads", "0.5", "--importance", "taylor",
                "--head-importance", "taylor", "--calibration", calib_dir, "--calibration-samples", "2",
                "--teacher-tokens", "4")
    assert r.exit_code == 0, r.output
    step = read_manifest(tmp_path / "out")["steps"][-1]
    assert step["criterion"] == {"neurons": "taylor", "heads": "taylor"} and step["reload_max_abs_diff"] == 0.0
    assert step["calibration"]["teacher_answers"]["max_new_tokens"] == 4
    assert 1 <= step["calibration"]["teacher_answers"]["mean_answer_tokens"] <= 4
    # Taylor keeps different neurons than the weight criterion
    _, maw_step = prune(tiny_model("llava")[0], llava[1], PruneConfig(glu=0.5))
    assert step["kept"]["mlp"][0]["kept"] == maw_step["kept"]["mlp"][0]["kept"] == 128
    assert step["kept"]["mlp"][0]["sha256"] != maw_step["kept"]["mlp"][0]["sha256"]


# ---------------------------------------------------------------- allocation (pure)


def test_allocation_keeps_the_budget_exactly_and_respects_the_cap():
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        L = int(torch.randint(2, 9, (1,), generator=gen))
        sizes = [int(s) * 64 for s in torch.randint(4, 20, (L,), generator=gen)]
        cap, round_to = 0.6 + 0.35 * float(torch.rand(1, generator=gen)), 32
        budget = sum(round(n * 0.5 / round_to) * round_to for n in sizes)  # uniform --glu 0.5's total
        for name in ("sensitivity", "owl"):
            scores = torch.rand(L, generator=gen, dtype=torch.float64) ** 3  # skewed, some near 0
            levels = [neuron_levels(n, round_to, cap) for n in sizes]
            kept = allocate(name, scores, sizes, levels, budget, cap)
            assert sum(kept) == budget, (trial, name, kept)
            assert all(k % round_to == 0 and n * (1 - cap) - 1e-9 <= k <= n for k, n in zip(kept, sizes))


def test_sensitivity_allocates_inversely_and_owl_follows_outliers():
    sizes, cap = [768] * 4, 0.9
    levels = [neuron_levels(768, 32, cap) for _ in sizes]
    delta = torch.tensor([0.6, 1e-4, 3e-6, 4e-4], dtype=torch.float64)
    kept = allocate("sensitivity", delta, sizes, levels, 640, cap)
    assert sum(kept) == 640 and kept[0] == max(kept) and kept[2] == min(kept) == 96  # 768 * 0.1 -> 96
    assert kept[3] >= kept[1] >= kept[2]
    # OWL: equal outlier ratios -> uniform; otherwise more outliers keep more, spread within +-lambda
    assert allocate("owl", torch.full((4,), 0.01, dtype=torch.float64), sizes, levels, 640, cap) == [160] * 4
    kept = allocate("owl", torch.tensor([0.0, 0.01, 0.02, 0.04], dtype=torch.float64), sizes, levels, 640, cap)
    assert sum(kept) == 640 and kept == sorted(kept) and kept[0] < kept[-1]
    assert max(abs(k / 768 - 160 / 768) for k in kept) <= 0.08 + 32 / 768  # lambda, plus one rounding step
    # heads: whole units, never below the cap
    kept = allocate("sensitivity", torch.tensor([1.0, 0.0, 0.5]), [4, 4, 4], [unit_levels(4, 0.75)] * 3, 6, 0.75)
    assert kept == [3, 1, 2]


def test_allocation_refusals():
    with pytest.raises(PruningError, match="raise --max-layer-ratio"):
        allocate("sensitivity", torch.ones(2), [256, 256], [neuron_levels(256, 64, 0.5)] * 2, 64, 0.5)
    with pytest.raises(ValueError, match="--max-layer-ratio 0.5 is below --glu 0.8"):
        PruneConfig(glu=0.8, allocation="sensitivity", max_layer_ratio=0.5)
    with pytest.raises(ValueError, match="--allocation must be one of owl, sensitivity, uniform"):
        PruneConfig(glu=0.5, allocation="flap")
    with pytest.raises(ValueError, match="--max-layer-ratio must be"):
        PruneConfig(glu=0.5, allocation="owl", max_layer_ratio=1.0)
    assert PruneConfig(glu=0.5, allocation="owl").missing_calibration_message().startswith("--allocation owl")
    assert cli_module.ALLOCATIONS == tuple(sorted(ALLOCATIONS))


def test_outlier_ratio_counts_wanda_scores_above_m_times_mean():
    w = torch.ones(2, 10)
    x = torch.ones(10)
    x[3] = 10.0  # one loud input channel: scores 10 vs 1, mean 38 / 20 = 1.9, threshold 9.5
    assert outlier_ratio(w, x, m=5.0) == pytest.approx(0.1)  # column 3: 2 of 20 scores
    x[3] = 9.0  # mean 1.8, threshold 9.0: not above
    assert outlier_ratio(w, x, m=5.0) == 0.0


# ---------------------------------------------------------------- non-uniform pruning end to end


def _crafted(calib_dir, tmp_path):
    """Tiny LLaVA whose layer 1 MLP and attention write nothing (down / o weights 0): pruning them costs 0.
    A sharper lm_head makes the teacher confident, so pruning layer 0 raises the loss (checked below)."""
    model, proc = tiny_llava(2, layers=2)
    model.lm_head.weight.data *= 10
    layer = model.model.language_model.layers[1]
    layer.mlp.down_proj.weight.data.zero_()
    layer.self_attn.o_proj.weight.data.zero_()
    return save_base(model, proc, tmp_path / "base")


def test_sensitivity_moves_units_to_the_sensitive_layer_at_equal_params(tmp_path, calib_dir):
    src = _crafted(calib_dir, tmp_path)
    common = dict(glu=0.5, heads=0.5, round_to=32, calibration=str(calib_dir), calibration_samples=2,
                  teacher_tokens=4)
    _, uni = prune_checkpoint(src, tmp_path / "uniform", PruneConfig(**common))
    out, sens = prune_checkpoint(src, tmp_path / "sens", PruneConfig(**common, allocation="sensitivity",
                                                                     max_layer_ratio=0.75))
    plan = sens["steps"][-1]["plan"]
    # uniform: 128 of 256 neurons and 2 of 4 KV groups per layer; the zeroed layer 1 costs nothing, so it
    # goes down to the cap (256 * 0.25 = 64 neurons, 1 group) and layer 0 gets the rest
    assert plan["glu"]["kept"] == [192, 64] and plan["glu"]["budget"] == 256 == plan["glu"]["kept_total"]
    assert abs(plan["glu"]["layer_scores"][1]) < 1e-7 and plan["glu"]["layer_scores"][0] > 1e-3
    assert plan["heads"]["kept"] == [3, 1] and plan["heads"]["budget"] == 4
    assert abs(plan["heads"]["layer_scores"][1]) < 1e-7 and plan["heads"]["layer_scores"][0] > 1e-3
    layers = sens["architecture"]["text_layers"]
    assert [(x["intermediate_size"], x["num_attention_heads"], x["num_key_value_heads"]) for x in layers] == [
        (192, 6, 3), (64, 2, 1)]
    assert sens["steps"][-1]["params_after"] == uni["steps"][-1]["params_after"]  # equal parameter count
    assert sens["stock_loadable"] is False and sens["steps"][-1]["reload_max_abs_diff"] == 0.0
    reloaded, _ = load_model(out)
    assert reloaded.model.language_model.layers[0].mlp.gate_proj.out_features == 192
    assert reloaded.model.language_model.layers[1].self_attn.k_proj.out_features == 8
    r = run_cli("inspect", out)
    assert r.exit_code == 0, r.output
    assert "layer 0: intermediate_size=192, num_attention_heads=6" in r.output
    assert "layer 1: intermediate_size=64, num_attention_heads=2" in r.output
    assert "intermediate_size=64..192 (per layer)" in r.output


def test_owl_allocation_end_to_end(tmp_path, llava, calib_dir):
    model, proc = llava
    cfg = PruneConfig(glu=0.5, heads=0.5, round_to=32, allocation="owl", calibration=str(calib_dir),
                      calibration_samples=2)
    _, step = prune(model, proc, cfg)
    plan = step["plan"]
    assert plan["glu"]["kept_total"] == 256 and plan["heads"]["kept_total"] == 4
    assert plan["glu"]["layer_score"] == "outlier ratio" and len(plan["glu"]["layer_scores"]) == 2
    widths = [m["kept"] for m in step["kept"]["mlp"]]
    assert widths == plan["glu"]["kept"] and sum(widths) == 256


def test_query_mode_allocation_moves_query_heads_and_keeps_every_kv_head(tmp_path, calib_dir):
    model, proc = tiny_llava(layers=2, heads=8, kv_heads=2)  # 4 query heads per KV group: 4 slots per layer
    src = save_base(model, proc, tmp_path / "base")
    cfg = PruneConfig(heads=0.5, head_mode="query", allocation="sensitivity", max_layer_ratio=0.75,
                      calibration=str(calib_dir), calibration_samples=2, teacher_tokens=3)
    out, manifest = prune_checkpoint(src, tmp_path / "out", cfg)
    plan = manifest["steps"][-1]["plan"]["heads"]
    assert plan["unit"] == "query_head_per_group" and plan["budget"] == 4 == sum(plan["kept"])
    layers = manifest["architecture"]["text_layers"]
    assert [x["num_attention_heads"] for x in layers] == [2 * k for k in plan["kept"]]
    assert [x["num_key_value_heads"] for x in layers] == [2, 2]
    kept = manifest["steps"][-1]["kept"]["attention"]
    for a in kept:  # the same number of query heads in each group
        groups = [q // 4 for q in a["q_heads"]]
        assert groups.count(0) == groups.count(1)
    assert manifest["steps"][-1]["reload_max_abs_diff"] == 0.0


# ---------------------------------------------------------------- --plan-only


def test_plan_only_prints_the_plan_and_writes_nothing(tmp_path, llava, calib_dir):
    src = save_base(*llava, tmp_path / "base")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_cli("prune", src, "--glu", "0.5", "--heads", "0.5", "--plan-only")  # no --out needed
    assert r.exit_code == 0, r.output
    assert "plan: allocation uniform" in r.output and "128/256" in r.output and "4/2 of 8/4" in r.output
    assert "GLU neurons: keep 256 of 512 (50.0% removed; budget 256)" in r.output
    # parameters: 2 layers x (3 * 64 * 128 MLP + 64 * 8 * (2 * 4 + 2 * 2) attention) removed from the language model
    m = llava[0]
    lm = sum(p.numel() for n, p in m.named_parameters() if n.startswith("model.language_model"))
    after = lm - 2 * (3 * 64 * 128 + 64 * 8 * 12)
    assert f"{lm:,}" in r.output and f"{after:,}" in r.output
    assert "nothing was written" in r.output
    out = tmp_path / "out"
    r = run_cli("prune", src, "--out", out, "--glu", "0.5", "--allocation", "sensitivity", "--round-to", "32",
                "--calibration", calib_dir, "--calibration-samples", "2", "--teacher-tokens", "3", "--plan-only")
    assert r.exit_code == 0, r.output
    assert "allocation sensitivity, max layer ratio 0.9" in r.output and "GLU loss increase" in r.output
    assert "budget 256" in r.output
    assert not out.exists() and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    r = run_cli("prune", src, "--glu", "0.5")
    assert r.exit_code != 0 and "Missing option '--out'" in r.output and r.output.count("\n") == 1


@pytest.mark.slow
def test_taylor_cost_study_runs_on_a_tiny_config_on_cpu(tmp_path):
    """studies/taylor_7b.py (the 7B-shape Taylor cost) on its tiny config: it times samples and reports memory."""
    import json

    from studies.taylor_7b import main as taylor_study

    out = tmp_path / "taylor.json"
    r = CliRunner().invoke(taylor_study, ["--smoke", "--out", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["seq_len"] == 40 and len(record["s_per_sample"]) == 2
    assert all(t > 0 for t in record["s_per_sample"]) and record["rss_peak_during_gib"] >= record["rss_before_gib"] > 0
