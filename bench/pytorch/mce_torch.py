#!/usr/bin/env python3
"""An independent PyTorch implementation of mce's model, for the side-by-side benchmark only.

Written from MCE_PAPER.md and from reading mce-core (core/src/backbone, core/src/model); it loads the
same safetensors checkpoints as mce-core (head tensors at the root, the backbone under `backbone.`,
the model config as JSON in the metadata key `config`). Not part of CI.

What it implements (eval and train mode, float32):

* EfficientNet-Lite0 (ReLU6, no SE, BatchNorm eps 1e-3 folded into the convs, TF "SAME" padding:
  the odd pixel of a stride-2 conv goes bottom/right), taps after blocks 4 / 10 / 15 (strides
  8 / 16 / 32) times 0.2; ResNet-50 (torchvision names, BN eps 1e-5 folded, layer3 / layer4 dilated
  2 / 4, torchvision's previous-dilation rule for the first block of a dilated layer), no tap scale.
* The paper head (`head.kind == "paper"`, both branches, symmetric attention, mean or max
  similarity): mid-level f = ReLU(Conv1x1(cat(up(l3), l2))) (`down_query.0`, `down_supp.0`),
  MAP prototype (eps 5e-4), A_sim from level 4 (L2 norm + 1e-7, mean over the support's level-4
  foreground, min-max with eps 1e-7), masked cross-image encoding per level (`cross.<i>.proj`,
  `query_q/query_k/support_v` + `query_norm/query_mlp`, `support_q/support_k/query_v` +
  `support_norm/support_mlp`, `fuse`), `cross.merge`, K-shot mean of V_s / f_cross / A_sim, the ASPP
  decoder (`decoder.aspp.{pool,branch1x1,atrous.i,project}`, `decoder.res`, `decoder.cls`), bilinear
  align_corners=True everywhere, exact-erf GELU, LayerNorm eps 1e-5.
* Level masks as mce: bilinear resize, foreground >= 0.5, else > 0, else the mask is dropped.
* Attention through `F.scaled_dot_product_attention` (query branch: weights from the query, values
  = support values times the mask; support branch: weights from the support with background keys
  masked out, values from the query).

Commands:
    python3 mce_torch.py parity --ref REF.safetensors --checkpoint CKPT.safetensors
    python3 mce_torch.py bench --case frame_k1 --runs 5 --checkpoint CKPT --inputs REF
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

# ---------------------------------------------------------------------------------------- config


def read_checkpoint(path):
    """(config dict, tensors dict) of an mce checkpoint."""
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "mce-checkpoint":
        raise ValueError(f"{path}: not an mce checkpoint (format {meta.get('format')!r})")
    config = json.loads(meta["config"])
    if "head" not in config:
        raise ValueError(f"{path}: a legacy flag-style config; save it again with current mce")
    return config, load_file(path)


def edge_lite0_config():
    """`MceConfig::edge_lite0()` of core/src/config/mod.rs."""
    return {
        "backbone": "efficientnet_lite0",
        "image_size": 320,
        "resize": "letterbox",
        "head": {
            "kind": "paper", "reduce_dim": 128, "d_model": 128, "heads": 4, "mlp_ratio": 2,
            "levels": [2, 3, 4], "dropout": 0.5, "decoder": {"dim": 128, "aspp_rates": [3, 6, 9]},
            "branches": "both", "similarity": "mean", "attention": "symmetric", "ablation": "none",
        },
    }


def paper_resnet50_config():
    """`MceConfig::paper_resnet50()`."""
    c = edge_lite0_config()
    c["backbone"] = "resnet50"
    c["image_size"] = 473
    c["head"].update(reduce_dim=256, d_model=256, heads=8, mlp_ratio=4,
                     decoder={"dim": 256, "aspp_rates": [6, 12, 18]})
    return c


CHANNELS = {"efficientnet_lite0": [40, 112, 320], "resnet50": [512, 1024, 2048]}


# ------------------------------------------------------------------------------------- helpers


def fold_bn(weight, t, bn, eps):
    """Fold an eval-mode BatchNorm `bn` (prefix into `t`) into a bias-free conv weight (f32)."""
    scale = t[f"{bn}.weight"] / torch.sqrt(t[f"{bn}.running_var"] + eps)
    w = weight * scale.reshape(-1, 1, 1, 1)
    b = t[f"{bn}.bias"] - t[f"{bn}.running_mean"] * scale
    return w.contiguous(), b.contiguous()


def resize(x, h, w):
    """Bilinear, align_corners=True; identity when the size is already right."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


