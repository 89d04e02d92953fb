"""`--workflow-input` of the gpu tier: node-input overrides per workflow."""

import pytest

from app.core.config import WorkflowName
from fixtures.quality.variants import parse_workflow_inputs


def test_values_are_json_or_strings_grouped_by_workflow_and_node() -> None:
    parsed = parse_workflow_inputs(
        [
            "restore:5.alpha=5",
            "restore:5.sigma=0.5",
            "restore:4.upscale_method=bicubic",
            "restore_model_upscale:3.blend_factor=1",
        ]
    )

    assert parsed == {
        WorkflowName.CORE: {"5": {"alpha": 5, "sigma": 0.5}, "4": {"upscale_method": "bicubic"}},
        WorkflowName.MODEL_UPSCALE: {"3": {"blend_factor": 1}},
    }
    assert parse_workflow_inputs([]) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("restore:5.alpha", "expected WORKFLOW:NODE.INPUT=VALUE"),
        ("restore.5.alpha=5", "expected WORKFLOW:NODE.INPUT=VALUE"),
        ("restore:5=5", "expected WORKFLOW:NODE.INPUT=VALUE"),
        ("restore:5.alpha=", "expected WORKFLOW:NODE.INPUT=VALUE"),
        ("restor:5.alpha=5", r"no workflow 'restor' \(known: restore, restore_model_upscale\)"),
        ("restore:5.alhpa=5", r"node 5 \(ImageSharpen\) of restore has no literal input 'alhpa'"),
        ("restore:10.model_name=x.pth", "restore has no node '10'"),
    ],
)
def test_malformed_specs_are_refused_with_the_expected_form(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_workflow_inputs([spec])
