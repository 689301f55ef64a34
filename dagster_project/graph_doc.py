"""The asset graph as a mermaid picture, written from the Definitions into docs/architecture.md (between the
markers below); tests/dagster/test_architecture_doc.py checks that the committed picture matches the definitions.

    python -m dagster_project.graph_doc     # rewrite the picture
"""

import re
from pathlib import Path

import dagster as dg

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BEGIN, END = "<!-- asset-graph:begin (python -m dagster_project.graph_doc) -->", "<!-- asset-graph:end -->"


def mermaid(defs: dg.Definitions) -> str:
    """Groups as subgraphs, assets as nodes (a blocking check marks its asset with ⛔), deps as edges."""
    graph = defs.get_repository_def().asset_graph
    keys = sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
    blocking = {k.asset_key for k in graph.asset_check_keys if graph.get(k).blocking}
    groups: dict[str, list[dg.AssetKey]] = {}
    for key in keys:
        groups.setdefault(graph.get(key).group_name, []).append(key)
    lines = ["```mermaid", "flowchart LR"]
    for group, members in sorted(groups.items()):
        lines.append(f"  subgraph {group}")
        lines += [f"    {k.to_user_string()}[\"{k.to_user_string()}{' ⛔' if k in blocking else ''}\"]"
                  for k in members]
        lines.append("  end")
    lines += [f"  {p.to_user_string()} --> {k.to_user_string()}"
              for k in keys for p in sorted(graph.get(k).parent_keys, key=lambda p: p.to_user_string())]
    lines.append("```")
    return "\n".join(lines)


def with_picture(text: str, picture: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{DOC}: the markers {BEGIN!r} and {END!r} are missing")
    return pattern.sub(lambda _: f"{BEGIN}\n{picture}\n{END}", text)


def main() -> None:
    from dagster_project.definitions import defs

    DOC.write_text(with_picture(DOC.read_text(), mermaid(defs)))
    print(f"wrote the asset graph into {DOC}")


if __name__ == "__main__":
    main()
