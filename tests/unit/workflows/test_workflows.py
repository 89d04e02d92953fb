"""The shipped ComfyUI workflows and how one job's graph is built from them."""

import copy
import json
from importlib import resources
from typing import Any

import pytest

from app import workflows
from app.core.config import WorkflowName
from app.workflows import (
    WorkflowError,
    build_workflow,
    load_workflow,
    nodes_of,
    output_node,
)

JOB = {
    "image": "jobs/8d3c/input.png",
    "output_prefix": "restored/8d3c/a1",
    "scale": 3.0,
    "upscale_model": "RealESRGAN_x4.pth",
}


def shipped(name: WorkflowName) -> dict[str, Any]:
    """The JSON file itself, read past the module's cache."""
    text = resources.files("app.workflows").joinpath(f"{name.value}.json").read_text("utf-8")
    graph: dict[str, Any] = json.loads(text)
    return graph


@pytest.mark.parametrize("name", list(WorkflowName))
def test_each_shipped_workflow_has_one_input_and_one_output(name: WorkflowName) -> None:
    graph = shipped(name)

    assert len(nodes_of(graph, "LoadImage")) == 1
    assert nodes_of(graph, "SaveImage") == [output_node(graph)]
    assert graph[output_node(graph)]["inputs"]["images"][0] in graph  # wired to a node


def test_core_workflow_needs_no_model_files() -> None:
    """`restore.json` must run on any ComfyUI host: core nodes only, no loaders."""
    classes = {node["class_type"] for node in shipped(WorkflowName.CORE).values()}

    assert not any("Loader" in class_type for class_type in classes)
    assert "ImageScaleBy" in classes


def test_build_fills_in_the_job_and_nothing_else_for_the_core_workflow() -> None:
    graph = build_workflow(WorkflowName.CORE, **JOB)

    expected = shipped(WorkflowName.CORE)
    [load] = nodes_of(expected, "LoadImage")
    [scale] = nodes_of(expected, "ImageScaleBy")
    save = output_node(expected)
    expected[load]["inputs"]["image"] = JOB["image"]
    expected[save]["inputs"]["filename_prefix"] = JOB["output_prefix"]
    expected[scale]["inputs"]["scale_by"] = JOB["scale"]
    assert graph == expected


def test_build_fills_in_the_model_for_the_model_workflow() -> None:
    graph = build_workflow(WorkflowName.MODEL_UPSCALE, **JOB)

    expected = shipped(WorkflowName.MODEL_UPSCALE)
    [load] = nodes_of(expected, "LoadImage")
    [loader] = nodes_of(expected, "UpscaleModelLoader")
    save = output_node(expected)
    assert nodes_of(expected, "ImageScaleBy") == []  # the model sets the scale
    expected[load]["inputs"]["image"] = JOB["image"]
    expected[save]["inputs"]["filename_prefix"] = JOB["output_prefix"]
    expected[loader]["inputs"]["model_name"] = JOB["upscale_model"]
    assert graph == expected


@pytest.mark.parametrize("name", list(WorkflowName))
def test_building_leaves_the_shipped_workflow_untouched(name: WorkflowName) -> None:
    before = load_workflow(name)

    first = build_workflow(name, **JOB)
    first[output_node(first)]["inputs"]["filename_prefix"] = "changed by a caller"
    second = build_workflow(name, **{**JOB, "output_prefix": "restored/other/a1"})

    assert load_workflow(name) == before == shipped(name)
    assert second[output_node(second)]["inputs"]["filename_prefix"] == "restored/other/a1"


def test_load_workflow_hands_out_copies() -> None:
    graph = load_workflow(WorkflowName.CORE)
    graph.clear()

    assert load_workflow(WorkflowName.CORE) == shipped(WorkflowName.CORE)


def core_with(changes: dict[str, Any]) -> dict[str, Any]:
    graph = copy.deepcopy(shipped(WorkflowName.CORE))
    for node_id, node in changes.items():
        if node is None:
            del graph[node_id]
        else:
            graph[node_id] = node
    return graph


@pytest.mark.parametrize(
    ("graph_changes", "message"),
    [
        ({"1": None}, "expected exactly one LoadImage node, found 0"),
        (
            {"99": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}},
            "expected exactly one LoadImage node, found 2",
        ),
        ({"6": None}, "expected exactly one SaveImage node, found 0"),
        (
            {"99": {"class_type": "SaveImage", "inputs": {"images": ["5", 0]}}},
            "expected exactly one SaveImage node, found 2",
        ),
    ],
    ids=["no-load", "two-loads", "no-save", "two-saves"],
)
def test_graphs_without_exactly_one_input_and_output_are_refused(
    monkeypatch: pytest.MonkeyPatch, graph_changes: dict[str, Any], message: str
) -> None:
    graph = core_with(graph_changes)
    monkeypatch.setattr(workflows, "_load", lambda _: graph)

    with pytest.raises(WorkflowError, match=message):
        build_workflow(WorkflowName.CORE, **JOB)


def test_output_node_of_a_graph_with_two_outputs_is_refused() -> None:
    graph = core_with({"99": {"class_type": "SaveImage", "inputs": {"images": ["5", 0]}}})

    with pytest.raises(WorkflowError, match="found 2"):
        output_node(graph)
    assert issubclass(WorkflowError, ValueError)


def test_nodes_of_skips_entries_without_a_class_type() -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {}}, "2": {"inputs": {}}}

    assert nodes_of(graph, "LoadImage") == ["1"]
    assert nodes_of(graph, "SaveImage") == []


def test_build_sets_named_node_inputs_last() -> None:
    """The gpu tier's `--workflow-input`: a variant of the shipped graph, job fields kept."""
    plain = build_workflow(WorkflowName.CORE, **JOB)
    graph = build_workflow(
        WorkflowName.CORE, **JOB, inputs={"5": {"alpha": 5.0, "sigma": 2.0}, "4": {"scale_by": 4}}
    )

    assert graph["5"]["inputs"] == {**plain["5"]["inputs"], "alpha": 5.0, "sigma": 2.0}
    assert graph["4"]["inputs"]["scale_by"] == 4  # after the job's scale: the override wins
    assert {k: v for k, v in graph.items() if k not in ("4", "5")} == {
        k: v for k, v in plain.items() if k not in ("4", "5")
    }
    assert load_workflow(WorkflowName.CORE) == shipped(WorkflowName.CORE)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"42": {"alpha": 1}}, "restore has no node '42'"),
        ({"5": {"alhpa": 1}}, r"node 5 \(ImageSharpen\) of restore has no literal input 'alhpa'"),
        ({"5": {"image": ["1", 0]}}, "has no literal input 'image'"),  # a link, not a value
    ],
    ids=["unknown-node", "unknown-input", "link"],
)
def test_build_refuses_inputs_the_graph_lacks(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        build_workflow(WorkflowName.CORE, **JOB, inputs=inputs)
