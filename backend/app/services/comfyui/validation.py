"""Checking a workflow against a host's node specs (`/object_info`), as ComfyUI itself would.

ComfyUI accepts bad values for V3 combo inputs (blend modes, model names) and only fails at run
time; `check_workflow` catches them, and missing classes, inputs and ranges, before submitting.
Its errors are shaped like ComfyUI's own 400 answer to `POST /prompt`.
"""

from collections.abc import Mapping
from typing import Any

from app.services.comfyui.errors import WorkflowRejected
from app.workflows import Workflow

# ComfyUI leaves long combo lists (model files) out of its error messages; so do we.
_COMBO_LIST_LIMIT = 20


def _node_error(
    error_type: str, message: str, details: str, extra_info: dict[str, Any]
) -> dict[str, Any]:
    return {"type": error_type, "message": message, "details": details, "extra_info": extra_info}


def _spec_parts(spec: Any) -> tuple[Any, dict[str, Any]]:
    """`[type, {options}]` (the options may be missing) from an `/object_info` input spec."""
    if not isinstance(spec, list | tuple) or not spec:
        return None, {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], options


def _combo_options(input_type: Any, options: dict[str, Any]) -> list[Any] | None:
    """The allowed values of a combo input in either encoding, or None for other inputs.

    V1 nodes list the options as the type (`[[opts], {...}]`); V3 nodes say `COMBO` and put them
    in the options (`["COMBO", {"options": [...]}]`).
    """
    if isinstance(input_type, list):
        return input_type
    if input_type == "COMBO":
        listed = options.get("options", [])
        return listed if isinstance(listed, list) else []
    return None


def _types_match(received: Any, expected: Any) -> bool:
    if not isinstance(received, str) or not isinstance(expected, str):
        return True
    if "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


_LITERAL_TYPES: dict[str, tuple[type, ...]] = {
    "INT": (int,),
    "FLOAT": (int, float),
    "STRING": (str,),
    "BOOLEAN": (bool,),
}


def _check_literal(
    name: str, value: Any, input_type: Any, options: dict[str, Any]
) -> dict[str, Any] | None:
    """One literal input against its spec, with ComfyUI's error types and wording."""
    extra = {"input_name": name, "input_config": [input_type, options], "received_value": value}
    expected = _LITERAL_TYPES.get(input_type) if isinstance(input_type, str) else None
    if expected is not None:
        if not isinstance(value, expected) or (isinstance(value, bool) and input_type != "BOOLEAN"):
            return _node_error(
                "invalid_input_type",
                f"Failed to convert an input value to a {input_type} value",
                f"{name}, {value!r}, expected {input_type}",
                extra,
            )
        if input_type not in ("INT", "FLOAT"):
            return None
        if "min" in options and value < options["min"]:
            return _node_error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {options['min']}",
                name,
                extra,
            )
        if "max" in options and value > options["max"]:
            return _node_error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {options['max']}",
                name,
                extra,
            )
        return None
    allowed = _combo_options(input_type, options)
    # Upload combos list only the top-level input files; ComfyUI checks the file itself instead.
    if allowed is None or any(key.endswith("_upload") and options[key] for key in options):
        return None
    values = value if isinstance(value, list) and options.get("multiselect") else [value]
    if all(item in allowed for item in values):
        return None
    listed = (
        str(allowed) if len(allowed) <= _COMBO_LIST_LIMIT else f"(list of length {len(allowed)})"
    )
    return _node_error(
        "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}", extra
    )


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _check_link(
    name: str,
    value: list[Any],
    input_type: Any,
    options: dict[str, Any],
    workflow: Workflow,
    specs: Mapping[str, dict[str, Any]],
) -> dict[str, Any] | None:
    """A `[node_id, output_index]` input: the node exists and that output has the right type."""
    extra = {"input_name": name, "input_config": [input_type, options], "linked_node": value}
    if not _is_link(value):
        return _node_error(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            name,
            extra,
        )
    source = workflow.get(value[0])
    if source is None:
        return _node_error(
            "bad_linked_input", f"Linked node {value[0]} does not exist", name, extra
        )
    returned = specs[source["class_type"]].get("output") or []
    if not 0 <= value[1] < len(returned):
        return _node_error(
            "bad_linked_input", f"Linked node {value[0]} has no output {value[1]}", name, extra
        )
    received = returned[value[1]]
    if _types_match(received, input_type):
        return None
    return _node_error(
        "return_type_mismatch",
        "Return type mismatch between linked nodes",
        f"{name}, received_type({received}) mismatch input_type({input_type})",
        {**extra, "received_type": received},
    )


