"""ANIL (Raghu et al., 2020): only the head adapts; the body is meta-learned but frozen per task.

Body features are computed once per task (support and query), then the inner loop runs on the
head alone. Models expose ``body`` and ``head`` submodules.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.func import functional_call

from innerloop import registry
from innerloop.algorithms.base import MetaAlgorithm
from innerloop.types import Params, Task


def _sub(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@registry.register("algorithm", "anil")
class ANIL(MetaAlgorithm):
    @classmethod
    def adapted_names(cls, model: nn.Module) -> list[str]:
        if not (hasattr(model, "head") and hasattr(model, "body")):
            raise ValueError(f"ANIL needs a model with .body and .head submodules; got {type(model).__name__}")
        return [f"head.{n}" for n, p in model.head.named_parameters() if p.requires_grad]

    def inner_modules(self) -> list[tuple[str, nn.Module]]:
        return [("head", self.model.head)]

    def prepare(self, params: Params, task: Task, buffers: dict | None = None,
                module: Callable[[nn.Module], nn.Module] | None = None):
        buffers = self.buffers_for(True) if buffers is None else buffers
        adapted = {n: params[n] for n in self.adapted}
        model = module(self.model) if module is not None else self.model
        body = (_sub(params, "body."), _sub(buffers, "body."))
        fs = functional_call(model.body, body, (task.support_x,))
        fq = functional_call(model.body, body, (task.query_x,))
        head_fixed = {k: v for k, v in _sub(params, "head.").items() if f"head.{k}" not in adapted}
        head_buffers = _sub(buffers, "head.")

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(model.head, ({**head_fixed, **_sub(p, "head.")}, head_buffers), (x,))

        return forward, adapted, fs, fq
