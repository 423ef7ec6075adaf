"""TOML configs: every shipped one loads; each bad key, type or mismatch is a one-line error naming it."""
import copy
import tomllib

import pytest

from infra.errors import UserError
from priors import PRIORS
from tests.helpers import (ONE_THREAD_ENV, REPO, TINY_CONFIG, assert_user_error, run_main, run_script,
                           write_tiny_config, write_tiny_latents)
from training.config import config_from_dict, load_config

SHIPPED = sorted((REPO / "config").rglob("*.toml"))


def tiny_table():
    return tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny"))


def error_of(edit):
    """The error message of the tiny config after `edit(table)`."""
    table = copy.deepcopy(tiny_table())
    edit(table)
    with pytest.raises(UserError) as e:
        config_from_dict(table)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_config_dir_ships_the_digits_default():
    assert REPO / "config" / "digits.toml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "config")))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.vocab_size >= 2 and len(cfg.data.latent_shape) == 2
    assert cfg.path == str(path)


def test_tiny_config_parses_into_typed_sections():
    cfg = config_from_dict(tiny_table())
    assert cfg.prior.unroll_steps == 2 and cfg.trainer.batch_size == 8
    assert cfg.trainer.learning_rate == pytest.approx(3e-3) and cfg.vocab_size == 5
    assert cfg.latent_shape == (4, 4) and cfg.net.depth == [1, 1, 1] and cfg.net.conditional
    assert cfg.sampling.steps == 6 and cfg.sampling.nb_samples == 4
    assert cfg.trainer.ema_decay == 0.9 and cfg.vqgan is None


def test_int_is_accepted_where_a_float_is_expected():
    table = tiny_table()
    table["trainer"]["learning_rate"] = 1
    lr = config_from_dict(table).trainer.learning_rate
    assert lr == 1.0 and isinstance(lr, float)


def test_original_aliases_vocabulary_size_and_square_sequence_length():
    table = tiny_table()
    data = table["data"]
    data["vocabulary_size"] = data.pop("vocab_size")
    data["sequence_length"] = 64
    del data["latent_shape"]
    cfg = config_from_dict(table)
    assert cfg.vocab_size == 5 and cfg.latent_shape == (8, 8)


def test_vqgan_latent_shape_alone_sets_the_grid():
    table = tiny_table()
    del table["data"]["latent_shape"]
    table["vqgan"] = {"config": "v.yaml", "checkpoint": "v.ckpt", "latent_shape": [16, 8]}
    assert config_from_dict(table).latent_shape == (16, 8)


def test_nb_batches_sets_the_eval_batches():
    table = tiny_table()
    table["trainer"]["nb_batches"] = [1000, 7]
    assert config_from_dict(table).trainer.eval_batches == 7


@pytest.mark.parametrize("edit, fragments", [
    (lambda t: t.update(unrol_steps=2), ["unknown key 'unrol_steps'", "did you mean 'unroll_steps'"]),
    (lambda t: t.update(optimiser={"lr": 1}), ["unknown key 'optimiser'"]),
    (lambda t: t["trainer"].update(learning_rat=1e-3),
     ["unknown key 'trainer.learning_rat'", "did you mean 'learning_rate'"]),
    (lambda t: t["net"].update(nb_head=2), ["'net.nb_head'", "did you mean 'nb_heads'"]),
    (lambda t: t["sampling"].update(temprature=0.9), ["'sampling.temprature'", "did you mean 'temperature'"]),
    (lambda t: t["data"].update(zzz=1), ["unknown key 'data.zzz'"]),
], ids=["top-level", "unknown-section", "trainer", "net", "sampling", "no-suggestion"])
def test_unknown_keys_are_named(edit, fragments):
    message = error_of(edit)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("section, key, value, fragment", [
    ("trainer", "batch_size", "8", "trainer.batch_size: expected int, got '8'"),
    ("trainer", "batch_size", 8.0, "trainer.batch_size: expected int"),
    ("trainer", "batch_size", True, "trainer.batch_size: expected int"),
    ("trainer", "learning_rate", "fast", "trainer.learning_rate: expected float"),
    ("net", "use_rotary", 1, "net.use_rotary: expected bool"),
    ("net", "dim", [32], "net.dim: expected int"),
    ("data", "latent_shape", [4, "4"], "data.latent_shape[1]: expected int, got '4'"),
    ("data", "latent_shape", 16, "data.latent_shape: expected list[int >= 1], got 16"),
    ("net", "depth", "deep", "net.depth: expected int >= 0 or list, got 'deep'"),
    ("trainer", "betas", [0.9, "x"], "trainer.betas[1]: expected float"),
    ("data", "root", 3, "data.root: expected str, got 3"),
    ("sampling", "steps", 2.5, "sampling.steps: expected int"),
    (None, "unroll_steps", "2", "unroll_steps: expected int"),
    (None, "trainer", 3, "trainer: expected a table, got 3"),
])
def test_wrong_types_are_named(section, key, value, fragment):
    def edit(table):
        (table[section] if section else table)[key] = value
    assert fragment in error_of(edit)


