"""Training config: recipes, overrides, did-you-mean for keys, value checks, CLI flags."""

from __future__ import annotations

import pytest
import yaml

from bloodcell import ConfigError
from bloodcell.cli.main import main
from bloodcell.networks import list_models
from bloodcell.training.config import TrainConfig, config_keys, load_config, parse_set, recipe_names


@pytest.mark.parametrize("name", [n for n in recipe_names() if not n.startswith("ensemble")])
def test_every_recipe_loads_and_names_a_registered_model(name):
    cfg = load_config(recipe=name)
    assert cfg.model in list_models()
    assert cfg.epochs >= 1 and cfg.batch_size >= 1


def test_the_ensemble_recipe_lists_three_architectures():
    from bloodcell.training.config import read_yaml, recipe_path

    recipe = read_yaml(recipe_path("ensemble_3arch"))
    members = [load_config(recipe=m).model for m in recipe["members"]]
    assert members == ["efficientnet_b3", "mobilenetv2_100", "resnet50"]
    with pytest.raises(ConfigError, match=r"recipe ensemble_3arch is an ensemble recipe .*bloodcell train --recipe"):
        load_config(recipe="ensemble_3arch")


def test_study_recipes_use_the_study_settings():
    for name in ("basic_cnn", "basic_cnn_augmented", "complex_cnn", "enhanced_cnn", "resnet50"):
        cfg = load_config(recipe=name)
        assert (cfg.image_size, cfg.batch_size, cfg.optimizer, cfg.epochs, cfg.patience) == (224, 16, "adam", 50, 10)
    assert not load_config(recipe="basic_cnn").augment.any()
    aug = load_config(recipe="basic_cnn_augmented").augment
    assert aug.hflip and aug.vflip and aug.rotate > 0


def test_overrides_win_over_the_recipe_and_are_typed():
    cfg = load_config(recipe="enhanced_cnn", overrides={"image_size": "64", "lr": "3e-4", "augment.hflip": "false",
                                                        "pretrained": "false"})
    assert (cfg.image_size, cfg.lr, cfg.augment.hflip, cfg.pretrained) == (64, 3e-4, False, False)
    assert load_config(overrides={"pretrained": "weights/x.safetensors"}).pretrained == "weights/x.safetensors"
    assert load_config(overrides={"image_size": "null"}).image_size is None
    assert parse_set(["lr=0.01", "augment.rotate=15"]) == {"lr": 0.01, "augment.rotate": 15}


def test_defaults_are_not_shared_between_configs():
    a, b = TrainConfig(), TrainConfig()
    a.augment.hflip = True
    assert not b.augment.hflip


@pytest.mark.parametrize(
    "key, suggestion",
    [("epoch", "epochs"), ("batchsize", "batch_size"), ("augment.hflp", "augment.hflip"), ("hflip", "augment.hflip"),
     ("lable_smoothing", "label_smoothing")],
)
def test_unknown_key_suggests(key, suggestion):
    with pytest.raises(ConfigError, match=rf"Unknown config key '{key}' \(command line\)\. Did you mean .*'{suggestion}'"):
        load_config(overrides={key: 1})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epochs", "ten", r"epochs: expected an integer, got 'ten'.*Fix: e\.g\. --set epochs=10"),
        ("epochs", 0, r"epochs: expected a value >= 1"),
        ("optimizer", "sgd", r"optimizer: expected one of adam, adamw"),
        ("schedule", "cosin", r"did you mean 'cosine'"),
        ("lr", 0, r"lr: expected a value > 0"),
        ("lr", "fast", r"lr: expected a number"),
        ("image_size", 4, r"image_size: expected a value >= 8"),
        ("augment.hflip", "maybe", r"augment\.hflip: expected true or false"),
        ("monitor", "accuracy", r"monitor: expected one of val_loss, val_acc, val_macro_f1"),
    ],
)
def test_bad_values_say_expected_got_fix(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={key: value})


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("model: basic_cnn\nepochz: 3\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'epochz' \(file .*mine\.yaml\)\. Did you mean 'epochs'"):
        load_config(config=bad)
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: not valid YAML"):
        load_config(config=bad)
    with pytest.raises(ConfigError, match=r"Unknown recipe 'enhanced'\. Did you mean 'enhanced_cnn'"):
        load_config(recipe="enhanced")


def test_cli_flags_and_set_reach_the_config(capsys):
    code = main(["train", "--recipe", "cpu_fast_cnn", "--lr", "1e-4", "--augment.hflip", "false", "--augment.vflip",
                 "--set", "epochs=2", "--image-size", "48", "--show-config"])
    assert code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["lr"], cfg["epochs"], cfg["image_size"], cfg["model"]) == (1e-4, 2, 48, "enhanced_cnn")
    assert cfg["augment"]["hflip"] is False and cfg["augment"]["vflip"] is True
    assert set(config_keys()) >= {"lr", "augment.stain", "monitor", "class_weights"}


def test_cli_unknown_flag_and_bad_value(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--learning-rat", "3", "--show-config"])
    assert e.value.code == 2
    assert "unknown option --learning-rat" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epoch", "3", "--show-config"])
    err = capsys.readouterr().err
    assert "Did you mean --epochs" in err
    assert main(["train", "--epochs", "many", "--show-config"]) == 2
    assert "epochs: expected an integer, got 'many'" in capsys.readouterr().err


def test_list_recipes(capsys):
    assert main(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "cpu_fast_lite0" in out and "study's model 2" in out
