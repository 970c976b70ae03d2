"""learn2learn's ``MAML`` / ``MetaSGD`` (``clone`` + ``adapt``) on the plain copy of our Conv4."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch.nn.functional as F

from innerloop.bench.peers.case import (
    Config,
    NotInstalled,
    Runner,
    grads_by_name,
    make_problem,
    param_names,
    plain_copy,
)


def import_learn2learn_algorithms() -> types.ModuleType:
    """``learn2learn.algorithms``. Its package ``__init__`` also imports learn2learn's vision and
    gym modules (torchvision, gym, scipy, requests); when those are missing, the algorithms (which
    need only torch) are imported without running the package ``__init__``."""
    spec = importlib.util.find_spec("learn2learn")
    if spec is None:
        raise NotInstalled("learn2learn")
    try:
        import learn2learn

        return learn2learn.algorithms
    except Exception:  # ImportError, or a broken optional dependency (a CUDA-only torchvision)
        for k in [k for k in sys.modules if k == "learn2learn" or k.startswith("learn2learn.")]:
            del sys.modules[k]
        pkg = types.ModuleType("learn2learn")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        pkg.__spec__ = spec
        sys.modules["learn2learn"] = pkg
        return importlib.import_module("learn2learn.algorithms")


def build_learn2learn(cfg: Config) -> Runner:
    algorithms = import_learn2learn_algorithms()
    model, batch = make_problem(cfg)
    names = param_names(model)
    plain = plain_copy(model, cfg)
    fo = cfg.spec.first_order
    if cfg.spec.rule == "meta_sgd":
        meta = algorithms.MetaSGD(plain, lr=cfg.lr, first_order=fo)
        alphas = list(meta.lrs)
    else:
        meta = algorithms.MAML(plain, lr=cfg.lr, first_order=fo)
        alphas = None

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            learner = meta.clone()
            for _ in range(cfg.steps):
                learner.adapt(F.cross_entropy(learner(sx), sy))
            (F.cross_entropy(learner(qx), qy) / n).backward()

    return Runner(list(meta.parameters()), meta_backward, lambda: grads_by_name(names, plain.parameters(), alphas))