def drop(section, key):
    return lambda t: t[section].pop(key)


@pytest.mark.parametrize("edit, fragments", [
    (lambda t: t["data"].update(vocabulary_size=6), ["data.vocab_size (5)", "data.vocabulary_size (6)", "disagree"]),
    (drop("data", "vocab_size"), ["data.vocab_size: required"]),
    (lambda t: t["data"].update(vocab_size=1), ["data.vocab_size: expected int >= 2, got 1"]),
    (lambda t: (t["data"].pop("latent_shape"), t["data"].update(sequence_length=12)),
     ["data.sequence_length", "12 is not a square"]),
    (lambda t: t["data"].update(sequence_length=15), ["data.sequence_length (15)", "[4, 4]"]),
    (drop("data", "latent_shape"), ["data.latent_shape: required"]),
    (lambda t: t["data"].update(latent_shape=[4, 4, 4]), ["data.latent_shape: expected list[int >= 1] with 2 items, got [4, 4, 4]"]),
    (lambda t: t.update(vqgan={"config": "v.yaml", "checkpoint": "v.ckpt", "latent_shape": [8, 8]}),
     ["data.latent_shape [4, 4]", "vqgan.latent_shape [8, 8]", "disagree"]),
    (lambda t: t.update(vqgan={"config": "v.yaml"}), ["missing key 'vqgan.checkpoint'"]),
    (drop("data", "root"), ["data.root: required"]),
    (lambda t: t["data"].update(train_root="x"), ["either root or train_root"]),
    (lambda t: t["data"].update(split_sizes=[0.9]), ["data.split_sizes"]),
    (drop("net", "num_classes"), ["net.num_classes: required", "net.conditional"]),
    (lambda t: t["net"].update(type="lstm"), ["net.type", "'lstm'"]),
    (lambda t: t["net"].update(dim_head=6), ["net.dim_head: expected a multiple of 4", "got 6"]),
    (lambda t: t["net"].update(updown_sample_type="cubic"), ["net.updown_sample_type", "'cubic'"]),
    (lambda t: t["trainer"].update(lr_scheduler_name="step"), ["trainer.lr_scheduler_name", "'step'"]),
    (lambda t: t["trainer"].update(precision="64"), ["trainer.precision", "'64'"]),
    (lambda t: t["trainer"].update(ema_decay=1.0), ["trainer.ema_decay"]),
    (lambda t: t["trainer"].update(batch_size=0), ["trainer.batch_size"]),
    (lambda t: t["trainer"].update(checkpoint_frequency=0), ["trainer.checkpoint_frequency"]),
    (lambda t: t.update(unroll_steps=0), ["unroll_steps: expected int >= 1, got 0"]),
    (lambda t: t["sampling"].update(steps=0), ["sampling.steps: expected int >= 1, got 0"]),
    (lambda t: t["sampling"].update(temperature=0.0), ["sampling.temperature: expected float > 0, got 0.0"]),
    (lambda t: t["sampling"].update(end_temperature=-1.0), ["sampling.end_temperature: expected float > 0, got -1.0"]),
    (lambda t: t["sampling"].update(sample_proportion=1.5), ["sampling.sample_proportion: expected float in (0, 1], got 1.5"]),
    (lambda t: t["sampling"].update(end_sample_proportion=0.0), ["sampling.end_sample_proportion: expected float in (0, 1], got 0.0"]),
    (lambda t: t["sampling"].update(nb_samples=0), ["sampling.nb_samples"]),
])
def test_bad_values_and_mismatches_are_named(edit, fragments):
    message = error_of(edit)
    for fragment in fragments:
        assert fragment in message, message


