"""ANIL (Raghu et al., 2020): only the head adapts; the body is meta-learned but frozen per task.

Body features are computed once per task (support and query), then the inner loop runs on the
head alone. Models expose ``body`` and ``head`` submodules.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from innerloop.algorithms.base import MetaAlgorithm, _thread_model
from innerloop.types import Params, Task


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class ANIL(MetaAlgorithm):
    @classmethod
    def adapted_names(cls, model: nn.Module) -> list[str]:
        if not (hasattr(model, "head") and hasattr(model, "body")):
            raise ValueError(f"ANIL needs a model with .body and .head submodules; got {type(model).__name__}")
        return [f"head.{n}" for n, _ in model.head.named_parameters()]

    def prepare(self, params: Params, task: Task):
        body = _sub(params, "body.")
        adapted = {n: params[n] for n in self.adapted}
        model = _thread_model(self.model)
        fs = functional_call(model.body, body, (task.support_x,))
        fq = functional_call(model.body, body, (task.query_x,))

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(model.head, _sub(p, "head."), (x,))

        return forward, adapted, fs, fq
