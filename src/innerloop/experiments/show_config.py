"""``innerloop config``: the resolved config (file + overrides, validated, every default filled in)
as TOML or JSON — what ``train`` would store in the run's ``config.json``.

TOML has no null: keys whose value is unset are left out of the tables and named in a comment at
the top (reading the text back gives the same config, since an absent key takes its default). The
TOML text is written by ``tomli_w``.
"""

from __future__ import annotations

import json
from typing import Any

import tomli_w

from innerloop.experiments.config import Config, to_dict


def _drop_nulls(data: Any, path: str, dropped: list[str]) -> Any:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            key = f"{path}.{k}" if path else str(k)
            if v is None:
                dropped.append(key)
            else:
                out[k] = _drop_nulls(v, key, dropped)
        return out
    if isinstance(data, list):
        return [_drop_nulls(v, f"{path}.{i}", dropped) for i, v in enumerate(data)]
    return data


def config_text(cfg: Config, *, as_json: bool = False) -> str:
    data = to_dict(cfg)
    if as_json:
        return json.dumps(data, indent=2) + "\n"
    dropped: list[str] = []
    body = tomli_w.dumps(_drop_nulls(data, "", dropped))
    head = f"# unset (null, the default): {', '.join(dropped)}\n" if dropped else ""
    return head + body
