"""Hugging Face Marian (opus-mt) interop: import their checkpoints, export ours.

A Marian directory holds config.json (MarianConfig), model.safetensors or pytorch_model.bin,
source.spm / target.spm (SentencePiece models) and vocab.json (the shared piece -> id map).

Import maps MarianConfig onto `ModelConfig` (post-norm, Marian's split sinusoids, scaled tied
embeddings, final logits bias, activation, decoder start = pad) and renames the weights; the
SentencePiece models become `tokenizers` Unigram models laid out in vocab.json's id order, so
no sentencepiece is needed at run time (it is needed once, to read the .spm files: the
`tui-translate[marian]` extra). Export writes the reverse, with SentencePiece models built from
our BPE vocabulary, so `transformers.MarianMTModel` / `MarianTokenizer` and CTranslate2 load it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .atomic import check_output_dir, write_dir
from .checkpoint import (MAX_TOKENIZER_BYTES, MODEL_DIR_FILES, LoadedModel, ModelLoadError, check_config_against_weights, check_finite,
                         load_model_dir, read_file_bytes, read_json_file, safetensors_header, write_model_files,
                         write_safetensors)
from .config import ConfigError, ModelConfig
from .model import Transformer
from .results import WORD_START
from .tokenizer import Tokenizer

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "silu", "gelu_new": "gelu_new"}
MARIAN_FILES = ("config.json", "source.spm", "target.spm", "vocab.json")
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", "source.spm", "target.spm",
                "vocab.json", "tokenizer_config.json", "README.md")  # a stale pytorch_model.bin would be loaded too


def is_marian_dir(path: Path) -> bool:
    """Any of a Marian directory's own files: a missing one is then reported by its name, not as config.json's."""
    return any((path / f).exists() for f in ("source.spm", "target.spm", "vocab.json"))


# -- config ---------------------------------------------------------------------------------------
def config_from_marian(cfg: dict[str, Any], unk_id: int, where: Path, bos_id: int | None = None) -> ModelConfig:
    def need(key):
        if key not in cfg:
            raise ModelLoadError(f"{where}: MarianConfig lacks {key!r}")
        return cfg[key]

    if cfg.get("model_type") not in (None, "marian"):
        raise ModelLoadError(f"{where}: model_type {cfg.get('model_type')!r} is not a Marian model")
    if need("encoder_attention_heads") != need("decoder_attention_heads"):
        raise ModelLoadError(f"{where}: different encoder/decoder head counts are not supported")
    if need("encoder_ffn_dim") != need("decoder_ffn_dim"):
        raise ModelLoadError(f"{where}: different encoder/decoder ffn sizes are not supported")
    if cfg.get("decoder_vocab_size", need("vocab_size")) != cfg["vocab_size"] or not cfg.get("share_encoder_decoder_embeddings", True):
        raise ModelLoadError(f"{where}: separate source/target vocabularies are not supported")
    if cfg.get("normalize_before", False) or cfg.get("add_final_layer_norm", False) or cfg.get("normalize_embedding", False):
        raise ModelLoadError(f"{where}: pre-norm / embedding-norm Marian variants are not supported")
    act = need("activation_function")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ModelLoadError(f"{where}: activation {act!r} is not supported")
    try:
        return ModelConfig(
            vocab_size=need("vocab_size"), d_model=need("d_model"), n_heads=cfg["encoder_attention_heads"],
            n_encoder_layers=need("encoder_layers"), n_decoder_layers=need("decoder_layers"), d_ff=cfg["encoder_ffn_dim"],
            activation=ACTIVATIONS[act], dropout=cfg.get("dropout", 0.1), attention_dropout=cfg.get("attention_dropout", 0.0),
            activation_dropout=cfg.get("activation_dropout", 0.0), max_positions=need("max_position_embeddings"),
            norm_placement="post", scale_embedding=bool(cfg.get("scale_embedding", False)), share_embeddings=True,
            tie_output=bool(cfg.get("tie_word_embeddings", True)), final_logits_bias=True, position_layout="split",
            pad_id=need("pad_token_id"), bos_id=cfg["pad_token_id"] if bos_id is None else bos_id, eos_id=need("eos_token_id"),
            unk_id=unk_id,
            decoder_start_id=cfg.get("decoder_start_token_id", cfg["pad_token_id"]),
        )
    except (ConfigError, TypeError) as e:
        raise ModelLoadError(f"{where}: {e}") from None


def config_to_marian(c: ModelConfig) -> dict[str, Any]:
    if c.norm_placement != "post" or c.position_layout != "split" or not c.share_embeddings:
        raise ModelLoadError("only post-norm models with Marian's split sinusoid layout and shared embeddings export to Marian "
                             f"(this model: norm={c.norm_placement}, positions={c.position_layout})")
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian", "vocab_size": c.vocab_size, "decoder_vocab_size": c.vocab_size,
        "d_model": c.d_model, "encoder_layers": c.n_encoder_layers, "decoder_layers": c.n_decoder_layers,
        "encoder_attention_heads": c.n_heads, "decoder_attention_heads": c.n_heads, "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.d_ff, "activation_function": c.activation, "dropout": c.dropout,
        "attention_dropout": c.attention_dropout, "activation_dropout": c.activation_dropout,
        "max_position_embeddings": c.max_positions, "scale_embedding": c.scale_embedding, "pad_token_id": c.pad_id,
        "eos_token_id": c.eos_id, "forced_eos_token_id": c.eos_id, "decoder_start_token_id": c.decoder_start_id,
        "bos_token_id": None, "share_encoder_decoder_embeddings": True, "tie_word_embeddings": c.tie_output,
        "static_position_embeddings": True, "is_encoder_decoder": True, "init_std": 0.02, "use_cache": True,
    }


# -- weights --------------------------------------------------------------------------------------
_SUB = {"self_attn_layer_norm": "self_attn_res.norm", "encoder_attn_layer_norm": "cross_attn_res.norm",
        "final_layer_norm": "ffn_res.norm", "encoder_attn": "cross_attn", "fc1": "ffn.fc1", "fc2": "ffn.fc2"}


def hf_to_ours_name(name: str) -> str | None:
    """'model.encoder.layers.0.fc1.weight' -> 'encoder_layers.0.ffn.fc1.weight'; None for derived tensors."""
    if name == "final_logits_bias":
        return "logits_bias"
    if name in ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        return "src_embed.weight"
    if "embed_positions" in name:
        return None  # sinusoidal: computed, not loaded
    m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.([^.]+)\.(.+)", name)
    if not m:
        return "?" + name
    side, i, part, rest = m.groups()
    return f"{side}_layers.{i}.{_SUB.get(part, part)}.{rest}"


def ours_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_ours_name` over a state dict (tied copies and positions left out)."""
    inverse = sorted(((v, k) for k, v in _SUB.items()), key=lambda kv: -len(kv[0]))
    out = {}
    for name, t in state.items():
        if name == "logits_bias":
            out["final_logits_bias"] = t
        elif name == "src_embed.weight":
            out["model.shared.weight"] = t
        else:
            stack, i, rest = name.split(".", 2)  # "encoder_layers", "0", "ffn.fc1.weight"
            for ours, hf in inverse:
                if rest.startswith(ours + "."):
                    rest = hf + rest[len(ours):]
                    break
            out[f"model.{stack.split('_')[0]}.layers.{i}.{rest}"] = t
    return {k: v.contiguous() for k, v in out.items()}


