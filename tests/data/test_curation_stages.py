"""The one ordered list of curation stages (api.curation.CURATION_STAGES) is what the pipeline, the spec
and the operator's validation use."""

import pytest

from polyvivid.api.curation import CURATION_STAGE_NAMES, CURATION_STAGES, CurationSpec
from polyvivid.data import curation
from polyvivid.data.curation import _ModelStage

from ..specs import with_random_models



def test_every_stage_has_one_spelling_and_a_runner():
    assert len(set(CURATION_STAGE_NAMES)) == len(CURATION_STAGES)
    assert CURATION_STAGES[0].fans_out and CURATION_STAGES[0].runner  # videos in, clips out
    for stage in CURATION_STAGES:
        if stage.name != "write":  # every other stage has its settings under its own name
            assert stage.name in CurationSpec.model_fields, stage
            assert CurationSpec.model_fields[stage.name].alias in (None, stage.name), stage
        if stage.runner:
            runner = getattr(curation, stage.runner)
            assert stage.actor_pool == (isinstance(runner, type) and issubclass(runner, _ModelStage)), stage
        if stage.actor_pool:
            assert "resources" in CurationSpec.model_fields[stage.name].annotation.model_fields


def test_the_operator_checks_the_resources_of_every_actor_pool_stage():
    from polyvivid_operator.config import OperatorConfig
    from polyvivid_operator.validation import InvalidSpec, check_curation

    config = OperatorConfig(image="img", max_gpus_per_node=8)
    for stage in (s for s in CURATION_STAGES if s.actor_pool):
        spec = CurationSpec.model_validate(with_random_models({"input": "s3://a/in", "output": "s3://a/out", "workers": 1,
                                                               stage.name: {"resources": {"cpus": 1000}}}))
        with pytest.raises(InvalidSpec, match=rf"spec\.{stage.name}\.resources\.cpus"):
            check_curation(spec, config)


def test_curate_help_lists_the_stages_in_order(capsys):
    from polyvivid.cli import main

    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    listed = [line.split()[0] for line in capsys.readouterr().out.split("stages (")[1].splitlines()[1:]
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed[:len(CURATION_STAGE_NAMES)] == list(CURATION_STAGE_NAMES)
