"""A task's tuned defaults (conf/tuned/<task>.yaml, conf/tuned_model/<task>_<model>.yaml) override the
groups' defaults; the command line overrides both."""

from astroscale_fl import config, run_config


def test_survey_task_brings_its_tuned_defaults_and_the_command_line_still_wins():
    tuned = run_config.validate(config.compose(["task=survey_redshift"]))
    assert (tuned.train.lr, tuned.federation.num_rounds, tuned.federation.patience) == (0.003, 100, 20)
    assert tuned.federation.select == "best" and tuned.strategy.name == "fedavg" and tuned.model.dropout == 0.1
    given = run_config.validate(config.compose(["task=survey_redshift", "train.lr=0.001", "federation.patience=null",
                                            "federation.num_rounds=7", "model=linear"]))
    assert (given.train.lr, given.federation.num_rounds, given.federation.patience) == (0.001, 7, None)
    assert "dropout" not in given.model  # the MLP's tuned dropout does not follow another model
    plain = run_config.validate(config.compose([]))  # hipparcos_absmag: only its rounds and patience are its own
    assert (plain.train.lr, plain.federation.num_rounds, plain.federation.patience, plain.model.dropout) == (0.001, 100, 10, 0.0)
    catalog = run_config.validate(config.compose(["task=catalog", "task.path=x.csv", "task.features=[a]", "task.target=y"]))
    assert (catalog.federation.num_rounds, catalog.federation.patience) == (20, None)  # no tuned file: the groups' defaults