def read_marian_weights(path: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors renamed to ours, checked against `config` (names, shapes, dtypes, and the
    sizes config.json asks for) before any model is allocated, and finite."""
    st, binary = path / "model.safetensors", path / "pytorch_model.bin"
    if st.exists() or st.is_symlink():
        file = st
        hf_shapes = safetensors_header(st)
    elif binary.exists() or binary.is_symlink():  # never unpickle arbitrary objects
        file = binary
        try:
            if not binary.is_file():
                raise ModelLoadError(f"{binary}: not a regular file")
            try:  # mapped, not read: sizes are checked before anything is allocated
                state = torch.load(binary, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be mapped
                state = torch.load(binary, map_location="cpu", weights_only=True)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{binary}: cannot read weights ({_first_line(e)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelLoadError(f"{binary}: not a state dict of tensors")
        dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
        hf_shapes = {k: (dtypes.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in state.items()}
    else:
        raise ModelLoadError(f"{path}: missing model.safetensors (or pytorch_model.bin)")
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    hf_name: dict[str, str] = {}
    for name, (dtype, shape) in hf_shapes.items():
        ours = hf_to_ours_name(name)
        if ours is None:
            continue
        if ours.startswith("?"):
            raise ModelLoadError(f"{file}: unexpected tensor {name!r} (not a MarianMTModel checkpoint?)")
        if ours in shapes and shapes[ours][1] != shape:
            raise ModelLoadError(f"{file}: tensors {hf_name[ours]} and {name} should be the same shared embedding")
        shapes[ours], hf_name[ours] = (dtype, shape), hf_name.get(ours, name)
    check_config_against_weights(config, shapes, file, path / "config.json", name_of=lambda k: hf_name.get(k, k))
    if file is st:
        try:
            state = load_file(str(st))
        except Exception as e:
            raise ModelLoadError(f"{st}: cannot read weights ({_first_line(e)})") from None
    out = {ours: state[name].float() for ours, name in hf_name.items()}
    check_finite(out, file, name_of=lambda k: hf_name.get(k, k))
    return out


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e).strip() else type(e).__name__


# -- tokenizers -----------------------------------------------------------------------------------
def spm_to_tokenizers(spm_path: Path, vocab: dict[str, int]):
    """A SentencePiece model -> a `tokenizers` Unigram model whose ids are vocab.json's ids."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise ModelLoadError(f"{spm_path}: reading Marian SentencePiece models needs `pip install 'tui-translate[marian]'`") from None
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    data = read_file_bytes(spm_path, MAX_TOKENIZER_BYTES)
    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
    except Exception as e:
        raise ModelLoadError(f"{spm_path}: not a SentencePiece model ({str(e).splitlines()[0][:120]})") from None
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i))}
    floor = min(scores.values(), default=0.0) - 20.0  # pieces this side never produced: all but unusable
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ModelLoadError(f"{spm_path.parent / 'vocab.json'}: ids are not 0..{len(ids) - 1}")
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    specials = [p for p, _ in by_id if p.startswith("<") and p.endswith(">")]
    if _spm_is_bpe(data):
        # BPE: merges ordered by the score of the merged piece (as SentencePiece applies them)
        merges = []
        for piece, score in sorted(scores.items(), key=lambda kv: -kv[1]):
            for i in range(1, len(piece)):
                left, right = piece[:i], piece[i:]
                if left in scores and right in scores:
                    merges.append((score, vocab.get(piece, 0), left, right))
        merges.sort(key=lambda m: (-m[0], m[1]))
        model = models.BPE({p: i for p, i in by_id}, [(a, b) for _, _, a, b in merges], unk_token="<unk>", fuse_unk=True)
    else:
        model = models.Unigram([(p, scores.get(p, floor)) for p, _ in by_id], unk_id=vocab.get("<unk>", 0), byte_fallback=False)
    tk = HFTokenizer(model)
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tk.add_special_tokens(specials)
    return tk