def same_pad(size, k, s):
    """TF SAME (before, after) of one dim: out = ceil(size / s), the odd pixel after."""
    out = -(-size // s)
    total = max((max(out, 1) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


# ------------------------------------------------------------------------------------ backbones

# (repeats, kernel, stride, expand, in, out): efficientnet_lite_builder, multipliers 1.0/1.0.
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320)]
LITE0_TAPS = (4, 10, 15)
LITE0_SCALE = 0.2
LITE0_EPS = 1e-3


class SameConv:
    """Folded conv + BN with TF SAME padding from the input size."""

    def __init__(self, w, b, stride, groups):
        self.w, self.b, self.stride, self.groups = w, b, stride, groups
        self.k = w.shape[-1]

    def __call__(self, x):
        h, w = x.shape[-2:]
        top, bottom = same_pad(h, self.k, self.stride)
        left, right = same_pad(w, self.k, self.stride)
        if top == bottom == left == right:
            return F.conv2d(x, self.w, self.b, self.stride, top, 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.w, self.b, self.stride, 0, 1, self.groups)


class Lite0:
    def __init__(self, t, prefix="backbone."):
        def conv(name, bn, stride, groups=1):
            w, b = fold_bn(t[f"{prefix}{name}.weight"], t, f"{prefix}{bn}", LITE0_EPS)
            return SameConv(w, b, stride, groups)

        self.stem = conv("_conv_stem", "_bn0", 2)
        self.blocks = []
        for reps, k, stride, expand, cin, cout in LITE0_STAGES:
            for r in range(reps):
                s, i = (stride, cin) if r == 0 else (1, cout)
                p = f"_blocks.{len(self.blocks)}"
                mid = i * expand
                self.blocks.append({
                    "expand": conv(f"{p}._expand_conv", f"{p}._bn0", 1) if expand != 1 else None,
                    "dw": conv(f"{p}._depthwise_conv", f"{p}._bn1", s, groups=mid),
                    "project": conv(f"{p}._project_conv", f"{p}._bn2", 1),
                    "residual": s == 1 and i == cout,
                })

    def features(self, x):
        x = F.relu6(self.stem(x))
        taps = []
        for i, blk in enumerate(self.blocks[: LITE0_TAPS[-1] + 1]):
            h = F.relu6(blk["expand"](x)) if blk["expand"] is not None else x
            h = F.relu6(blk["dw"](h))
            h = blk["project"](h)
            x = h + x if blk["residual"] else h
            if i in LITE0_TAPS:
                taps.append(x * LITE0_SCALE)
        return taps


class ResNet50:
    """torchvision ResNet-50 v1.5, replace_stride_with_dilation=[False, True, True], BN folded."""

    LAYERS = [(3, 64, 1, False), (4, 128, 2, False), (6, 256, 2, True), (3, 512, 2, True)]

    def __init__(self, t, prefix="backbone.", zeros=False):
        eps = 1e-5

        def conv(name, bn, shape):
            if zeros:
                return torch.zeros(shape), torch.zeros(shape[0])
            return fold_bn(t[f"{prefix}{name}.weight"], t, f"{prefix}{bn}", eps)

        self.stem = conv("conv1", "bn1", (64, 3, 7, 7))
        self.layers = []
        cin, dilation = 64, 1
        for li, (blocks, planes, stride, dilate) in enumerate(self.LAYERS):
            prev = dilation
            if dilate:
                dilation *= stride
                stride = 1
            cout = planes * 4
            layer = []
            for bi in range(blocks):
                first = bi == 0
                p = f"layer{li + 1}.{bi}"
                blk = {
                    "conv1": conv(f"{p}.conv1", f"{p}.bn1", (planes, cin, 1, 1)),
                    "conv2": conv(f"{p}.conv2", f"{p}.bn2", (planes, planes, 3, 3)),
                    "conv3": conv(f"{p}.conv3", f"{p}.bn3", (cout, planes, 1, 1)),
                    "stride": stride if first else 1,
                    "dilation": prev if first else dilation,
                    "down": None,
                }
                if first and (stride != 1 or cin != cout):
                    blk["down"] = conv(f"{p}.downsample.0", f"{p}.downsample.1", (cout, cin, 1, 1))
                layer.append(blk)
                cin = cout
            self.layers.append(layer)

    def features(self, x):
        w, b = self.stem
        x = F.max_pool2d(F.relu(F.conv2d(x, w, b, 2, 3)), 3, 2, 1)
        outs = []
        for layer in self.layers:
            for blk in layer:
                s, d = blk["stride"], blk["dilation"]
                y = F.relu(F.conv2d(x, *blk["conv1"]))
                y = F.relu(F.conv2d(y, *blk["conv2"], s, d, d))
                y = F.conv2d(y, *blk["conv3"])
                idt = F.conv2d(x, *blk["down"], s) if blk["down"] is not None else x
                x = F.relu(y + idt)
            outs.append(x)
        return outs[1:]


def make_backbone(config, tensors, zeros=False):
    if config["backbone"] == "efficientnet_lite0":
        return Lite0(tensors)
    if config["backbone"] == "resnet50":
        return ResNet50(tensors, zeros=zeros)
    raise ValueError(f"unknown backbone {config['backbone']!r}")


# ------------------------------------------------------------------------------------ the head


def level_mask(mask, h, w):
    """mce's LevelMask: (keep (B, N) f32, attend (B, 1, 1, N) bool, counts (B,) f32)."""
    b = mask.shape[0]
    r = resize(mask, h, w).reshape(b, h * w)
    strict = r >= 0.5
    loose = r > 0
    use_strict = strict.any(1, keepdim=True)
    use_loose = loose.any(1, keepdim=True)
    keep = torch.where(use_strict, strict, torch.where(use_loose, loose, torch.ones_like(strict)))
    counts = keep.sum(1).clamp(min=1).to(r.dtype)
    return keep.to(r.dtype), keep.reshape(b, 1, 1, h * w), counts


def l2n(x):
    """Divide each position's channel vector (dim 1) by its L2 norm + 1e-7."""
    return x / (x.square().sum(1, keepdim=True).sqrt() + 1e-7)


class PaperHead:
    """The paper's MCE head on a dict of tensors (plain tensors for eval, leaf tensors that
    require grad for training)."""

    def __init__(self, config, tensors):
        c = config["head"]
        if c.get("kind") != "paper":
            raise ValueError(f"only the paper head is implemented, not {c.get('kind')!r}")
        if c["branches"] != "both" or c["attention"] != "symmetric" or c.get("ablation", "none") != "none":
            raise ValueError("only branches=both, attention=symmetric, ablation=none are implemented")
        self.c = c
        self.t = {k: v for k, v in tensors.items() if not k.startswith("backbone.")}
        self.levels = c["levels"]
        self.heads = c["heads"]
        self.d = c["d_model"]
        self.dropout = c["dropout"]
        self.rates = c["decoder"]["aspp_rates"]
        self.training = False

    def conv(self, name, x, padding=0, dilation=1):
        return F.conv2d(x, self.t[f"{name}.weight"], self.t.get(f"{name}.bias"), 1, padding, dilation)

    def linear(self, name, x):
        return F.linear(x, self.t[f"{name}.weight"], self.t[f"{name}.bias"])

    def mid(self, name, feats):
        l2, l3 = feats[0], feats[1]
        x = F.relu(self.conv(name, torch.cat([resize(l3, *l2.shape[-2:]), l2], 1)))
        if self.training:
            x = F.dropout2d(x, self.dropout, True)
        return x

    def split(self, x):
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def tokens(self, i, feat):
        x = self.conv(f"cross.{i}.proj", feat)
        return x.flatten(2).transpose(1, 2)  # (B, N, d)

    def encode_support(self, feats, mask):
        f_s = self.mid("down_supp.0", feats)
        g = f_s.shape[-1]
        m = resize(mask, g, g)
        proto = (f_s * m).sum((2, 3), keepdim=True) / (m.sum((2, 3), keepdim=True) + 5e-4)
        l4 = feats[2]
        b, ch, h4, w4 = l4.shape
        keep4, attend4, counts4 = level_mask(mask, h4, w4)
        s4 = l2n(l4.reshape(b, ch, h4 * w4))
        if self.c["similarity"] == "mean":
            sim = {"mean": torch.bmm(s4, keep4.unsqueeze(2)).squeeze(2) / counts4.unsqueeze(1)}
        else:
            sim = {"support": s4, "attend": attend4.reshape(b, 1, h4 * w4)}
        levels = []
        for i, l in enumerate(self.levels):
            feat = feats[l - 2]
            h, w = feat.shape[-2:]
            tok = self.tokens(i, feat)
            keep, attend, _ = level_mask(mask, h, w)
            p = f"cross.{i}"
            levels.append({
                # support-side maps of both branches, computed once per support
                "q": self.split(self.linear(f"{p}.support_q", tok)),
                "k": self.split(self.linear(f"{p}.support_k", tok)),
                "v_masked": self.split(self.linear(f"{p}.support_v", tok)) * keep[:, None, :, None],
                "attend": attend,
            })
        return {"prototype": proto, "sim": sim, "levels": levels}

    def encode_query(self, feats):
        levels = []
        for i, l in enumerate(self.levels):
            feat = feats[l - 2]
            tok = self.tokens(i, feat)
            p = f"cross.{i}"
            levels.append({
                "q": self.split(self.linear(f"{p}.query_q", tok)),
                "k": self.split(self.linear(f"{p}.query_k", tok)),
                "v": self.split(self.linear(f"{p}.query_v", tok)),
                "hw": feat.shape[-2:],
            })
        return {"mid": self.mid("down_query.0", feats), "level4": feats[2], "levels": levels}

    def branch_out(self, name, r, hw):
        b, h, n, dh = r.shape
        x = r.transpose(1, 2).reshape(b, n, h * dh)
        x = F.layer_norm(x, (h * dh,), self.t[f"{name}_norm.weight"], self.t[f"{name}_norm.bias"], 1e-5)
        x = self.linear(f"{name}_mlp.fc2", F.gelu(self.linear(f"{name}_mlp.fc1", x)))
        return x.transpose(1, 2).reshape(b, h * dh, *hw)

    def cross_level(self, i, q, s):
        """f_cross,l = Conv1x1(cat(f'_Q, f'_S)) of one level and one shot."""
        p = f"cross.{i}"
        # query branch: softmax(Q_q Q_k^T / sqrt(d_h)) (S_v * M)
        r_q = F.scaled_dot_product_attention(q["q"], q["k"], s["v_masked"])
        # support branch: softmax(S_q S_k^T / sqrt(d_h) + M_key) Q_v
        r_s = F.scaled_dot_product_attention(s["q"], s["k"], q["v"], attn_mask=s["attend"])
        f_q = self.branch_out(f"{p}.query", r_q, q["hw"])
        f_s = self.branch_out(f"{p}.support", r_s, q["hw"])
        return self.conv(f"{p}.fuse", torch.cat([f_q, f_s], 1))

    def similarity(self, sim, l4):
        b, ch, h, w = l4.shape
        q = l2n(l4.reshape(b, ch, h * w))
        if "mean" in sim:
            a = torch.bmm(sim["mean"].unsqueeze(1), q)  # (B, 1, N)
        else:
            a = torch.bmm(q.transpose(1, 2), sim["support"])
            a = a.masked_fill(~sim["attend"], float("-inf")).amax(-1).unsqueeze(1)
        mn = a.amin(-1, keepdim=True)
        mx = a.amax(-1, keepdim=True)
        return ((a - mn) / (mx - mn + 1e-7)).reshape(b, 1, h, w)

    def shot_terms(self, q, s, g):
        b, r = s["prototype"].shape[:2]
        proto = s["prototype"].expand(b, r, g, g)
        per_level = [self.cross_level(i, ql, sl) for i, (ql, sl) in enumerate(zip(q["levels"], s["levels"]))]
        cross = self.conv("cross.merge", torch.cat([resize(x, g, g) for x in per_level], 1))
        sim = resize(self.similarity(s["sim"], q["level4"]), g, g)
        return proto, cross, sim

    def decoder_input(self, q, shots):
        g = q["mid"].shape[-1]
        terms = [self.shot_terms(q, s, g) for s in shots]
        mean = [sum(t[j] for t in terms[1:]) + terms[0][j] if len(terms) > 1 else terms[0][j]
                for j in range(3)]
        mean = [m / len(terms) if len(terms) > 1 else m for m in mean]
        return {"query": q["mid"], "prototype": mean[0], "cross": mean[1], "similarity": mean[2]}

    def decode_input(self, x):
        x = torch.cat([x["query"], x["prototype"], x["cross"], x["similarity"]], 1)
        b, _, h, w = x.shape
        pooled = F.relu(self.conv("decoder.aspp.pool", x.mean((2, 3), keepdim=True)))
        branches = [pooled.expand(b, pooled.shape[1], h, w), F.relu(self.conv("decoder.aspp.branch1x1", x))]
        for j, r in enumerate(self.rates):
            branches.append(F.relu(self.conv(f"decoder.aspp.atrous.{j}", x, r, r)))
        x = F.relu(self.conv("decoder.aspp.project", torch.cat(branches, 1)))
        x = F.relu(self.conv("decoder.res", x, 1))
        return self.conv("decoder.cls", x)

    def decode(self, q, shots, size):
        return resize(self.decode_input(self.decoder_input(q, shots)), size, size)


def random_head_tensors(config, seed=0):
    """Head tensors of `config` with mce's names and a simple random init (timing only)."""
    g = torch.Generator().manual_seed(seed)
    c = config["head"]
    ch = CHANNELS[config["backbone"]]
    r, d, dd = c["reduce_dim"], c["d_model"], c["decoder"]["dim"]
    t = {}

    def conv(name, o, i, k, bias=True):
        t[f"{name}.weight"] = torch.randn(o, i, k, k, generator=g) * math.sqrt(2.0 / (i * k * k))
        if bias:
            t[f"{name}.bias"] = torch.zeros(o)

    def lin(name, o, i):
        t[f"{name}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        t[f"{name}.bias"] = torch.zeros(o)

    conv("down_query.0", r, ch[0] + ch[1], 1, bias=False)
    conv("down_supp.0", r, ch[0] + ch[1], 1, bias=False)
    for i, l in enumerate(c["levels"]):
        p = f"cross.{i}"
        conv(f"{p}.proj", d, ch[l - 2], 1)
        for n in ["query_q", "query_k", "support_v", "support_q", "support_k", "query_v"]:
            lin(f"{p}.{n}", d, d)
        for side in ["query", "support"]:
            t[f"{p}.{side}_norm.weight"] = torch.ones(d)
            t[f"{p}.{side}_norm.bias"] = torch.zeros(d)
            lin(f"{p}.{side}_mlp.fc1", d * c["mlp_ratio"], d)
            lin(f"{p}.{side}_mlp.fc2", d, d * c["mlp_ratio"])
        conv(f"{p}.fuse", d, 2 * d, 1)
    conv("cross.merge", r, len(c["levels"]) * d, 1)
    cin = 3 * r + 1
    conv("decoder.aspp.pool", dd, cin, 1)
    conv("decoder.aspp.branch1x1", dd, cin, 1)
    for j in range(3):
        conv(f"decoder.aspp.atrous.{j}", dd, cin, 3)
    conv("decoder.aspp.project", dd, 5 * dd, 1)
    conv("decoder.res", dd, dd, 3)
    conv("decoder.cls", 2, dd, 1)
    return t


class Model:
    def __init__(self, config, tensors, zero_backbone=False):
        self.config = config
        self.size = config["image_size"]
        self.backbone = make_backbone(config, tensors, zeros=zero_backbone)
        self.head = PaperHead(config, tensors)

    @classmethod
    def load(cls, path):
        config, tensors = read_checkpoint(path)
        return cls(config, tensors)

    def features(self, image):
        return self.backbone.features(image)


# ------------------------------------------------------------------------------ preprocessing


def valid_hw(h, w, s):
    """Letterbox (`Resize::LongerSidePad`): longer side to s, shorter rounded (half away from 0)."""
    short = lambda n, long: n * (s / long)
    sh, sw = (float(s), short(w, h)) if h >= w else (short(h, w), float(s))
    rnd = lambda x: max(int(math.floor(x + 0.5)), 1)
    return rnd(sh), rnd(sw)


# ------------------------------------------------------------------------------------- parity


def compare(name, ours, ref):
    ours = ours.detach().float()
    ref = ref.float()
    if ours.shape != ref.shape:
        return {"name": name, "error": f"shape {tuple(ours.shape)} vs {tuple(ref.shape)}"}
    diff = (ours - ref).abs()
    scale = ref.abs().max().item()
    return {
        "name": name,
        "shape": list(ref.shape),
        "max_abs": diff.max().item(),
        "max_ref": scale,
        "rel_to_max": diff.max().item() / max(scale, 1e-30),
        "mean_abs": diff.mean().item(),
        "argmax_agree": (
            float((ours.argmax(1) == ref.argmax(1)).float().mean().item())
            if ref.dim() == 4 and ref.shape[1] == 2 else None
        ),
    }


def parity(ckpt, ref_path):
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    ref = load_file(ref_path)
    model = Model.load(ckpt)
    head = model.head
    out = []
    with torch.inference_mode():
        qf = model.features(ref["query.image"])
        for l, f in zip([2, 3, 4], qf):
            out.append(compare(f"query.level{l}", f, ref[f"query.level{l}"]))
        q = head.encode_query(qf)
        out.append(compare("query.mid", q["mid"], ref["query.mid"]))
        feats, masks = [], []
        k = 0
        while f"support.{k}.image" in ref:
            f = model.features(ref[f"support.{k}.image"])
            for l, t in zip([2, 3, 4], f):
                out.append(compare(f"support.{k}.level{l}", t, ref[f"support.{k}.level{l}"]))
            feats.append(f)
            masks.append(ref[f"support.{k}.mask"])
            k += 1
        cases = {"k1": [(feats[0], masks[0])], "k5": list(zip(feats, masks))}
        if "tiny.mask" in ref:
            cases["tiny"] = [(feats[0], ref["tiny.mask"])]
        for case, shots in cases.items():
            enc = [head.encode_support(f, m) for f, m in shots]
            out.append(compare(f"{case}.shot0.prototype", enc[0]["prototype"], ref[f"{case}.shot0.prototype"]))
            for i, l in enumerate(head.levels):
                x = head.cross_level(i, q["levels"][i], enc[0]["levels"][i])
                out.append(compare(f"{case}.shot0.cross_level{l}", x, ref[f"{case}.shot0.cross_level{l}"]))
            x = head.decoder_input(q, enc)
            for part in ["query", "prototype", "cross", "similarity"]:
                out.append(compare(f"{case}.x.{part}", x[part], ref[f"{case}.x.{part}"]))
            grid = head.decode_input(x)
            out.append(compare(f"{case}.logits_grid", grid, ref[f"{case}.logits_grid"]))
            out.append(compare(f"{case}.logits", resize(grid, model.size, model.size), ref[f"{case}.logits"]))
    return {"checkpoint": ckpt, "reference": ref_path, "config": model.config, "tensors": out}


# -------------------------------------------------------------------------------------- bench


def sample(runs, warmup, fn):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def stage_times(model, image, sfeat, mask, shots, runs):
    head = model.head
    samples = {}
    for run in range(runs + 1):
        t = {}
        t0 = time.perf_counter()
        feats = model.features(image)
        t["backbone"] = (time.perf_counter() - t0) * 1e3
        s_enc = head.encode_support(sfeat, mask)
        for i, l in enumerate(head.levels):
            t0 = time.perf_counter()
            tok = head.tokens(i, feats[l - 2])
            p = f"cross.{i}"
            ql = {"q": head.split(head.linear(f"{p}.query_q", tok)),
                  "k": head.split(head.linear(f"{p}.query_k", tok)),
                  "v": head.split(head.linear(f"{p}.query_v", tok)),
                  "hw": feats[l - 2].shape[-2:]}
            for _ in shots:
                head.cross_level(i, ql, s_enc["levels"][i])
            t[f"mce_level{l}"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        q = head.encode_query(feats)
        t["encode_query"] = (time.perf_counter() - t0) * 1e3
        x = head.decoder_input(q, shots)
        t0 = time.perf_counter()
        head.decode_input(x)
        t["decoder"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        head.decode(q, shots, model.size)
        t["head_total"] = t["encode_query"] + (time.perf_counter() - t0) * 1e3
        if run > 0:
            for k, v in t.items():
                samples.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in samples.items()}


def box_mask(s):
    m = torch.zeros(1, 1, s, s)
    m[:, :, s // 4: 3 * s // 4, s // 5: 4 * s // 5] = 1
    return m


def run_case(args):
    runs, warmup = args.runs, args.warmup
    stages = {}
    if args.case == "frame_paper_k1":
        config = paper_resnet50_config()
        model = Model(config, random_head_tensors(config), zero_backbone=True)
        s = model.size
        image = torch.randn(1, 3, s, s)
        with torch.inference_mode():
            sfeat = model.features(torch.randn(1, 3, s, s))
            mask = box_mask(s)
            shots = [model.head.encode_support(sfeat, mask)]

            def frame():
                q = model.head.encode_query(model.features(image))
                model.head.decode(q, shots, s)

            samples = sample(runs, warmup, frame)
            if args.stages:
                stages = stage_times(model, image, sfeat, mask, shots, runs)
        return samples, stages

    model = Model.load(args.checkpoint)
    head, s = model.head, model.size
    inp = load_file(args.inputs)
    query = inp["query.image"]
    supports = [(inp[f"support.{k}.image"], inp[f"support.{k}.mask"]) for k in range(5)]

    def enc(idx):
        return [head.encode_support(model.features(supports[k][0]), supports[k][1]) for k in idx]

    def frame(classes):
        q = head.encode_query(model.features(query))
        for shots in classes:
            head.decode(q, shots, s)

    if args.case == "train_step_b8":
        return train_step(model, inp, runs, warmup), stages

    with torch.inference_mode():
        case = args.case
        if case == "backbone":
            samples = sample(runs, warmup, lambda: model.features(query))
        elif case == "head_k1":
            shots = enc([0])
            f = model.features(query)
            samples = sample(runs, warmup, lambda: head.decode(head.encode_query(f), shots, s))
        elif case in ("frame_k1", "frame_k5"):
            shots = enc([0] if case == "frame_k1" else [0, 1, 2, 3, 4])
            samples = sample(runs, warmup, lambda: frame([shots]))
            if args.stages:
                sf = model.features(supports[0][0])
                stages = stage_times(model, query, sf, supports[0][1], shots, runs)
        elif case in ("classes_1", "classes_3"):
            n = 1 if case == "classes_1" else 3
            classes = [enc([k]) for k in [0, 3, 4][:n]]
            samples = sample(runs, warmup, lambda: frame(classes))
        elif case in ("eval_k1", "eval_k5"):
            k = 1 if case == "eval_k1" else 5
            qf = model.features(query)
            sf = [(model.features(i), m) for i, m in supports[:k]]

            def episode():
                shots = [head.encode_support(f, m) for f, m in sf]
                logits = head.decode(head.encode_query(qf), shots, s)
                logits.argmax(1)

            samples = sample(runs, warmup, episode)
        else:
            raise SystemExit(f"unknown case {case!r}")
    return samples, stages


def train_step(model, inp, runs, warmup):
    """Edge paper head, batch 8, 1-shot: forward (train mode, Dropout2d), CE (ignore 255),
    backward, SGD (momentum 0.9, weight decay 1e-4) on cached backbone features."""
    head, s, b = model.head, model.size, 8
    images = [inp["query.image"]] + [inp[f"support.{k}.image"] for k in range(5)]
    masks = [inp["query.mask"]] + [inp[f"support.{k}.mask"] for k in range(5)]
    with torch.no_grad():
        feats = [model.features(i) for i in images]

    def cyc(items, off):
        return torch.cat([items[(i + off) % len(items)] for i in range(b)], 0)

    qf = [cyc([f[l] for f in feats], 0) for l in range(3)]
    sf = [cyc([f[l] for f in feats], 1) for l in range(3)]
    smask = cyc(masks, 1)
    labels = cyc(masks, 0).squeeze(1).long()
    params = {k: v.clone().requires_grad_(True) for k, v in head.t.items()}
    head.t = params
    head.training = True
    opt = torch.optim.SGD(list(params.values()), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        q = head.encode_query(qf)
        shot = head.encode_support(sf, smask)
        logits = head.decode(q, [shot], s)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        loss.backward()
        opt.step()

    return sample(runs, warmup, step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--out")
    b = sub.add_parser("bench")
    b.add_argument("--case", required=True)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--checkpoint")
    b.add_argument("--inputs")
    b.add_argument("--stages", action="store_true")
    b.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "parity":
        res = parity(args.checkpoint, args.ref)
        text = json.dumps(res, indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        worst = max((t for t in res["tensors"] if "rel_to_max" in t), key=lambda t: t["rel_to_max"])
        for t in res["tensors"]:
            if "error" in t:
                print(f"{t['name']:32s} {t['error']}")
            else:
                print(f"{t['name']:32s} max_abs {t['max_abs']:.3e}  rel {t['rel_to_max']:.3e}"
                      + (f"  argmax {t['argmax_agree']:.6f}" if t["argmax_agree"] is not None else ""))
        print(f"worst: {worst['name']} rel {worst['rel_to_max']:.3e}")
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    samples, stages = run_case(args)
    print(json.dumps({
        "side": "pytorch",
        "case": args.case,
        "samples_ms": samples,
        "median_ms": statistics.median(samples),
        "stages_ms": stages,
        "threads": torch.get_num_threads(),
        "process_ms": (time.perf_counter() - t0) * 1e3,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    sys.exit(main())
