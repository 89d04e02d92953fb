"""ComfyUI workflows in API format, and how the worker fills them in for one job.

Each graph has exactly one `LoadImage` (the job's uploaded input) and one `SaveImage` (its output).
The worker fills in the input image, a per-job output prefix and the parameters from settings;
everything else stays as tuned in the JSON files beside this module.
"""

import copy
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from app.core.config import WorkflowName

Workflow = dict[str, dict[str, Any]]
# Literal node inputs to set after filling in a job, by node id then input name: for trying a
# workflow variant without editing the shipped JSON (the gpu tier's `--workflow-input`).
NodeInputs = Mapping[str, Mapping[str, Any]]


class WorkflowError(ValueError):
    """A shipped workflow does not have the shape this module fills in."""


@cache
def _load(name: WorkflowName) -> Workflow:
    text = resources.files(__package__).joinpath(f"{name.value}.json").read_text("utf-8")
    graph: Workflow = json.loads(text)
    return graph


def load_workflow(name: WorkflowName) -> Workflow:
    """A fresh copy of the shipped graph: callers may change it."""
    return copy.deepcopy(_load(name))


def nodes_of(graph: Workflow, class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node.get("class_type") == class_type]


def _only_node(graph: Workflow, class_type: str) -> dict[str, Any]:
    found = nodes_of(graph, class_type)
    if len(found) != 1:
        raise WorkflowError(f"expected exactly one {class_type} node, found {len(found)}")
    inputs: dict[str, Any] = graph[found[0]]["inputs"]
    return inputs


def build_workflow(
    name: WorkflowName,
    *,
    image: str,
    output_prefix: str,
    scale: float,
    upscale_model: str,
    inputs: NodeInputs | None = None,
) -> Workflow:
    """The graph for one job.

    `image` is the `LoadImage` value of the uploaded input (`subfolder/name`); `output_prefix` must be
    unique per job, since ComfyUI answers an identical graph with its cached, earlier output.
    `scale` applies to `ImageScaleBy` nodes, `upscale_model` to `UpscaleModelLoader` nodes.
    `inputs` then replaces existing literal inputs of named nodes; a node or input the graph
    lacks, or a link, is refused, so a typo cannot pass as a variant.
    """
    graph = load_workflow(name)
    _only_node(graph, "LoadImage")["image"] = image
    _only_node(graph, "SaveImage")["filename_prefix"] = output_prefix
    for node_id in nodes_of(graph, "ImageScaleBy"):
        graph[node_id]["inputs"]["scale_by"] = scale
    for node_id in nodes_of(graph, "UpscaleModelLoader"):
        graph[node_id]["inputs"]["model_name"] = upscale_model
    for node_id, values in (inputs or {}).items():
        node_inputs = graph.get(node_id, {}).get("inputs")
        if node_inputs is None:
            raise WorkflowError(f"{name.value} has no node {node_id!r}")
        for input_name, value in values.items():
            if input_name not in node_inputs or isinstance(node_inputs[input_name], list):
                raise WorkflowError(
                    f"node {node_id} ({graph[node_id].get('class_type')}) of {name.value} has no "
                    f"literal input {input_name!r}"
                )
            node_inputs[input_name] = value
    return graph


def output_node(graph: Workflow) -> str:
    """The id of the `SaveImage` node whose images are the job's result."""
    found = nodes_of(graph, "SaveImage")
    if len(found) != 1:
        raise WorkflowError(f"expected exactly one SaveImage node, found {len(found)}")
    return found[0]
