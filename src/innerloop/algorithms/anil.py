"""ANIL (Raghu et al., 2020): only the head adapts; the rest is meta-learned but frozen per task.

The head is a submodule named by ``head`` (default: the model's ``head`` attribute if it has one, else
its last ``nn.Linear``), checked when the algorithm is built. The model's own ``forward`` runs at every
inner step with the head's adapted parameters — except for models that declare
``feature_split = ("body", "head")`` (their forward is exactly ``head(body(x))``, as for innerloop's own
backbones): there the body's features are computed once per task and the inner loop runs on the head
alone, which gives the same result faster.
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


def head_name(model: nn.Module, head: str | None = None) -> str:
    """The head's module name: ``head`` as given (it must name a submodule with parameters), else
    ``"head"`` when the model has one, else the last ``nn.Linear`` in module order."""
    modules = dict(model.named_modules())
    if head is not None:
        if head not in modules or head == "":
            raise ValueError(f"ANIL: the model ({type(model).__name__}) has no submodule {head!r} to adapt "
                             f"(its submodules: {', '.join(n for n in modules if n)})")
        if not any(True for _ in modules[head].parameters()):
            raise ValueError(f"ANIL: submodule {head!r} has no parameters to adapt")
        return head
    if isinstance(modules.get("head"), nn.Module) and any(True for _ in modules["head"].parameters()):
        return "head"
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"ANIL: the model ({type(model).__name__}) has no 'head' submodule and no nn.Linear; "
                         "name the module to adapt with head=...")
    return linears[-1]


def _splits_features(model: nn.Module, head: str) -> bool:
    return head == "head" and tuple(getattr(model, "feature_split", ())) == ("body", "head")


@registry.register("algorithm", "anil")
class ANIL(MetaAlgorithm):
    def __init__(self, model: nn.Module, rule, *, head: str | None = None, adapted: list[str] | None = None,
                 **kwargs):
        self.head = head_name(model, head)
        if adapted is None:
            adapted = self.adapted_names(model, self.head)
        super().__init__(model, rule, adapted=adapted, **kwargs)

    @classmethod
    def adapted_names(cls, model: nn.Module, head: str | None = None) -> list[str]:
        name = head_name(model, head)
        return [f"{name}.{n}" for n, p in model.get_submodule(name).named_parameters() if p.requires_grad]

    @classmethod
    def adapted_shapes(cls, model: nn.Module, head: str | None = None) -> dict:
        params = dict(model.named_parameters())
        return {n: params[n].shape for n in cls.adapted_names(model, head)}

    def inner_modules(self) -> list[tuple[str, nn.Module]]:
        return [(self.head, self.model.get_submodule(self.head))]

    def prepare(self, params: Params, task: Task, buffers: dict | None = None,
                module: Callable[[nn.Module], nn.Module] | None = None):
        if not _splits_features(self.model, self.head):
            return super().prepare(params, task, buffers, module)  # the model's own forward, head adapted
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