def _spm_is_bpe(data: bytes) -> bool:
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # protobuf missing: opus-mt models are all unigram
        return False
    proto = pb.ModelProto()
    proto.ParseFromString(data)
    return proto.trainer_spec.model_type == pb.TrainerSpec.BPE


def bpe_to_spm_bytes(tokenizer: Tokenizer) -> bytes:
    """Our BPE vocabulary as a SentencePiece BPE model (piece scores = merge order)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    data = json.loads(tokenizer.source.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = data["model"].get("merges", [])
    rank = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(vocab)
    proto.trainer_spec.unk_id = tokenizer.unk_id
    proto.trainer_spec.pad_id = -1
    proto.trainer_spec.bos_id = -1
    proto.trainer_spec.eos_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        sp = proto.pieces.add()
        sp.piece = piece
        if i == tokenizer.unk_id:
            sp.type = pb.ModelProto.SentencePiece.UNKNOWN
        elif piece.startswith("<") and piece.endswith(">"):
            sp.type = pb.ModelProto.SentencePiece.CONTROL
        else:
            sp.type = pb.ModelProto.SentencePiece.NORMAL
        sp.score = -float(rank.get(piece, -1) + 1) if piece in rank else 0.0
    return proto.SerializeToString()


# -- import / export ------------------------------------------------------------------------------
def load_marian(path: str | Path) -> LoadedModel:
    """Load a Hugging Face Marian directory directly into this project's model."""
    path = Path(path).expanduser()
    for f in MARIAN_FILES:
        if not (path / f).exists():
            raise ModelLoadError(f"{path / f}: missing (a Marian directory needs {', '.join(MARIAN_FILES)} and model weights)")
    cfg = read_json_file(path / "config.json")
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path / 'config.json'}: expected a JSON object (a MarianConfig)")
    vocab = read_json_file(path / "vocab.json", MAX_TOKENIZER_BYTES)
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
        raise ModelLoadError(f"{path / 'vocab.json'}: expected an object mapping pieces to integer ids")
    if "<unk>" not in vocab:
        raise ModelLoadError(f"{path / 'vocab.json'}: no <unk> entry")
    config = config_from_marian(cfg, vocab["<unk>"], path / "config.json", vocab.get("<s>"))
    if len(vocab) != config.vocab_size:
        raise ModelLoadError(f"{path / 'vocab.json'}: {len(vocab)} entries but config.json says vocab_size={config.vocab_size}")
    tok = Tokenizer(spm_to_tokenizers(path / "source.spm", vocab), spm_to_tokenizers(path / "target.spm", vocab))
    state = read_marian_weights(path, config)
    model = Transformer(config)
    model.load_state_dict(state, strict=False)
    model.eval()
    from .hub import display_name, language_pair

    langs = language_pair(path)  # tokenizer_config.json, else the directory's (or Hub repo's) name: opus-mt-de-en
    meta = {"name": display_name(path), "source_lang": langs[0] if langs else "?", "target_lang": langs[1] if langs else "?",
            "imported_from": "marian"}
    return LoadedModel(model, tok, config, path, meta)