def test_load_config_prefixes_the_file_and_reports_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TINY_CONFIG.format(runs="r", data="d").replace("batch_size = 8", "batch_size = '8'"))
    with pytest.raises(UserError, match=r"bad\.toml: trainer\.batch_size"):
        load_config(path)
    path.write_text("[trainer\n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


# --- through train.py ------------------------------------------------------------------------

def test_train_cli_bad_config_exits_2_with_one_error_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TINY_CONFIG.format(runs=tmp_path / "runs", data=tmp_path / "data")
                    .replace("learning_rate", "learning_rat"))
    proc = run_script("train.py", "--cfg-path", path, env=ONE_THREAD_ENV)
    assert_user_error(proc, "bad.toml", "learning_rat", "learning_rate")
    assert not (tmp_path / "runs").exists()


def test_train_vocab_size_disagreeing_with_dataset_exits_2(tmp_path):
    path = write_tiny_config(tmp_path)  # the dataset has codebook size 5
    path.write_text(path.read_text().replace("vocab_size = 5", "vocab_size = 6"))
    proc = run_main("train.py", "--cfg-path", path)
    assert_user_error(proc, "data.vocab_size = 6", "codebook size 5")
    assert not (tmp_path / "runs").exists()


def test_train_latent_shape_disagreeing_with_dataset_exits_2(tmp_path):
    path = write_tiny_config(tmp_path)
    path.write_text(path.read_text().replace("latent_shape = [4, 4]", "latent_shape = [8, 8]"))
    assert_user_error(run_main("train.py", "--cfg-path", path), "[8, 8]", "[4, 4]")


def test_train_latent_shape_the_hourglass_cannot_divide_exits_2(tmp_path):
    write_tiny_latents(tmp_path / "latents", shape=(3, 3))
    path = write_tiny_config(tmp_path, TINY_CONFIG.replace("latent_shape = [4, 4]", "latent_shape = [3, 3]"))
    proc = run_main("train.py", "--cfg-path", path)
    assert_user_error(proc, "tiny.toml", "latent shape [3, 3]", "shorten_factor 4")
    assert not (tmp_path / "runs").exists()  # nothing written for a config that cannot train


def test_original_keys_that_do_nothing_load_with_one_warning_each(capsys):
    table = tiny_table()
    table["trainer"]["metric_names"] = ["accuracy"]
    table["net"]["use_scalenorm"] = True
    table["sampling"]["sample_frequency"] = 100
    cfg = config_from_dict(table, source="orig.toml")
    assert cfg.trainer.metric_names == ["accuracy"] and cfg.net.use_scalenorm
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        "warning: orig.toml: trainer.metric_names is accepted for compatibility and ignored "
        "(loss and accuracy are always logged)",
        "warning: orig.toml: sampling.sample_frequency is accepted for compatibility and ignored "
        "(every evaluation draws a sample grid)",
        "warning: orig.toml: net.use_scalenorm is accepted for compatibility and ignored "
        "(every block uses LayerNorm)",
    ]
    config_from_dict(tiny_table())
    assert capsys.readouterr().err == ""  # nothing to say when they are not set


# --- [prior] and [sampling]: the configured prior's own settings -------------------------------

def with_prior(kind, **prior):
    """The tiny table as a `kind` prior: the sundae-only keys dropped, a net it can use, `prior`
    added to [prior]."""
    table = tiny_table()
    if kind != "sundae":
        del table["unroll_steps"], table["sampling"]["min_steps"]
    if kind == "autoregressive":
        del table["sampling"]["steps"]
        table["net"].update(type="vanilla", depth=2)
    table["prior"] = {"type": kind, **prior}
    return table


