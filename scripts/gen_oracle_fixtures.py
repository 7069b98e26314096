#!/usr/bin/env python3
"""Generate the oracle fixtures that tests/distill.rs compares the Rust losses to.

Every loss is written here from its formula, independently of the Rust code,
in float64 PyTorch and in the direct (materialised) form. Inputs are rounded
to float32 first, so the Rust side, which reads them as f32, computes from
exactly the values used here. Run from the repository root:

    .venv/bin/python scripts/gen_oracle_fixtures.py

(`scripts/setup --python` creates .venv with PyTorch 2.13.0.) The output is
one JSON file per area in tests/fixtures/oracle/. A tensor is stored as
{"shape": [...], "dtype": "f64" | "i64", "data": [flat row-major values]},
and a scalar loss as a plain number.
"""

import json
import math
import pathlib

import torch

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "oracle"

# Constants of the method: NCE's ε, CRCD's δ, the clamp of n(x), KD's T.
NCE_EPS = 1e-7
DELTA = 1e-6
MIN_NORM = 1e-12
COSINE_EPS = 1e-8
COSINE_SCALE = 10.0


def as_f32(x):
    """Round to float32 and back, so that Rust's f32 inputs equal ours."""
    return x.float().double()


def encode(x):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dim() == 0:
            return x.item()
        if x.dtype in (torch.int64, torch.int32):
            return {"shape": list(x.shape), "dtype": "i64", "data": x.reshape(-1).tolist()}
        return {"shape": list(x.shape), "dtype": "f64", "data": x.double().reshape(-1).tolist()}
    if isinstance(x, dict):
        return {k: encode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [encode(v) for v in x]
    return x


def write(name, payload):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(encode(payload), separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(OUT.parent.parent.parent)} ({path.stat().st_size} bytes)")


def unit(x):
    """n(x) = x / max(‖x‖, 1e-12) along the last dimension."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)


# ---------------------------------------------------------------- the losses


def cross_entropy(logits, labels):
    log_p = logits - logits.logsumexp(dim=1, keepdim=True)
    return -log_p[torch.arange(len(labels)), labels].mean()


def kd(logits_s, logits_t, temperature):
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, mean over the batch."""
    log_q = logits_s / temperature - (logits_s / temperature).logsumexp(dim=1, keepdim=True)
    log_p = logits_t / temperature - (logits_t / temperature).logsumexp(dim=1, keepdim=True)
    kl_rows = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return temperature**2 * kl_rows.mean()


def nce(x, n_data):
    """The NCE objective of scores x (R, K+1), column 0 positive, noise P_n = 1/N."""
    rows, cols = x.shape
    k = cols - 1
    mass = k / n_data
    positive, negatives = x[:, 0], x[:, 1:]
    log_d1 = torch.log(positive / (positive + mass + NCE_EPS))
    log_d0 = torch.log(mass / (negatives + mass + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / rows


def crd_scores(embed, bank, contrast):
    """s[i,k] = ⟨bank[C[i,k]], e_i⟩."""
    return (bank[contrast] * embed[:, None, :]).sum(dim=-1)


def crcd_scores(embed, bank, rows, contrast):
    """s[i,j,k] = ⟨n(w_ik − a_j + δ), n(e_i − a_j + δ)⟩, materialised."""
    anchors = bank[rows]  # (B, m): a_j
    cands = bank[contrast]  # (B, K+1, m): w_ik
    u = cands[:, None, :, :] - anchors[None, :, None, :] + DELTA  # (B, B, K+1, m)
    v = embed[:, None, :] - anchors[None, :, :] + DELTA  # (B, B, m)
    return (unit(u) * unit(v)[:, :, None, :]).sum(dim=-1)  # (B, B, K+1)


def side_loss(scores, temperature, z, n_data):
    """NCE of exp(s/T)/Z over rows of K+1; Z = mean(exp(s/T))·N when unset."""
    expo = torch.exp(scores / temperature)
    if z is None:
        z = expo.detach().mean().item() * n_data
    return nce(expo.reshape(-1, scores.shape[-1]) / z, n_data), z


def bank_update(bank, rows, embed, momentum):
    new = bank.clone()
    new[rows] = unit(momentum * bank[rows] + (1 - momentum) * embed.detach())
    return new


def linear_head(x, weight, bias):
    return unit(x @ weight.T + bias)


def nonlinear_head(x, layers):
    (w0, b0), (w2, b2), (w4, b4) = layers
    h = torch.relu(x @ w0.T + b0)
    h = torch.relu(h @ w2.T + b2)
    return unit(h @ w4.T + b4)


def gradient_element(feat, weight, bias, labels, create_graph):
    """∂ CE(f Wᵀ + b, y) / ∂ f by autograd, the batch-mean cross-entropy."""
    if not feat.requires_grad:
        feat = feat.detach().requires_grad_(True)
    loss = cross_entropy(feat @ weight.T + bias, labels)
    (grad,) = torch.autograd.grad(loss, feat, create_graph=create_graph)
    return grad


def closed_form_gradient(feat, weight, bias, labels):
    probs = torch.softmax(feat @ weight.T + bias, dim=1)
    onehot = torch.nn.functional.one_hot(labels, weight.shape[0]).double()
    return (probs - onehot) @ weight / feat.shape[0]


def cosine_loss(g_s, g_t):
    norms = g_s.norm(dim=1).clamp_min(COSINE_EPS) * g_t.norm(dim=1).clamp_min(COSINE_EPS)
    return COSINE_SCALE * (1 - ((g_s * g_t).sum(dim=1) / norms).mean())


def schedule(kind, t, step_point, alpha0, factor):
    """(w_task, w_mimic) at progress t."""
    if t < 1 / 3:
        linear = 1.0
    elif t < 2 / 3:
        linear = 2.0 - 3.0 * t
    else:
        linear = 0.0
    if kind == "constant":
        return 1.0, 1.0
    if kind == "step":
        return 1.0, 1.0 if t < step_point else 0.0
    if kind == "linear_decrease":
        return 1.0 - linear, linear
    if kind == "linear_decrease2":
        return 1.0, linear
    if kind == "exp_increase":
        return 1.0, alpha0 * factor ** math.floor(3 * t)
    raise ValueError(kind)


# ---------------------------------------------------------------- the inputs


def random_bank(gen, n_data, dim, near_duplicates):
    """Unit rows; each (target, source, distance) makes row target a copy of
    row source moved by about `distance`."""
    bank = unit(torch.randn(n_data, dim, generator=gen))
    for target, source, distance in near_duplicates:
        bank[target] = unit(bank[source] + distance * torch.randn(dim, generator=gen))
    return as_f32(bank)


def contrast_indices(gen, rows, labels, k):
    """Column 0 the sample itself, then k rows: two other batch rows of other
    classes (degenerate pairs in CRCD), two near-duplicates (rows 30..33),
    and the rest drawn from other classes."""
    n_data = len(labels)
    out = []
    for i, row in enumerate(rows.tolist()):
        others = [r for r in rows.tolist() if labels[r] != labels[row]][:2]
        near = [30 + (i % 4), 30 + ((i + 1) % 4)]
        pool = [r for r in range(n_data) if labels[r] != labels[row] and r not in others + near]
        pick = torch.randperm(len(pool), generator=gen)[: k - len(others) - len(near)]
        out.append([row] + others + near + [pool[p] for p in pick.tolist()])
    return torch.tensor(out, dtype=torch.int64)


def branch_case(gen, objective, head, z_preset):
    """One contrastive branch: heads, banks, Z, loss, gradients, updated banks."""
    b, n_data, m, d_s, d_t, k, classes = 6, 40, 8, 12, 10, 7, 5
    temperature, momentum = (0.05, 0.5) if objective == "crcd" else (0.07, 0.5)
    labels = torch.arange(n_data) % classes
    rows = torch.tensor([3, 17, 8, 26, 12, 1])
    near = [(30, 3, 1e-2), (31, 17, 1e-3), (32, 8, 1e-4), (33, 26, 1e-3)]
    f_s = as_f32(torch.randn(b, d_s, generator=gen)).requires_grad_(True)
    f_t = as_f32(torch.randn(b, d_t, generator=gen))
    bank_s = random_bank(gen, n_data, m, near)
    bank_t = random_bank(gen, n_data, m, near)
    contrast = contrast_indices(gen, rows, labels, k)

    def weights(d_in, d_out):
        bound = 1 / math.sqrt(d_in)
        w = as_f32((torch.rand(d_out, d_in, generator=gen) * 2 - 1) * bound)
        bias = as_f32((torch.rand(d_out, generator=gen) * 2 - 1) * bound)
        return w.requires_grad_(True), bias.requires_grad_(True)

    if head == "linear":
        heads = {"s": [weights(d_s, m)], "t": [weights(d_t, m)]}
        e_s = linear_head(f_s, *heads["s"][0])
        e_t = linear_head(f_t, *heads["t"][0])
    else:
        heads = {
            "s": [weights(d_s, d_s), weights(d_s, m), weights(m, m)],
            "t": [weights(d_t, d_t), weights(d_t, m), weights(m, m)],
        }
        e_s = nonlinear_head(f_s, heads["s"])
        e_t = nonlinear_head(f_t, heads["t"])

    z_s, z_t = (2.5, 3.5) if z_preset else (None, None)
    if objective == "crcd":
        s_s = crcd_scores(e_s, bank_t, rows, contrast)
        s_t = crcd_scores(e_t, bank_s, rows, contrast)
    else:
        s_s = crd_scores(e_s, bank_t, contrast)
        s_t = crd_scores(e_t, bank_s, contrast)
    loss_s, z_s = side_loss(s_s, temperature, z_s, n_data)
    loss_t, z_t = side_loss(s_t, temperature, z_t, n_data)
    loss = loss_s + loss_t
    head_s_weight = heads["s"][0][0]
    head_t_weight = heads["t"][0][0]
    grad_f_s, grad_head_s, grad_head_t = torch.autograd.grad(
        loss, [f_s, head_s_weight, head_t_weight]
    )
    layer_names = ["linear"] if head == "linear" else ["linear.0", "linear.2", "linear.4"]
    head_vars = {}
    for side in ("s", "t"):
        for name, (w, bias) in zip(layer_names, heads[side]):
            head_vars[f"embed_{side}.{name}.weight"] = w
            head_vars[f"embed_{side}.{name}.bias"] = bias
    return {
        "objective": objective,
        "head": head,
        "feat_dim": m,
        "nce_k": k,
        "nce_t": temperature,
        "nce_mu": momentum,
        "n_data": n_data,
        "f_s": f_s,
        "f_t": f_t,
        "head_vars": head_vars,
        "memory_s": bank_s,
        "memory_t": bank_t,
        "rows": rows,
        "contrast": contrast,
        "z_s_in": z_s if z_preset else None,
        "z_t_in": z_t if z_preset else None,
        "loss": loss,
        "loss_s": loss_s,
        "loss_t": loss_t,
        "z_s": z_s,
        "z_t": z_t,
        "memory_s_after": bank_update(bank_s, rows, e_s, momentum),
        "memory_t_after": bank_update(bank_t, rows, e_t, momentum),
        "grad_f_s": grad_f_s,
        "grad_head_s_weight": grad_head_s,
        "grad_head_t_weight": grad_head_t,
        "scores_s": s_s,
    }


def gradient_case(gen, loss_kind):
    """CRCD's gradient element: g_s, g_t and a loss on them, with the
    second-order gradients into the student's feature and classifier."""
    b, n_data, m, classes, k = 6, 40, 8, 5, 7
    d_s, d_t = (12, 12) if loss_kind == "cosine" else (12, 10)
    temperature, momentum = 0.05, 0.5
    labels_all = torch.arange(n_data) % classes
    rows = torch.tensor([3, 17, 8, 26, 12, 1])
    labels = labels_all[rows]
    near = [(30, 3, 1e-2), (31, 17, 1e-3), (32, 8, 1e-4), (33, 26, 1e-3)]
    f_s = as_f32(torch.randn(b, d_s, generator=gen)).requires_grad_(True)
    w_s = as_f32(torch.randn(classes, d_s, generator=gen) * 0.5).requires_grad_(True)
    b_s = as_f32(torch.randn(classes, generator=gen) * 0.1).requires_grad_(True)
    f_t = as_f32(torch.randn(b, d_t, generator=gen))
    w_t = as_f32(torch.randn(classes, d_t, generator=gen) * 0.5)
    b_t = as_f32(torch.randn(classes, generator=gen) * 0.1)
    # The oracle's element is autograd with create_graph; the closed form
    # must agree with it.
    g_s = gradient_element(f_s, w_s, b_s, labels, create_graph=True)
    g_t = gradient_element(f_t, w_t, b_t, labels, create_graph=False).detach()
    closed = closed_form_gradient(f_s, w_s, b_s, labels)
    assert torch.allclose(closed, g_s, rtol=1e-12, atol=1e-15)

    case = {
        "loss_kind": loss_kind,
        "f_s": f_s,
        "w_s": w_s,
        "b_s": b_s,
        "f_t": f_t,
        "w_t": w_t,
        "b_t": b_t,
        "labels": labels,
        "g_s": g_s,
        "g_t": g_t,
    }
    if loss_kind == "cosine":
        loss = cosine_loss(g_s, g_t)
    else:
        bank_s = random_bank(gen, n_data, m, near)
        bank_t = random_bank(gen, n_data, m, near)
        contrast = contrast_indices(gen, rows, labels_all, k)
        bound_s, bound_t = 1 / math.sqrt(d_s), 1 / math.sqrt(d_t)
        hw_s = as_f32((torch.rand(m, d_s, generator=gen) * 2 - 1) * bound_s)
        hb_s = as_f32((torch.rand(m, generator=gen) * 2 - 1) * bound_s)
        hw_t = as_f32((torch.rand(m, d_t, generator=gen) * 2 - 1) * bound_t)
        hb_t = as_f32((torch.rand(m, generator=gen) * 2 - 1) * bound_t)
        e_s = linear_head(g_s, hw_s, hb_s)
        e_t = linear_head(g_t, hw_t, hb_t)
        if loss_kind == "crcd":
            s_s = crcd_scores(e_s, bank_t, rows, contrast)
            s_t = crcd_scores(e_t, bank_s, rows, contrast)
        else:
            s_s = crd_scores(e_s, bank_t, contrast)
            s_t = crd_scores(e_t, bank_s, contrast)
        loss_s, z_s = side_loss(s_s, temperature, None, n_data)
        loss_t, z_t = side_loss(s_t, temperature, None, n_data)
        loss = loss_s + loss_t
        case.update(
            {
                "feat_dim": m,
                "nce_k": k,
                "nce_t": temperature,
                "nce_mu": momentum,
                "n_data": n_data,
                "rows": rows,
                "contrast": contrast,
                "memory_s": bank_s,
                "memory_t": bank_t,
                "head_vars": {
                    "embed_s.linear.weight": hw_s,
                    "embed_s.linear.bias": hb_s,
                    "embed_t.linear.weight": hw_t,
                    "embed_t.linear.bias": hb_t,
                },
                "z_s": z_s,
                "z_t": z_t,
            }
        )
    grad_f_s, grad_w_s, grad_b_s = torch.autograd.grad(loss, [f_s, w_s, b_s])
    case.update({"loss": loss, "grad_f_s": grad_f_s, "grad_w_s": grad_w_s, "grad_b_s": grad_b_s})
    return case


def main():
    gen = torch.Generator().manual_seed(20210331)

    logits_s = as_f32(torch.randn(8, 10, generator=gen) * 3)
    logits_t = as_f32(torch.randn(8, 10, generator=gen) * 3)
    labels = torch.randint(0, 10, (8,), generator=gen)
    write(
        "logits",
        {
            "logits_s": logits_s,
            "logits_t": logits_t,
            "labels": labels,
            "kd_t": 4.0,
            "ce": cross_entropy(logits_s, labels),
            "kd": kd(logits_s, logits_t, 4.0),
        },
    )

    # Scores shaped like exp(s/T)/Z: positive, spread over several decades.
    x = as_f32(torch.exp(torch.randn(12, 9, generator=gen) * 3) * 1e-3)
    write("nce", {"x": x, "n_data": 50, "loss": nce(x, 50)})

    # Bank update and Z initialisation on their own.
    bank = random_bank(gen, 20, 6, [])
    rows = torch.tensor([4, 0, 13])
    embed = as_f32(unit(torch.randn(3, 6, generator=gen)))
    scores = as_f32(torch.rand(5, 4, generator=gen) * 2 - 1)
    write(
        "memory",
        {
            "bank": bank,
            "rows": rows,
            "embed": embed,
            "momentum": 0.5,
            "bank_after": bank_update(bank, rows, embed, 0.5),
            "scores": scores,
            "nce_t": 0.07,
            "n_data": 20,
            "z": torch.exp(scores / 0.07).mean().item() * 20,
        },
    )

    feat = as_f32(torch.randn(5, 7, generator=gen))
    weight = as_f32(torch.randn(4, 7, generator=gen))
    bias = as_f32(torch.randn(4, generator=gen))
    grad_labels = torch.tensor([0, 3, 1, 3, 2])
    write(
        "gradient_element",
        {
            "feat": feat,
            "weight": weight,
            "bias": bias,
            "labels": grad_labels,
            "grad": gradient_element(feat, weight, bias, grad_labels, create_graph=False),
        },
    )

    write(
        "branches",
        {
            "crd_nonlinear_first_batch": branch_case(gen, "crd", "nonlinear", z_preset=False),
            "crd_linear_preset_z": branch_case(gen, "crd", "linear", z_preset=True),
            "crcd_linear_first_batch": branch_case(gen, "crcd", "linear", z_preset=False),
            "crcd_nonlinear_preset_z": branch_case(gen, "crcd", "nonlinear", z_preset=True),
        },
    )

    write(
        "gradient_losses",
        {kind: gradient_case(gen, kind) for kind in ("crcd", "crd", "cosine")},
    )

    # Progress as iteration / total, so both sides compute the same double.
    points = [(0, 300), (99, 300), (100, 300), (150, 300), (199, 300), (200, 300),
              (287, 300), (288, 300), (299, 300), (300, 300), (1, 2), (49, 100)]
    rows_out = []
    for kind in ("constant", "step", "linear_decrease", "linear_decrease2", "exp_increase"):
        # The step point too is a ratio, because a JSON float may be read back
        # one ulp away, which would move the step's discontinuity.
        for step_num, step_den in ((24, 25), (1, 2)):
            for it, total in points:
                task, mimic = schedule(kind, it / total, step_num / step_den, 0.1, 10.0)
                rows_out.append({"kind": kind, "iteration": it, "total": total,
                                 "step_num": step_num, "step_den": step_den,
                                 "exp_alpha0": 0.1, "exp_factor": 10.0,
                                 "task": task, "mimic": mimic})
    write("schedules", {"cases": rows_out})


if __name__ == "__main__":
    main()
