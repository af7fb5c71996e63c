"""Brute-force references, built the slow obvious way: loops over inputs and classes.

Everything here uses one ``torch.autograd.grad`` per (input, label) on a batch of one input,
in whatever dtype the model has (tests use float64). No closed forms, no vmap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    params = [p for _, p in trainable(model)]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
    )


def per_input_grad(model, forward, x, label) -> torch.Tensor:
    """Gradient of -log softmax(f(x))[label] for one input, flat."""
    logits = forward(model, x.unsqueeze(0))[0]
    return flat_grad(model, -F.log_softmax(logits, dim=-1)[label])


def probabilities(model, forward, inputs) -> torch.Tensor:
    with torch.no_grad():
        return forward(model, inputs).softmax(-1)


def dense_fisher(model, inputs, mode, targets=None, labels=None, forward=default_forward):
    """Dense F = 1/N sum_n F(x_n) with F(x) per the label mode.

    mode: 'exact' (sum over classes weighted by p), 'empirical' (targets), 'argmax', or 'labels'
    (given ``labels`` [K, N]: mean over the K labels per input).
    """
    model.eval()
    n = inputs.shape[0]
    probs = probabilities(model, forward, inputs)
    p_count = sum(p.numel() for _, p in trainable(model))
    fisher = torch.zeros(p_count, p_count, dtype=inputs.dtype)
    for i in range(n):
        if mode == "exact":
            weighted = [(c, probs[i, c]) for c in range(probs.shape[1])]
        elif mode == "empirical":
            weighted = [(int(targets[i]), 1.0)]
        elif mode == "argmax":
            weighted = [(int(probs[i].argmax()), 1.0)]
        elif mode == "labels":
            k = labels.shape[0]
            weighted = [(int(labels[s, i]), 1.0 / k) for s in range(k)]
        else:
            raise ValueError(mode)
        for label, w in weighted:
            g = per_input_grad(model, forward, inputs[i], label)
            fisher += w * torch.outer(g, g)
    return fisher / n


def batched_diagonal(model, inputs, targets, batch_size, forward=default_forward):
    """Mean over consecutive mini-batches of the squared gradient of the mini-batch-mean loss."""
    model.eval()
    total, count = 0, 0
    for start in range(0, inputs.shape[0], batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        g = flat_grad(model, F.cross_entropy(forward(model, x), y))
        total = total + g.square()
        count += 1
    return total / count


def layout_slices(model: nn.Module) -> dict[str, slice]:
    out, start = {}, 0
    for n, p in trainable(model):
        out[n] = slice(start, start + p.numel())
        start += p.numel()
    return out


def _patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Patches [T, C_in*kh*kw] of one input [C, H, W], extracted by explicit loops."""
    if conv.padding == "same":
        pads = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            pads += [d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2]
    else:
        ph, pw = (0, 0) if conv.padding == "valid" else conv.padding
        pads = [pw, pw, ph, ph]
    xp = F.pad(x, pads)
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    out_h = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(out_h):
        for j in range(out_w):
            patch = torch.empty(x.shape[0], kh, kw, dtype=x.dtype)
            for u in range(kh):
                for v in range(kw):
                    patch[:, u, v] = xp[:, i * sh + u * dh, j * sw + v * dw]
            rows.append(patch.reshape(-1))
    return torch.stack(rows)


def kfac_factors(model, layer, inputs, mode, targets=None, labels=None, forward=default_forward):
    """Brute-force (A, G) of one Linear or Conv2d layer, input by input and label by label.

    A = mean_n sum_t [a_nt; 1][a_nt; 1]^T (bias-augmented when the bias is trainable);
    G = mean_n (1/T) sum_t E_y[g_nt g_nt^T]; T = 1 for Linear.
    """
    model.eval()
    store = {}

    def hook(module, inp, out):
        store["a"] = inp[0].detach()
        store["out"] = out
        return out.clone()  # keep `out` intact if a later op works in place (ReLU(inplace=True))

    handle = layer.register_forward_hook(hook)
    probs = probabilities(model, forward, inputs)
    with_bias = layer.bias is not None and layer.bias.requires_grad
    A, G = 0, 0
    n = inputs.shape[0]
    try:
        for i in range(n):
            logits = forward(model, inputs[i : i + 1])[0]
            if isinstance(layer, nn.Conv2d):
                a = _patches(store["a"][0], layer)  # [T, d]
            else:
                a = store["a"]  # [1, d]
            t = a.shape[0]
            if with_bias:
                a = torch.cat([a, torch.ones(t, 1, dtype=a.dtype)], dim=1)
            A = A + a.T @ a
            if mode == "exact":
                weighted = [(c, probs[i, c]) for c in range(probs.shape[1])]
            elif mode == "empirical":
                weighted = [(int(targets[i]), 1.0)]
            elif mode == "labels":
                k = labels.shape[0]
                weighted = [(int(labels[s, i]), 1.0 / k) for s in range(k)]
            else:
                raise ValueError(mode)
            logp = F.log_softmax(logits, dim=-1)
            for label, w in weighted:
                (g,) = torch.autograd.grad(-logp[label], store["out"], retain_graph=True)
                g = g[0].reshape(g.shape[1], -1).T  # [T, d_out]
                G = G + w * (g.T @ g) / t
    finally:
        handle.remove()
    return A / n, G / n


