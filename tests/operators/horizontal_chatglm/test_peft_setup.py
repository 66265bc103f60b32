"""peft set-up: LoRA with explicit or "auto" targets, P-tuning v2 as PREFIX_TUNING, clear errors."""
import pytest

from xfed.errors import ConfigError, ModelError
from xfed.operators.horizontal_chatglm.config import Peft
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft, build_peft_config


def _model(tiny_glm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_glm))


def test_auto_targets_the_attention_projections(tiny_glm):
    config = build_peft_config(_model(tiny_glm), Peft.model_validate({"LORA": {"r": 4, "target_modules": "auto"}}))
    assert sorted(config.target_modules) == ["k_proj", "q_proj", "v_proj"]


def test_xfl_query_key_value_maps_onto_split_projections(tiny_glm):
    config = build_peft_config(_model(tiny_glm), Peft.model_validate({"LORA": {"r": 4, "target_modules": ["query_key_value"]}}))
    assert sorted(config.target_modules) == ["k_proj", "q_proj", "v_proj"]


def test_unknown_target_module_lists_the_linear_modules_the_model_has(tiny_glm):
    with pytest.raises(ModelError, match=r"c_fc.*q_proj"):
        build_peft_config(_model(tiny_glm), Peft.model_validate({"LORA": {"r": 4, "target_modules": ["c_fc"]}}))


def _validated(peft: dict):
    from xfed.operators.horizontal_chatglm.config import validated_params

    return validated_params({"peft": peft, "aggregation": {"agg_steps": 1}}, "node-1")


def test_exactly_one_peft_kind():
    with pytest.raises(ConfigError, match="exactly one of LORA, PREFIX_TUNING"):
        _validated({"LORA": {}, "PREFIX_TUNING": {}})
    with pytest.raises(ConfigError, match="exactly one"):
        _validated({})


def test_xfl_lora_keys_are_accepted(tiny_glm):
    section = {"task_type": "CAUSAL_LM", "r": 8, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 32,
               "lora_dropout": 0.1, "fan_in_fan_out": False, "bias": "none", "modules_to_save": None}
    peft_model = apply_peft(_model(tiny_glm), Peft.model_validate({"LORA": section}))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("projection", [False, True])
def test_pre_seq_len_becomes_virtual_tokens(tiny_glm, projection):
    peft_model = apply_peft(_model(tiny_glm), Peft.model_validate(
        {"PREFIX_TUNING": {"task_type": "CAUSAL_LM", "pre_seq_len": 6, "prefix_projection": projection}}))
    config = peft_model.peft_config["default"]
    assert config.num_virtual_tokens == 6 and config.prefix_projection is projection
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("transform" in n for n in trainable) is projection


def test_bad_pre_seq_len_is_a_config_error():
    with pytest.raises(ConfigError, match="pre_seq_len"):
        _validated({"PREFIX_TUNING": {"pre_seq_len": 0}})


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_reaches_attention_memorises_and_generates_what_it_learned(tiny_glm, projection):
    """The prefix path end to end on a native GLM: every trainable tensor gets a gradient, the prefix changes the
    output, a few examples are memorised, and greedy generation from a left-padded batch (positions from the
    attention mask) reproduces them, i.e. training and generation see the prefix at the same positions."""
    import torch
    from transformers import AutoTokenizer

    from xfed.operators.horizontal_chatglm import collate, data
    from xfed.operators.horizontal_chatglm.training import greedy_answers

    tok = AutoTokenizer.from_pretrained(str(tiny_glm))
    torch.manual_seed(0)
    model = _model(tiny_glm)
    with torch.no_grad():  # a random head of std 0.02 after a final norm caps every logit near 0.6: no adapter
        model.lm_head.weight.mul_(50)  # could memorise anything through it; a trained model's head is larger
    peft_model = apply_peft(model, Peft.model_validate({"PREFIX_TUNING": {"pre_seq_len": 8, "prefix_projection": projection}}))
    examples = [data.Example(prompt=f"{q}=", answer=a) for q, a in
                [("1+1", "2"), ("cat?", "meow"), ("a", "zz9"), ("hello world", "hi")]]  # unequal prompt lengths
    params = {"max_src_length": 20, "max_dst_length": 8}
    batch = collate.make_collator(tok)(data.build_features(examples, tok, params, family="auto"))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=3e-2 if projection else 1e-1)  # a bare prefix needs the larger rate
    peft_model.train()
    first = None
    for _ in range(120):
        loss = peft_model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        if first is None:
            first = float(loss)
            assert all(float(p.grad.abs().sum()) > 0 for p in trainable)
        optimizer.step()
    assert float(loss) < 0.05 * first, (first, float(loss))
    prompts = [ids for ids, _ in data.build_prompts(examples, tok, params, family="auto")]
    assert greedy_answers(peft_model, tok, prompts, max_new_tokens=6, batch_size=4) == [e.answer for e in examples]
    with torch.no_grad():
        before = peft_model(**batch).logits
        for p in trainable:
            p.add_(torch.randn_like(p))
        assert float((peft_model(**batch).logits - before).abs().max()) > 1e-2


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_init_std_draws_the_prefix_embedding_at_that_scale_reproducibly(tiny_glm, projection):
    import torch

    def embedding(std):
        torch.manual_seed(7)
        section = {"pre_seq_len": 64, "prefix_projection": projection, **({} if std is None else {"prefix_init_std": std})}
        peft_model = apply_peft(_model(tiny_glm), Peft.model_validate({"PREFIX_TUNING": section}))
        return peft_model.prompt_encoder["default"].embedding.weight.detach().clone()

    default, small, again = embedding(None), embedding(0.1), embedding(0.1)
    assert 0.95 < float(default.std()) < 1.05  # nn.Embedding's N(0, 1), THUDM's and peft's start
    assert 0.095 < float(small.std()) < 0.105 and abs(float(small.mean())) < 0.005
    assert torch.equal(small, again)  # seeded: every party (and a rerun) draws the same prefix
    assert not torch.allclose(small * 10, default)  # a fresh draw, not the default rescaled


def test_prefix_init_std_is_validated_and_lora_has_none():
    with pytest.raises(ConfigError, match="prefix_init_std"):
        _validated({"PREFIX_TUNING": {"prefix_init_std": 0}})
    with pytest.raises(ConfigError, match="prefix_init_std"):
        _validated({"PREFIX_TUNING": {"prefix_init_std": "small"}})
    assert Peft.model_validate({"LORA": {}}).prefix_init_std is None
    assert Peft.model_validate({"PREFIX_TUNING": {"prefix_init_std": 0.1}}).prefix_init_std == 0.1
    # not a peft PrefixTuningConfig field: it must not reach peft's constructor
    assert "prefix_init_std" not in Peft.model_validate({"PREFIX_TUNING": {"prefix_init_std": 0.1}}).config_kwargs()