def import_marian(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """Convert a Marian directory into a model directory at `out`: refused if `out` is `src` or is not
    empty (unless `force`: then only the model directory's own files are replaced)."""
    check_output_dir(out, force, [src])
    loaded = load_marian(src)
    card = (f"# {loaded.meta['name']}\n\nImported from the Hugging Face Marian checkpoint `{loaded.meta['name']}` with "
            "`tui-translate import-marian`. See the original model card for data, licence and scores.\n")
    return write_dir(lambda tmp: write_model_files(tmp, loaded.model, loaded.tokenizer, card, loaded.meta), out, force,
                     MODEL_DIR_FILES, [src])


def export_marian(model_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write a Marian directory that transformers (MarianMTModel, MarianTokenizer) and CTranslate2 load.

    Marian keeps <pad> as the last id and CTranslate2 relies on it, so the vocabulary is permuted
    to put pad last (ids differ from ours; pieces and outputs do not). CTranslate2 starts the
    decoder from a zero embedding, which equals ours when the model's decoder start token is pad
    (train with --marian-compatible). `out` must not be `model_dir` and must be empty or absent unless
    `force` (then only the files of a Marian directory are replaced)."""
    check_output_dir(out, force, [model_dir])
    loaded = load_model_dir(model_dir)
    c = loaded.config
    config_to_marian(c)  # refuses architectures Marian cannot represent
    order = [i for i in range(c.vocab_size) if i != c.pad_id] + [c.pad_id]  # new id -> old id
    new_id = {old: new for new, old in enumerate(order)}
    index = torch.tensor(order)
    permuted = ModelConfig.from_dict({**c.to_dict(), "pad_id": new_id[c.pad_id], "bos_id": new_id[c.bos_id],
                                      "eos_id": new_id[c.eos_id], "unk_id": new_id[c.unk_id],
                                      "decoder_start_id": new_id[c.decoder_start_id]})
    hf_config = config_to_marian(permuted)
    state = {k: v.detach().float() for k, v in loaded.model.state_dict().items()
             if k not in ("tgt_embed.weight", "output_proj.weight")}
    state["src_embed.weight"] = state["src_embed.weight"].index_select(0, index)
    bias = state.get("logits_bias", torch.zeros(1, c.vocab_size))
    state["logits_bias"] = bias.index_select(1, index)
    tok = loaded.tokenizer
    vocab = {tok.target.id_to_token(old): new for new, old in enumerate(order)}
    pad_piece = tok.target.id_to_token(c.pad_id)

    def build(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({
            "bad_words_ids": [[permuted.pad_id]], "decoder_start_token_id": permuted.decoder_start_id,
            "eos_token_id": permuted.eos_id, "forced_eos_token_id": permuted.eos_id, "pad_token_id": permuted.pad_id,
            "max_length": c.max_positions, "num_beams": 5}, indent=2))
        write_safetensors(ours_to_hf(state), tmp / "model.safetensors", metadata={"format": "pt"})
        spm_bytes = bpe_to_spm_bytes(tok)
        (tmp / "source.spm").write_bytes(spm_bytes)
        (tmp / "target.spm").write_bytes(spm_bytes)
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "MarianTokenizer", "source_lang": loaded.meta.get("source_lang"),
            "target_lang": loaded.meta.get("target_lang"), "model_max_length": c.max_positions,
            "eos_token": "</s>", "unk_token": "<unk>", "pad_token": pad_piece}, indent=2))
        card = Path(model_dir) / "README.md"
        if card.exists():
            shutil.copyfile(card, tmp / "README.md")

    return write_dir(build, out, force, EXPORT_FILES, [model_dir])
