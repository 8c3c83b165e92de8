"""The command line's model settings kept over a checkpoint's hyperparameters (pure logic)."""

from __future__ import annotations

from jsonargparse import Namespace

from fellrec.typed_settings import restore_typed_settings, typed_model_leaves


def test_typed_leaves_of_flags_and_json_values() -> None:
    args = ["test", "--model.lr=0.1", "--data.seed", "1", "--model.items", '{"ids": false}']
    args += ["--model.dp_sgd.noise_multiplier", "1.1", "--model.lora", "{r: 4, extra: {a: 1}}"]
    assert typed_model_leaves(args) == [
        "model.lr",
        "model.items.ids",
        "model.dp_sgd.noise_multiplier",
        "model.lora.r",
        "model.lora.extra.a",
    ]
    assert typed_model_leaves(["--model.items", "{not yaml"]) == ["model.items"]
    assert typed_model_leaves(["--model.items", "cold_start: text_ridge"]) == [
        "model.items.cold_start"
    ]
    assert typed_model_leaves(["--model.target_modules+", "k"]) == ["model.target_modules"]
    assert typed_model_leaves(["fit", "--ckpt_path", "last"]) == []


def _config(**model: object) -> Namespace:
    return Namespace(model=Namespace(**model))


def test_only_the_typed_leaf_comes_back_and_the_checkpoints_others_stay() -> None:
    typed = _config(lr=0.1, items=Namespace(ids=True, bias=True, cold_start="text_ridge"))
    merged = _config(lr=0.5, items=Namespace(ids=False, bias=False, cold_start="none"))
    restored = restore_typed_settings(typed, merged, ["model.items.cold_start"])
    assert restored == [("model.items.cold_start", "none", "text_ridge")]
    # The checkpoint's architecture (ids, bias) and its other settings are kept.
    assert merged["model.items"] == Namespace(ids=False, bias=False, cold_start="text_ridge")
    assert merged.model.lr == 0.5


def test_a_section_the_checkpoint_left_empty_comes_back_whole() -> None:
    typed = _config(dp_sgd=Namespace(noise_multiplier=1.1, max_grad_norm=2.0))
    merged = _config(dp_sgd=None)
    restored = restore_typed_settings(typed, merged, ["model.dp_sgd.noise_multiplier"])
    assert restored == [("model.dp_sgd", None, typed.model.dp_sgd)]
    assert merged.model.dp_sgd == Namespace(noise_multiplier=1.1, max_grad_norm=2.0)
    assert merged.model.dp_sgd is not typed.model.dp_sgd  # a copy, not shared


def test_equal_values_unknown_keys_and_init_args_shorthand() -> None:
    typed = _config(lr=0.1, strategy=Namespace(class_path="FedProx", init_args=Namespace(mu=0.3)))
    merged = _config(lr=0.1, strategy=Namespace(class_path="FedProx", init_args=Namespace(mu=0.01)))
    restored = restore_typed_settings(
        typed, merged, ["model.lr", "model.strategy.mu", "model.nonexistent"]
    )
    assert restored == [("model.strategy.init_args.mu", 0.01, 0.3)]
    assert merged.model.strategy.init_args.mu == 0.3


def test_a_string_that_reads_as_a_mapping_and_a_class_path_come_back_whole() -> None:
    typed = _config(
        item_text="{categories}",
        strategy=Namespace(class_path="FedAvg", init_args=Namespace()),
    )
    merged = _config(
        item_text="{title}",
        strategy=Namespace(class_path="FedProx", init_args=Namespace(mu=0.01)),
    )
    leaves = typed_model_leaves(
        ["--model.item_text", "{categories}", "--model.strategy", '{"class_path": "FedAvg"}']
    )
    assert leaves == ["model.item_text.categories", "model.strategy.class_path"]
    restore_typed_settings(typed, merged, leaves)
    assert merged.model.item_text == "{categories}"
    assert merged.model.strategy == Namespace(class_path="FedAvg", init_args=Namespace())