@pytest.mark.parametrize("edit, fragments", [
    (lambda t: t["sampling"].update(sample_proportion=0.5),
     ["sampling.sample_proportion: a setting of sundae priors, but prior.type = 'autoregressive'"]),
    (lambda t: t["sampling"].update(steps=64),  # an AR grid takes h * w forwards: steps would be ignored
     ["sampling.steps: a setting of sundae and absorbing priors, but prior.type = 'autoregressive'"]),
    (lambda t: t["sampling"].update(guidance_scale=2.0),
     ["sampling.guidance_scale: a setting of sundae and absorbing priors"]),
    (lambda t: t["prior"].update(loss_type="elbo"),
     ["prior.loss_type: a setting of absorbing priors, but prior.type = 'autoregressive'"]),
    (lambda t: t.update(unroll_steps=2), ["unroll_steps: a setting of sundae priors, but prior.type = 'autoregressive'"]),
    (lambda t: t["sampling"].update(top_kk=3), ["unknown key 'sampling.top_kk'", "did you mean 'top_k'"]),
    (lambda t: t["prior"].update(type="gpt"), ["prior.type: expected one of 'sundae', 'absorbing', 'autoregressive'"]),
], ids=["sundae-key", "steps", "guidance", "absorbing-key", "top-level-unroll", "misspelt", "unknown-type"])
def test_a_key_of_another_prior_is_an_error_naming_it(edit, fragments):
    table = with_prior("autoregressive")
    edit(table)
    with pytest.raises(UserError) as e:
        config_from_dict(table)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_each_prior_reads_its_own_settings_classes():
    for kind in PRIORS:
        cfg = config_from_dict(with_prior(kind))
        assert type(cfg.prior) is PRIORS[kind].Training and type(cfg.sampling) is PRIORS[kind].Sampling
        assert cfg.prior.type == kind
    assert config_from_dict(tiny_table()).prior.unroll_steps == 2  # the original layout's top-level key
    table = with_prior("sundae", unroll_steps=3)
    del table["unroll_steps"]
    assert config_from_dict(table).prior.unroll_steps == 3
    table = tiny_table()
    table["prior"] = {"unroll_steps": 3}
    with pytest.raises(UserError, match="unroll_steps: given at the top and in .prior.; keep one"):
        config_from_dict(table)


def test_sampling_keys_in_prior_move_to_sampling_with_a_deprecation_line(capsys):
    cfg = config_from_dict(with_prior("absorbing", decoder="maskgit", choice_temperature=2.0), source="old.toml")
    assert cfg.sampling.decoder == "maskgit" and cfg.sampling.choice_temperature == 2.0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: old.toml: prior.{key} is a sampling setting now: read as sampling.{key} (move it there)"
        for key in ("decoder", "choice_temperature")]
    cfg = config_from_dict(with_prior("autoregressive", top_k=5))
    assert cfg.sampling.top_k == 5
    table = with_prior("autoregressive", top_k=5)
    table["sampling"]["top_k"] = 7
    with pytest.raises(UserError, match="prior.top_k: a sampling setting, given in .prior. and .sampling.; keep sampling.top_k"):
        config_from_dict(table)


def test_a_setting_of_the_other_decoder_is_an_error():
    table = with_prior("absorbing")
    table["sampling"].update(decoder="unleashing", choice_temperature=2.0)
    with pytest.raises(UserError, match="sampling.choice_temperature: a setting of the maskgit decoder"):
        config_from_dict(table)


def test_a_net_the_prior_cannot_use_is_named():
    table = with_prior("autoregressive")
    table["net"].update(type="hourglass", depth=[1, 1, 1])
    with pytest.raises(UserError, match="net.type: an autoregressive prior takes net.type 'vanilla' or 'transformer', "
                                        "got 'hourglass'"):
        config_from_dict(table)
