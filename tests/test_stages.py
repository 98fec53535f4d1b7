"""kit.stages: which stage a run trains next, from the command line and its last checkpoint."""
from __future__ import annotations

import pytest

from kit import stages

PRETRAIN = stages.StageRequest(pretrain=("shsy5y",), pretrain_epochs=3, pretrain_time_limit=600, epochs=4,
                               time_limit=900)


def _checkpoint(rows: list[str], records: list[stages.Stage]) -> dict:
    history = [{"epoch": k + 1, "stage": name, "epoch_s": 10.0} for k, name in enumerate(rows)]
    return {"history": history, "stages": [record.record() for record in records]}


def test_a_new_run_pretrains_first_when_asked_and_fine_tunes_otherwise():
    first = stages.next_stage(PRETRAIN, None)
    assert (first.name, first.first_epoch, first.last_epoch, first.time_limit, first.fresh) == ("pretrain", 1, 3, 600, True)
    assert first.pretrain_lines == ("shsy5y",) and first.record()["data"] == "livecell:shsy5y"
    plain = stages.next_stage(stages.StageRequest(epochs=4, time_limit=900, extra_data=("a.csv",)), None)
    assert (plain.name, plain.first_epoch, plain.last_epoch, plain.extra_data) == ("finetune", 1, 4, ("a.csv",))


def test_fine_tuning_follows_pretraining_at_the_next_epoch_number_even_if_time_cut_it_short():
    pretrain = stages.next_stage(PRETRAIN, None)
    cut_short = _checkpoint(["pretrain", "pretrain"], [pretrain])  # 2 of 3 epochs: resumed, not skipped
    resumed = stages.next_stage(PRETRAIN, cut_short)
    assert (resumed.name, resumed.first_epoch, resumed.fresh) == ("pretrain", 1, False)
    done = _checkpoint(["pretrain"] * 3, [pretrain])
    finetune = stages.next_stage(PRETRAIN, done)
    assert (finetune.name, finetune.first_epoch, finetune.last_epoch, finetune.fresh) == ("finetune", 4, 7, True)
    assert finetune.time_limit == 900
    assert stages.stage_records(done, finetune) == [pretrain.record(), finetune.record()]


def test_resume_continues_the_fine_tuning_until_its_epochs_then_stops():
    pretrain = stages.next_stage(PRETRAIN, None)
    finetune = stages.Stage("finetune", 4, 4, 900)
    halfway = _checkpoint(["pretrain"] * 3 + ["finetune"] * 2, [pretrain, finetune])
    resumed = stages.next_stage(PRETRAIN, halfway)
    assert (resumed.name, resumed.first_epoch, resumed.last_epoch, resumed.fresh) == ("finetune", 4, 7, False)
    assert stages.stage_elapsed(halfway["history"], resumed) == 20.0
    finished = _checkpoint(["pretrain"] * 3 + ["finetune"] * 4, [pretrain, finetune])
    assert stages.next_stage(PRETRAIN, finished) is None
    more = stages.next_stage(stages.StageRequest(epochs=6, time_limit=900), finished)
    assert (more.name, more.last_epoch, more.fresh) == ("finetune", 9, False)  # --epochs raised: goes on


def test_new_pseudo_labels_start_a_round_and_the_same_ones_continue_it():
    finetune = stages.Stage("finetune", 1, 2, 900)
    finished = _checkpoint(["finetune"] * 2, [finetune])
    request = stages.StageRequest(epochs=2, time_limit=300, extra_data=("runs/x-pseudo-labels.csv",))
    first_round = stages.next_stage(request, finished)
    assert (first_round.name, first_round.first_epoch, first_round.fresh) == ("pseudo-1", 3, True)
    assert first_round.record()["extra_data"] == ["x-pseudo-labels.csv"]
    in_round = _checkpoint(["finetune"] * 2 + ["pseudo-1"], [finetune, first_round])
    continued = stages.next_stage(request, in_round)
    assert (continued.name, continued.first_epoch, continued.fresh) == ("pseudo-1", 3, False)
    with pytest.raises(ValueError, match="stage pseudo-1 trains on \\['x-pseudo-labels.csv'\\] too; pass them again"):
        stages.next_stage(stages.StageRequest(epochs=2), in_round)
    second = stages.next_stage(stages.StageRequest(epochs=2, extra_data=("y.csv",)), in_round)
    assert (second.name, second.first_epoch) == ("pseudo-2", 4)


def test_a_checkpoint_of_an_older_kit_is_one_fine_tuning_stage():
    old = {"history": [{"epoch": 1, "epoch_s": 5.0}, {"epoch": 2, "epoch_s": 5.0}]}
    resumed = stages.next_stage(stages.StageRequest(epochs=3), old)
    assert (resumed.name, resumed.first_epoch, resumed.fresh) == ("finetune", 1, False)
    assert stages.stage_elapsed(old["history"], resumed) == 10.0
    with pytest.raises(ValueError, match="--pretrain-epochs must be >= 1"):
        stages.next_stage(stages.StageRequest(pretrain=None, pretrain_epochs=0), None)
