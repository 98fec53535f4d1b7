"""kit.training.stages: which stage a run trains next, from the command line and its last checkpoint."""
from __future__ import annotations

import pytest

from kit.training import stages
from kit.training.stage_options import StageOptions

PRETRAIN = StageOptions(pretrain="livecell:shsy5y", pretrain_epochs=3, pretrain_time_limit=600)
EPOCHS, TIME_LIMIT = 4, 900  # the run's: fine-tuning's and a pseudo-label round's


def _checkpoint(rows: list[str], records: list[stages.Stage]) -> dict:
    history = [{"epoch": k + 1, "stage": name, "epoch_s": 10.0} for k, name in enumerate(rows)]
    return {"history": history, "stages": [record.record() for record in records]}


def test_a_new_run_pretrains_first_when_asked_and_fine_tunes_otherwise():
    first = stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, None)
    assert (first.name, first.first_epoch, first.last_epoch, first.time_limit, first.fresh) == ("pretrain", 1, 3, 600, True)
    assert first.pretrain_lines == ("shsy5y",) and first.record()["data"] == "livecell:shsy5y"
    plain = stages.next_stage(StageOptions(extra_data=("a.csv",)), 4, 900, None)
    assert (plain.name, plain.first_epoch, plain.last_epoch, plain.extra_data) == ("finetune", 1, 4, ("a.csv",))


def test_fine_tuning_follows_pretraining_at_the_next_epoch_number_even_if_time_cut_it_short():
    pretrain = stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, None)
    cut_short = _checkpoint(["pretrain", "pretrain"], [pretrain])  # 2 of 3 epochs: resumed, not skipped
    resumed = stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, cut_short)
    assert (resumed.name, resumed.first_epoch, resumed.fresh) == ("pretrain", 1, False)
    done = _checkpoint(["pretrain"] * 3, [pretrain])
    finetune = stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, done)
    assert (finetune.name, finetune.first_epoch, finetune.last_epoch, finetune.fresh) == ("finetune", 4, 7, True)
    assert finetune.time_limit == 900
    assert stages.stage_records(done, finetune) == [pretrain.record(), finetune.record()]


def test_resume_continues_the_fine_tuning_until_its_epochs_then_stops():
    pretrain = stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, None)
    finetune = stages.Stage("finetune", 4, 4, 900)
    halfway = _checkpoint(["pretrain"] * 3 + ["finetune"] * 2, [pretrain, finetune])
    resumed = stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, halfway)
    assert (resumed.name, resumed.first_epoch, resumed.last_epoch, resumed.fresh) == ("finetune", 4, 7, False)
    assert stages.stage_elapsed(halfway["history"], resumed) == 20.0
    finished = _checkpoint(["pretrain"] * 3 + ["finetune"] * 4, [pretrain, finetune])
    assert stages.next_stage(PRETRAIN, EPOCHS, TIME_LIMIT, finished) is None
    more = stages.next_stage(StageOptions(), 6, 900, finished)
    assert (more.name, more.last_epoch, more.fresh) == ("finetune", 9, False)  # --epochs raised: goes on


def test_new_pseudo_labels_start_a_round_and_the_same_ones_continue_it():
    finetune = stages.Stage("finetune", 1, 2, 900)
    finished = _checkpoint(["finetune"] * 2, [finetune])
    request = StageOptions(extra_data=("runs/x-pseudo-labels.csv",))
    first_round = stages.next_stage(request, 2, 300, finished)
    assert (first_round.name, first_round.first_epoch, first_round.fresh) == ("pseudo-1", 3, True)
    assert first_round.record()["extra_data"] == ["x-pseudo-labels.csv"]
    in_round = _checkpoint(["finetune"] * 2 + ["pseudo-1"], [finetune, first_round])
    continued = stages.next_stage(request, 2, 300, in_round)
    assert (continued.name, continued.first_epoch, continued.fresh) == ("pseudo-1", 3, False)
    with pytest.raises(ValueError, match="stage pseudo-1 trains on \\['x-pseudo-labels.csv'\\] too; pass them again"):
        stages.next_stage(StageOptions(), 2, 300, in_round)
    second = stages.next_stage(StageOptions(extra_data=("y.csv",)), 2, 300, in_round)
    assert (second.name, second.first_epoch) == ("pseudo-2", 4)


def test_a_checkpoint_of_an_older_kit_is_one_fine_tuning_stage():
    old = {"history": [{"epoch": 1, "epoch_s": 5.0}, {"epoch": 2, "epoch_s": 5.0}]}
    resumed = stages.next_stage(StageOptions(), 3, 300, old)
    assert (resumed.name, resumed.first_epoch, resumed.fresh) == ("finetune", 1, False)
    assert stages.stage_elapsed(old["history"], resumed) == 10.0
    with pytest.raises(ValueError, match="--pretrain-epochs must be >= 1"):
        stages.next_stage(StageOptions(pretrain="livecell", pretrain_epochs=0), 3, 300, None)


def test_the_pretraining_takes_the_run_s_time_limit_unless_given_its_own():
    first = stages.next_stage(StageOptions(pretrain="livecell"), EPOCHS, TIME_LIMIT, None)
    assert (first.name, first.time_limit, first.pretrain_lines) == ("pretrain", TIME_LIMIT, None)


def test_a_kernel_s_stages_are_named_by_the_constants_the_run_records():
    options = StageOptions(pretrain="livecell:a172", pseudo_round=True)
    assert options.names() == ["pretrain", "finetune", "pseudo-1"]
    assert StageOptions().names() == ["finetune"]
    with pytest.raises(ValueError, match="--min-confidence must be in"):
        StageOptions(min_confidence=1.5).checked()
