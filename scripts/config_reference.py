"""Write docs/config-reference.md from the settings dataclasses (their field docstrings).

Run ``.venv/bin/python scripts/config_reference.py`` after changing a config section;
tests/test_docs.py fails while the file differs from what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from contract.settings import describe
from edge import config as edge_config
from hub import config as hub_config

SECTIONS = {
    "cairn-edge": [
        ("[edge]", edge_config.EdgeSettings),
        ("[buffer]", edge_config.BufferSettings),
        ("[forwarder]", edge_config.ForwarderSettings),
        ("[admin]", edge_config.AdminSettings),
        ("[[mqtt]]", edge_config.MqttSettings),
        ("mqtt.topics = [{...}]", edge_config.TopicSettings),
        ("[[ble]]", edge_config.BleSettings),
        ("[[serial]]", edge_config.SerialSettings),
        ("[[http]]", edge_config.HttpSettings),
        ("http.keys = [{...}]", edge_config.HttpKeySettings),
    ],
    "cairn-hub": [
        ("[hub]", hub_config.HubSettings),
        ("[nats]", hub_config.NatsSettings),
        ("[store]", hub_config.StoreSettings),
        ("[api]", hub_config.ApiSettings),
        ("[auth]", hub_config.AuthSettings),
        ("[tls]", hub_config.TlsSettings),
    ],
}


def render() -> str:
    out = [
        "# Config reference",
        "",
        "Generated from the settings classes by `scripts/config_reference.py`;"
        " do not edit by hand.",
        "Each service reads one TOML file (`--config FILE`). Unknown keys and out-of-bounds values",
        "stop the service at start with an error naming the key. Relative paths are relative to",
        "the config file's folder.",
    ]
    for service, sections in SECTIONS.items():
        out += ["", f"## {service}"]
        for title, cls in sections:
            doc = (cls.__doc__ or "").split("\n")[0].split(":", 1)[-1].strip().replace("``", "`")
            doc = doc[:1].upper() + doc[1:]
            out += ["", f"### `{title}`", "", doc, "", "| key | type | default | meaning |"]
            out += ["| --- | --- | --- | --- |"]
            for key, kind, default, text in describe(cls):
                cell = text.replace("``", "`").replace("|", "\\|")
                out.append(f"| `{key}` | {kind} | `{default}` | {cell} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
    print(f"wrote {target}")