def call_counts(model, forward, x) -> dict:
    counts = {}

    def hook(module, inp, out):
        counts[module] = counts.get(module, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        forward(model, x)
    for h in handles:
        h.remove()
    return counts


def kfac_dense(model, inputs, mode, targets=None, labels=None, forward=default_forward):
    """Dense KFAC reference: kron(G, A) blocks for Linear/Conv2d, exact diagonal elsewhere."""
    slices = layout_slices(model)
    exact = dense_fisher(model, inputs, mode, targets, labels, forward)
    p = exact.shape[0]
    out = torch.zeros(p, p, dtype=exact.dtype)
    covered = torch.zeros(p, dtype=torch.bool)
    names = {id(prm): n for n, prm in trainable(model)}
    calls = call_counts(model, forward, inputs[:1])
    for layer in model.modules():
        if type(layer) not in (nn.Linear, nn.Conv2d) or id(layer.weight) not in names:
            continue
        if calls.get(layer, 0) != 1:  # unused (zero) or weight-shared: exact diagonal
            continue
        A, G = kfac_factors(model, layer, inputs, mode, targets, labels, forward)
        w = slices[names[id(layer.weight)]]
        d_out = layer.weight.shape[0]
        d_in = layer.weight[0].numel()
        idx = torch.arange(w.start, w.stop).reshape(d_out, d_in)
        if layer.bias is not None and id(layer.bias) in names:
            b = slices[names[id(layer.bias)]]
            idx = torch.cat([idx, torch.arange(b.start, b.stop).reshape(d_out, 1)], dim=1)
        idx = idx.reshape(-1)
        out[idx[:, None], idx[None, :]] = torch.kron(G, A)
        covered[idx] = True
    rest = (~covered).nonzero().squeeze(1)
    out[rest, rest] = exact[rest, rest]
    return out


# -- EKFAC (George et al. 2018): KFAC's eigenbases, the rotated Fisher's diagonal ----------


def block_index(model, layer) -> torch.Tensor:
    """Flat positions of [W | b] of ``layer``, row-major (bias column last)."""
    slices = layout_slices(model)
    names = {id(p): n for n, p in trainable(model)}
    w = slices[names[id(layer.weight)]]
    d_out = layer.weight.shape[0]
    idx = torch.arange(w.start, w.stop).reshape(d_out, -1)
    if layer.bias is not None and id(layer.bias) in names:
        b = slices[names[id(layer.bias)]]
        idx = torch.cat([idx, torch.arange(b.start, b.stop).reshape(d_out, 1)], dim=1)
    return idx.reshape(-1)


def kronecker_layers(model, forward, x) -> list[nn.Module]:
    """Trainable Linear/Conv2d layers that run exactly once per forward (KFAC's blocks)."""
    names = {id(p) for _, p in trainable(model)}
    calls = call_counts(model, forward, x[:1])
    return [
        m
        for m in model.modules()
        if type(m) in (nn.Linear, nn.Conv2d) and id(m.weight) in names and calls.get(m, 0) == 1
    ]


def ekfac_brute_force(model, x, mode, targets=None, labels=None, forward=default_forward):
    """Dense (F, KFAC, EKFAC) and each layer block's flat index, input by input, label by label."""
    fisher = dense_fisher(model, x, mode, targets, labels, forward)
    p = fisher.shape[0]
    kfac, ekfac = torch.zeros(p, p, dtype=fisher.dtype), torch.zeros(p, p, dtype=fisher.dtype)
    covered = torch.zeros(p, dtype=torch.bool)
    blocks = []
    for layer in kronecker_layers(model, forward, x):
        A, G = kfac_factors(model, layer, x, mode, targets, labels, forward)
        idx = block_index(model, layer)
        q = torch.kron(torch.linalg.eigh(G).eigenvectors, torch.linalg.eigh(A).eigenvectors)
        s = (q.T @ fisher[idx][:, idx] @ q).diagonal()
        kfac[idx[:, None], idx[None, :]] = torch.kron(G, A)
        ekfac[idx[:, None], idx[None, :]] = q @ torch.diag(s) @ q.T
        covered[idx] = True
        blocks.append(idx)
    rest = (~covered).nonzero().squeeze(1)
    for m in (kfac, ekfac):
        m[rest, rest] = fisher[rest, rest]
    return fisher, kfac, ekfac, blocks


def ekfac_dense(model, inputs, mode, targets=None, labels=None, forward=default_forward):
    """The dense EKFAC matrix (``ekfac_brute_force``'s third element)."""
    return ekfac_brute_force(model, inputs, mode, targets, labels, forward)[2]


# -- KFAC variants (issue 13): factors modified, blocks on chosen layers; averaged output curvature


def call_order(model, forward, x) -> list[nn.Module]:
    """Modules in the order one forward of ``x[:1]`` first runs them."""
    order = []

    def hook(module, inp, out):
        if module not in order:
            order.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        forward(model, x[:1])
    for h in handles:
        h.remove()
    return order


def module_names(model) -> dict[nn.Module, str]:
    return {m: name for name, m in model.named_modules()}


def chosen_layers(model, forward, x, layers) -> list[nn.Module]:
    """The Kronecker layers ``layers`` names: module names, 'all', 'hidden' or 'output'."""
    kron = kronecker_layers(model, forward, x)
    ran = [m for m in call_order(model, forward, x) if m in kron]
    names = module_names(model)
    chosen = []
    for word in layers:
        if word == "all":
            chosen += kron
        elif word == "hidden":
            chosen += ran[:-1]
        elif word == "output":
            chosen += ran[-1:]
        else:
            chosen += [m for m in kron if names[m] == word]
    return [m for m in kron if m in chosen]


def modified_factors(A, G, factors):
    """The KFAC factors of one layer as the variant ``factors`` keeps them, written out."""
    if factors == "full":
        return A, G
    if factors == "a-diag":
        return torch.diag(torch.diag(A)), G
    if factors == "g-diag":
        return A, torch.diag(torch.diag(G))
    if factors == "diag":
        return torch.diag(torch.diag(A)), torch.diag(torch.diag(G))
    if factors == "a-only":
        return A, torch.eye(G.shape[0], dtype=G.dtype)
    raise ValueError(factors)


def kfac_variant_dense(
    model, x, mode, factors="full", layers=("all",), targets=None, labels=None,
    forward=default_forward,
):  # fmt: skip
    """Dense KFAC variant: kron(G', A') on the chosen layers, the exact diagonal elsewhere."""
    fisher = dense_fisher(model, x, mode, targets, labels, forward)
    p = fisher.shape[0]
    out = torch.zeros(p, p, dtype=fisher.dtype)
    covered = torch.zeros(p, dtype=torch.bool)
    for layer in chosen_layers(model, forward, x, layers):
        A, G = kfac_factors(model, layer, x, mode, targets, labels, forward)
        A, G = modified_factors(A, G, factors)
        idx = block_index(model, layer)
        out[idx[:, None], idx[None, :]] = torch.kron(G, A)
        covered[idx] = True
    rest = (~covered).nonzero().squeeze(1)
    out[rest, rest] = fisher[rest, rest]
    return out


def logit_jacobian(model, forward, x) -> torch.Tensor:
    """J [C, P] of one input's logits, one autograd call per class."""
    logits = forward(model, x.unsqueeze(0))[0]
    params = [p for _, p in trainable(model)]
    rows = []
    for c in range(len(logits)):
        grads = torch.autograd.grad(logits[c], params, allow_unused=True, retain_graph=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(params, grads)
                ]
            )
        )
    return torch.stack(rows)


def averaged_output_fisher(model, x, forward=default_forward) -> torch.Tensor:
    """mean_n J_n^T Hbar J_n with Hbar = mean_n (diag(p_n) - p_n p_n^T), all written out."""
    model.eval()
    probs = probabilities(model, forward, x)
    n, c = probs.shape
    h_bar = torch.zeros(c, c, dtype=x.dtype)
    for i in range(n):
        h_bar += torch.diag(probs[i]) - torch.outer(probs[i], probs[i])
    h_bar /= n
    total = 0
    for i in range(n):
        jac = logit_jacobian(model, forward, x[i])
        total = total + jac.T @ h_bar @ jac
    return total / n