def _check_node(
    node: dict[str, Any], workflow: Workflow, specs: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    spec_inputs = specs[node["class_type"]].get("input") or {}
    inputs = node.get("inputs") or {}
    errors: list[dict[str, Any]] = []
    for category in ("required", "optional"):
        for name, spec in (spec_inputs.get(category) or {}).items():
            input_type, options = _spec_parts(spec)
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _node_error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            {"input_name": name},
                        )
                    )
                continue
            value = inputs[name]
            if isinstance(value, dict) and "__value__" in value:
                # ComfyUI's escape for a literal list, which would otherwise read as a link.
                error = _check_literal(name, value["__value__"], input_type, options)
            elif isinstance(value, list):
                error = _check_link(name, value, input_type, options, workflow, specs)
            else:
                error = _check_literal(name, value, input_type, options)
            if error is not None:
                errors.append(error)
    return errors


def _upstream(workflow: Workflow, node_id: str) -> set[str]:
    """The node and every node it reads from, directly or not."""
    seen: set[str] = set()
    pending = [node_id]
    while pending:
        current = pending.pop()
        if current in seen or current not in workflow:
            continue
        seen.add(current)
        for value in (workflow[current].get("inputs") or {}).values():
            if _is_link(value):
                pending.append(value[0])
    return seen


def _prompt_error(error_type: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": error_type, "message": message, "details": details, "extra_info": {}}


def summarize_node_errors(node_errors: Mapping[str, Any]) -> str:
    """One line for a log or a job's error message from ComfyUI-shaped `node_errors`."""
    parts = []
    for node_id, entry in node_errors.items():
        errors = entry.get("errors") if isinstance(entry, dict) else None
        for error in errors if isinstance(errors, list) else []:
            if isinstance(error, dict):
                parts.append(
                    f"node {node_id} ({entry.get('class_type')}): "
                    f"{error.get('message')} ({error.get('details')})"
                )
    return "; ".join(parts)


def _check_class_types(workflow: Workflow) -> None:
    for node_id, node in workflow.items():
        if not isinstance(node.get("class_type"), str):
            raise WorkflowRejected(
                f"node {node_id} has no class_type",
                error=_prompt_error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
            )


def node_classes(workflow: Workflow) -> list[str]:
    """The distinct node classes of the graph, in order; rejects a node without a class."""
    _check_class_types(workflow)
    return list(dict.fromkeys(node["class_type"] for node in workflow.values()))


def check_workflow(workflow: Workflow, specs: Mapping[str, dict[str, Any]]) -> None:
    """Raise `WorkflowRejected` unless every node of `workflow` fits the host's `specs`.

    `specs` maps each node class the host has to its `/object_info` spec.
    """
    _check_class_types(workflow)
    for node_id, node in workflow.items():
        class_type = node["class_type"]
        if class_type not in specs:
            raise WorkflowRejected(
                f"ComfyUI has no node class {class_type}",
                error=_prompt_error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
            )
    outputs = [
        node_id
        for node_id, node in workflow.items()
        if specs[node["class_type"]].get("output_node") is True
    ]
    if not outputs:
        raise WorkflowRejected(
            "the workflow has no output node",
            error=_prompt_error("prompt_no_outputs", "Prompt has no outputs"),
        )
    upstream = {output: _upstream(workflow, output) for output in outputs}
    node_errors: dict[str, Any] = {}
    for node_id, node in workflow.items():
        errors = _check_node(node, workflow, specs)
        if errors:
            node_errors[node_id] = {
                "errors": errors,
                "dependent_outputs": [o for o in outputs if node_id in upstream[o]],
                "class_type": node["class_type"],
            }
    if node_errors:
        raise WorkflowRejected(
            f"workflow failed validation: {summarize_node_errors(node_errors)}",
            error=_prompt_error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation"
            ),
            node_errors=node_errors,
        )
