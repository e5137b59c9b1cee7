"""Typed run configuration: YAML files loaded into dataclasses, ``a.b=c`` overrides, validation on load.

One config tree per run (model / data / loss / train / eval / vqa). Every value is checked against the dataclass
field's type when it is loaded, and impossible combinations are refused before any work starts, with a message that
names the file (or the command-line override), the key, and the fix. The resolved tree is saved beside every run's
outputs (``save_config``) so a run can always be reproduced from its directory.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from tcl.atomic import write_text_atomic
from tcl.errors import ConfigError

Objective = Literal["infonce", "debiased_neg", "debiased_pos"]


@dataclass
class ModelConfig:
    """Architecture. Explicit sizes are always given; ``*_pretrained`` names where initial weights come from."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_mlp_ratio: float = 4.0
    # timm model name (loaded from the hub when the user has access) or a local checkpoint file; null = random init.
    vision_pretrained: Optional[str] = None
    # Patch embedding: linear patches (ViT, the official checkpoints) or a small convolutional stem with the same token
    # grid, which learns far faster from scratch on little data (the tiny configs).
    vision_stem: Literal["patch", "conv"] = "patch"
    # Initial position embeddings: timm's N(0, 0.02) (the official checkpoints), or a 2-D sine-cosine grid of
    # amplitude 1 (MAE). From scratch, N(0, 0.02) starts about 80 times smaller than the patch tokens; on the embedded
    # data the stronger start measured no VQA gain (docs/VQA_LIMITS_2026-11-29.md), so the tiny configs keep normal.
    pos_embed_init: Literal["normal", "sincos"] = "normal"
    # Global state that the contrastive features project and ITM classifies: the [CLS] token (TCL), or the mean of
    # the image's patch tokens, of the text's tokens and of the fused tokens. From scratch, every image's and every
    # text's [CLS] starts nearly the same, and ITM must first learn to gather the fused tokens into [CLS].
    feature_pool: Literal["cls", "mean"] = "cls"
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 64
    # Layers [0, fusion_layer) are the text encoder, [fusion_layer, num_hidden_layers) the fusion encoder.
    fusion_layer: int = 2
    # Initialisation of the layers and heads that are not loaded from a checkpoint: BERT's N(0, 0.02) (timm's in the
    # ViT), Xavier-uniform linear layers (embeddings stay N(0, 0.02)), or xavier_qk: BERT's with Xavier query/key
    # projections. From scratch, BERT's keeps attention uniform for hundreds of steps and all-Xavier averages every
    # caption's positions into one state (rank collapse); xavier_qk avoids both (tcl.models.bert.init_bert_weights,
    # docs/BENCHMARKS.md "Pretraining from scratch").
    init_scheme: Literal["bert", "xavier", "xavier_qk"] = "bert"
    hidden_dropout: float = 0.1
    # 0 lets the text and fusion layers' attention take PyTorch's fused SDPA kernels (docs/BENCHMARKS.md).
    attention_dropout: float = 0.1
    # Dropout in the momentum (teacher) encoders, as in TCL; false makes the teacher deterministic and its forward
    # cheaper (docs/BENCHMARKS.md).
    teacher_dropout: bool = True
    # Vocabulary size; null = taken from the tokenizer.
    vocab_size: Optional[int] = None
    # Hugging Face name or local directory of a BERT checkpoint (e.g. bert-base-uncased); null = random init.
    text_pretrained: Optional[str] = None
    embed_dim: int = 32
    temp: float = 0.07
    momentum: float = 0.995
    queue_size: int = 256
    max_text_len: int = 25
    mlm_probability: float = 0.15


@dataclass
class ShapesConfig:
    """Size of the embedded generated dataset (``tcl make-data``), used when ``data.root`` has no data yet."""

    train_images: int = 2000
    val_images: int = 500
    image_size: int = 64
    questions_per_image: int = 6
    seed: int = 0
    # Objects per image at most (1-4; fewer make an easier world).
    max_objects: int = 4
    # More relation questions for each training image with two objects or more ("is the red circle left of the blue
    # square?"): comparing two objects' places is the one skill the tiny model learns only from several times the
    # share of questions the other families need (with vqa_tiny, relation 65.7 % with the balanced share, 95.8 % with
    # three more; docs/BENCHMARKS.md, "Relation questions learnt"). The validation split keeps the shares equal.
    extra_relation_questions: int = 3


@dataclass
class DataConfig:
    """Where the data lives and how it is read."""

    root: str = "data/shapes"
    # What to do with a sample that cannot be read (missing/corrupt image, empty caption, unknown image id).
    on_bad_sample: Literal["skip", "error"] = "skip"
    # Tokenizer: Hugging Face name or local directory; null = the vocabulary built beside the data (<root>/tokenizer).
    tokenizer: Optional[str] = None
    num_workers: int = 2
    # Where Arrow indexes of annotation files are cached; null = $TCL_CACHE or ~/.cache/tcl.
    cache_dir: Optional[str] = None
    # Image directory relative to root (COCO layout: <image_root>/train2014/COCO_train2014_*.jpg).
    image_root: str = "images"
    # Image-text pairs: COCO captions files, ALBEF/TCL JSON lists, a Hugging Face datasets table, local WebDataset
    # tar shards read at random (shards), or WebDataset shards streamed (webdataset: local paths, pipe: commands,
    # URLs; each entry of pretrain_files is one source, and a .json entry, a COCO captions file or ALBEF list, joins
    # as a source of its own). Brace ranges such as shards/{00000..00099}.tar are expanded; tcl make-shards writes
    # shards.
    pretrain_source: Literal["coco", "albef_json", "hf", "shards", "webdataset"] = "coco"
    pretrain_files: list[str] = field(default_factory=lambda: ["annotations/captions_train2014.json"])
    # Streamed shards (webdataset): samples per epoch, all processes together (0 = the samples the shards' listings,
    # shards.json or img2dataset's *_stats.json, count: one pass over every source); the shuffle buffer of each
    # loader worker, in samples; and optional weights, one per entry of pretrain_files, to draw shards at random with
    # those weights (with replacement, as open_clip's resampled mode) instead of reading every shard once per pass.
    epoch_samples: int = 0
    shuffle_buffer: int = 1000
    source_weights: list[float] = field(default_factory=list)
    # COCO instances files (boxes) of the same images, read by the grounding and region classification terms
    # (loss.grounding_weight, loss.region_class_weight) only.
    pretrain_instances: list[str] = field(default_factory=list)
    hf_image_column: str = "image"
    hf_caption_column: str = "caption"
    # VQA: official v2 question/annotation files by split name, or ALBEF-style vqa_*.json lists.
    vqa_source: Literal["official", "albef_json"] = "official"
    vqa_train: list[str] = field(default_factory=lambda: ["train2014"])
    vqa_eval: str = "val2014"
    # Image root for Visual Genome entries ("dataset": "vg") of ALBEF-style lists.
    vg_root: Optional[str] = None
    # Extra VQA training data: ALBEF-style lists (e.g. vg_qa.json, entries with "dataset": "vg"), added to the
    # training questions of either vqa_source (TCL trains on VQA v2 + Visual Genome QA).
    vqa_extra_train: list[str] = field(default_factory=list)
    max_caption_words: int = 30
    max_question_words: int = 30
    crop_scale_min: float = 0.2
    hflip: bool = True
    color_jitter: bool = True
    randaugment: bool = True
    # Decompression-bomb guard: images with more pixels are refused before decoding.
    max_image_pixels: int = 89_478_485
    shapes: ShapesConfig = field(default_factory=ShapesConfig)


@dataclass
class LossConfig:
    """Loss terms and the swappable contrastive objective (TCL.md Part A §A.2)."""

    objective: Objective = "infonce"
    tau_plus: float = 0.1
    include_self: bool = True
    # UOTA weighting of the IMC image positives (TCL.md §A.2); uota_tau null = the feature dimension.
    uota: bool = False
    uota_tau: Optional[float] = None
    alpha: float = 0.4
    distill: bool = True
    # Weights of the three contrastive objectives; each direction enters as weight / 6 (TCL: mean of the six terms).
    cma_weight: float = 1.0
    imc_weight: float = 1.0
    lmi_weight: float = 1.0
    # LMI's image regions: adaptive 4 x 4 average pooling at any resolution (regions4), or TCL's pretraining code
    # (tcl_pretrain: kernel and stride int(sqrt(grid side)), 16 regions only at 256 px; 2 x 2 at a 4 x 4 grid).
    lmi_pooling: Literal["regions4", "tcl_pretrain"] = "regions4"
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    # ITM negatives: drawn by similarity (TCL's hard negatives) or uniformly from the batch. On data whose captions
    # often fit other images too, the hard ones are mostly such captions, and ITM then learns only its label prior.
    itm_negatives: Literal["hard", "random"] = "hard"
    # Which negatives ITM scores: ``both`` (TCL) a negative text for every image and a negative image for every text,
    # 3B fused pairs a batch; ``half`` a negative text for the first half of the batch and a negative image for the
    # second, 2B fused pairs with labels 1 : 1 (ITM's fusion passes are about a third of a tiny step's FLOPs).
    itm_negative_pairs: Literal["both", "half"] = "both"
    # A copy of a sample's own caption (another image's identical caption, in the batch or the queue) is neither an
    # ITM negative nor a contrastive negative of it (i2t, t2i, t2t): it is a match labelled a mismatch. TCL does not
    # check; COCO captions are nearly all distinct, while generated or web captions repeat (two thirds of the embedded
    # world's captions are shared by several images), and similarity sampling then prefers exactly those copies.
    skip_identical_captions: bool = False
    # Classes of interchangeable words (each word a single token of the vocabulary), e.g. colours, shape names.
    swap_word_classes: list[list[str]] = field(default_factory=list)
    # MLM also chooses each word of ``swap_word_classes`` with this probability (on top of model.mlm_probability
    # for every token): more masked words that can only be recovered from the image. 0 = TCL (BERT's uniform
    # masking).
    mlm_content_probability: float = 0.0
    # Grounding (X-VLM's box prediction, not a TCL term): the fusion encoder reads one object's phrase ("small red
    # circle", from data.pretrain_instances) against the image and a head predicts the object's box (L1 + GIoU), so
    # that the fusion encoder learns to find the object a phrase names and where it is. 0 = TCL.
    grounding_weight: float = 0.0
    # How many objects one grounding phrase names ("small red circle and large blue square"): the head predicts the
    # box of each, in the phrase's order, so that the fused state must say which object is where (what relation
    # questions compare). 1 = X-VLM's single object.
    grounding_objects: int = 1
    # Region classification (object labels, as detector-pretrained or ImageNet-supervised image towers have them;
    # not a TCL term): the online image tower's patch tokens inside each object's box (data.pretrain_instances) are
    # averaged and a linear head names the object's category, so that the tower itself has to tell the categories
    # apart. The from-scratch stand-in for TCL's DeiT, which starts from ImageNet labels. 0 = TCL.
    region_class_weight: float = 0.0
    # The region head's classes, in order: the instances files' category names (every one of them must be listed).
    region_categories: list[str] = field(default_factory=list)
    # Attribute classes the region head names too, each a softmax of its own over its words (the instances files'
    # "attributes", our addition to COCO's layout, as Visual Genome has them), e.g. [[red, green], [small, large]]:
    # a tower taught categories alone forgets what it is not asked (colours, here).
    region_attributes: list[list[str]] = field(default_factory=list)
    # The region head also names where each box's centre lies in the view: its column and its row among this many
    # equal bands (two more softmaxes), so that the tower's tokens have to say where they are, not only what they
    # show. 0 = off.
    region_position_bins: int = 0


@dataclass
class TrainConfig:
    """Optimisation and run bookkeeping."""

    output_dir: str = "runs/pretrain_tiny"
    epochs: int = 1
    # Caps the run at this many optimizer steps (smoke tests, budgets); null = no cap.
    max_steps: Optional[int] = None
    # Checkpoint every N optimizer steps (also at each epoch end); null = epoch ends only.
    save_every: Optional[int] = None
    keep_last: int = 2
    # Per-process batch size.
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 1e-4
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    weight_decay: float = 0.02
    # TCL's optimizer grouping decays the contrastive temperature (a 0-d tensor there); ours exempts it, as it does
    # every parameter of fewer than 2 dimensions.
    decay_temperature: bool = False
    # The cosine after the warm-up: updated every step (iteration), or held for each epoch as TCL's code does (epoch).
    lr_schedule: Literal["iteration", "epoch"] = "iteration"
    # AdamW's fused kernel (one pass over all parameters; the same update), where this PyTorch build has it for the
    # device; otherwise the foreach one, with a log line.
    fused_adamw: bool = True
    warmup_steps: int = 100
    grad_clip: Optional[float] = None
    # An optimizer step whose loss (or, with grad_clip, gradient norm) is NaN/Inf on any process is skipped with a
    # warning; this many skipped steps in a row stop the run with a message (the weights stay the last good ones).
    max_nonfinite_steps: int = 5
    # auto: the launcher's bf16/fp16 when it names one (accelerate launch --mixed_precision, or its config file),
    # else bf16 on a GPU that supports it, else fp32 (with TF32 matmuls on GPUs that have them). no / bf16 / fp16:
    # that precision, whatever the launcher says.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    grad_checkpointing: bool = False
    # torch.compile of the pretraining model's transformer encoders (online and momentum; in place, so checkpoints
    # keep their keys): the first steps are slower while it compiles. Measured by benchmarks/bench_train_loop.py.
    compile: bool = False
    # Deterministic kernels: bit-identical reruns and resumes on CPU (some multi-threaded backward kernels, such as
    # indexed accumulation, otherwise differ in the last bits between runs).
    deterministic: bool = False
    seed: int = 42
    # A metrics line (metrics.jsonl, TensorBoard, the progress bar's losses) every N optimizer steps and at the last:
    # reading a step's numbers waits for the device, so they are read only then.
    log_every: int = 10
    # Streamed data (data.pretrain_source = webdataset): write the keys of every micro-batch's samples to
    # sample_keys/rank<r>.jsonl ({"step", "micro", "keys"}), to audit what a step saw (after a resume too).
    log_sample_keys: bool = False
    # Seconds a collective may wait for the other processes (gloo and NCCL alike) before the run stops (over gloo
    # with a message naming the step and the last checkpoint; over NCCL torch's watchdog ends the process): a process
    # that died or hangs (a node taken away, a stopped process) then ends the job instead of holding every GPU. Long
    # enough for a checkpoint written to a slow shared filesystem; raise it (also on resume) if something a single
    # process does before a collective takes longer.
    process_group_timeout_s: int = 900


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = 64
    # Candidates re-ranked per question by the decoder head.
    k_test: int = 128
    # Cap on evaluated questions; null = all.
    max_questions: Optional[int] = None
    # Zero-shot retrieval, ITM and masked-word accuracy of a pretraining run, on a COCO captions file relative to
    # data.root (null = none): every ``every`` optimizer steps (null = only at the end) and at the end.
    retrieval_file: Optional[str] = "annotations/captions_val2014.json"
    retrieval_images: Optional[int] = 1000
    # Captions kept per image (the first ones; null = all). The generated world's first caption lists the scene.
    retrieval_captions_per_image: Optional[int] = None
    # Candidates per query re-ranked by ITM (TCL's Retrieval.py: 256 for COCO).
    retrieval_k_test: int = 256
    every: Optional[int] = None


@dataclass
class VQAConfig:
    """VQA fine-tuning."""

    head: Literal["classifier", "decoder"] = "classifier"
    # Answers seen at least this often in the training annotations form the answer vocabulary (real VQA v2: 9).
    min_answer_count: int = 1
    classifier_hidden: Optional[int] = None
    freeze_vision: bool = False
    # Keep the image encoder fixed only when it comes from a pretraining (vqa.init); one trained from scratch is
    # always trained. A small fine-tuning set otherwise wears away what the pretrained tower learnt about the
    # objects before the answer head can use it (docs/BENCHMARKS.md, "Region classification"). TCL trains it.
    freeze_pretrained_vision: bool = False
    max_train_questions: Optional[int] = None
    # Pretraining run folder (its latest checkpoint) or checkpoint folder to start from; null = random init
    # (the "from scratch" baseline).
    init: Optional[str] = None
    # Ranking score of the decoder head: full-sequence likelihood, or TCL's (first token counted twice).
    rank_score: Literal["sequence", "tcl"] = "sequence"
    # The decoder head's training answers: one per official normal form ("Yes", "yes." and "yes" are one, as the
    # metric counts them), or one per distinct string as TCL's dataset does (exact).
    merge_answers: Literal["normal_form", "exact"] = "normal_form"
    # Training batches made of whole images' questions, each image augmented once per epoch and encoded once for all
    # its questions: several times fewer image-encoder passes (VQA v2 has 5.4 questions per image). TCL samples
    # questions independently, so the paper configs keep it off.
    group_by_image: bool = False


@dataclass
class Config:
    """The whole run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    vqa: VQAConfig = field(default_factory=VQAConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                world_size: int | None = None) -> Config:
    """Loads a YAML config, applies ``a.b=c`` overrides and validates the result.

    Args:
        path: YAML file, or the name of a shipped config (``pretrain_tiny``: ``shipped_configs()``); None starts
            from the defaults. A file may name ``base:`` files (relative to it, or shipped names) that it extends.
        overrides: ``section.key=value`` strings; values are parsed as YAML (``train.batch_size=8``, ``x=null``).
        world_size: number of training processes, for the queue divisibility check; None reads ``WORLD_SIZE``
            (set by ``accelerate launch``) and defaults to 1.

    Raises:
        ConfigError: the first problem found, naming the file or override, the key and the fix.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config(path)
        raw = _read_with_bases(path, ())
    source = str(path) if path is not None else "<defaults>"
    config = _build(Config, raw, source, prefix="")
    for item in overrides or []:
        _apply_override(config, item)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if overrides:
        source = f"{source} (with overrides {' '.join(overrides)})"
    validate(config, source, world_size)
    return config


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML (the file can be loaded back with ``load_config``)."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# The configs shipped inside the package (the repository's configs/ is a link to this folder).
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
BASE_KEY = "base"


def shipped_configs() -> list[str]:
    """Names of the shipped configs, as commands accept them (``--config pretrain_tiny``)."""
    names = (p.relative_to(SHIPPED_CONFIGS).with_suffix("").as_posix() for p in SHIPPED_CONFIGS.rglob("*.yaml"))
    return sorted(name for name in names if not name.startswith("accelerate/"))  # those are accelerate's own


def resolve_config(path_or_name: str | os.PathLike) -> Path:
    """An existing YAML file as given, else a shipped config of that name (``pretrain_tiny``, ``vqa_tiny.yaml``,
    ``accelerate/cpu_multiprocess``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / (path if path.suffix in (".yaml", ".yml") else path.with_suffix(".yaml"))
    if not path.is_absolute() and shipped.is_file():
        return shipped
    raise ConfigError(f"{path_or_name}: config file not found. Pass a YAML file or the name of a shipped config: "
                      f"{', '.join(name for name in shipped_configs() if '/' not in name)}.")


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A config file's mapping over the files its ``base:`` names (each resolved next to it first, then among
    the shipped configs); later bases and the file itself win, section by section and key by key."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: '{BASE_KEY}' makes a loop ({' -> '.join(str(p) for p in seen + (path,))}).")
    raw = _read_yaml(path)
    bases = raw.pop(BASE_KEY, None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: '{BASE_KEY}' names config files (a name or a list of names), got {base!r}.")
        beside = path.parent / base
        _merge(merged, _read_with_bases(beside if beside.is_file() else resolve_config(base), seen + (path.resolve(),)))
    return _merge(merged, raw)


def _merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Pass an existing YAML file or a shipped config name.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", error)
        raise ConfigError(f"{where}: invalid YAML ({problem}). Fix the syntax there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, loss, train, eval, vqa).")
    return data


# Options removed from the code: (the value every run had unless asked otherwise, what became of it). A run folder's
# config.yaml written before the removal still loads: the key is dropped when it holds that value. Any other value,
# and any override of the key, is refused with the reason, so that no run silently does something else than asked.
# Each was last in commit 6f86a42; the docs keep what was measured.
RETIRED: dict[str, tuple[Any, str]] = {
    "model.pos_embed_scale": (1.0, "the sine-cosine grid's amplitude, no gain at 0.5: "
                                   "docs/BENCHMARKS.md, 'A third kind of machine'"),
    "loss.align_uniform_weight": (0.0, "an alignment-uniformity loss term that no config used and no run measured"),
    "data.grounding_phrases": ("full", "objects named by any sub-phrase that names them alone, no gain: "
                                       "docs/BENCHMARKS.md, 'A third kind of machine'"),
    "data.teacher_grayscale": (0.0, "the momentum view greyed with this probability, no gain: "
                                    "docs/BENCHMARKS.md, 'What the image tower keeps of shapes'"),
    "data.shapes.one_colour_scenes": (0.0, "scenes of one colour in the generated world, no gain: "
                                           "docs/BENCHMARKS.md, 'Two more shape levers'"),
    "loss.online_keys_steps": (0, "a from-scratch warm-up of CMA on in-batch online features that no config used "
                                  "and no finding kept"),
    "loss.intra_modal_warmup_steps": (0, "a ramp of IMC and LMI, no gain: "
                                         "docs/BENCHMARKS.md, 'What the image tower keeps of shapes'"),
    "loss.skip_same_image": (False, "no negatives from a row's own image, no gain: "
                                    "docs/BENCHMARKS.md, 'What the pretrained model knows'"),
    "loss.itm_swap_negatives": (0.0, "ITM negatives with one word swapped, no gain: "
                                     "docs/BENCHMARKS.md, 'What the pretrained model knows'"),
    "loss.cma_swap_negatives": (0.0, "CMA negatives with one word swapped, no gain: "
                                     "docs/BENCHMARKS.md, 'Two more shape levers'"),
}


def _retired(dotted: str, value: Any, source: str) -> None:
    """Accepts a retired key holding its old default (it is then left out); refuses anything else."""
    default, why = RETIRED[dotted]
    if value != default:
        raise ConfigError(f"{source}: '{dotted}' was removed after commit 6f86a42 ({why}). Only its old default "
                          f"({default}) is accepted, from run folders written before; leave it out.")


def section_from_dict(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Builds one config dataclass (e.g. ``ModelConfig``) from a mapping with the same checks as ``load_config``."""
    return _build(cls, raw, source, prefix)


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """Builds dataclass ``cls`` from a mapping, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields and f"{prefix}{key}" in RETIRED:
            _retired(f"{prefix}{key}", raw[key], source)
        elif key not in fields:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'. {_suggest(key, fields, prefix)}")
    values = {}
    for name, value in raw.items():
        if name not in fields:  # a retired key at its old default
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, source, f"{prefix}{name}")
    return cls(**values)


def _suggest(key: str, fields: dict[str, Any], prefix: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"Did you mean '{prefix}{close[0]}'? " if close else ""
    return f"{hint}Valid keys here: {', '.join(prefix + name for name in fields)}."


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Returns ``value`` if it matches type ``hint`` (ints are accepted for floats), else raises ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner[0], source, key)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted choice such as `no` as False
            value = next((arg for arg in args if isinstance(arg, str) and yaml.safe_load(arg) is value), value)
        if value not in args:
            choices = " | ".join(str(arg) for arg in args)
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {choices}. Set {key} to one of those.")
        return value
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, str):
                value = [value]
            else:
                raise ConfigError(f"{source}: {key} must be a list, got {value!r}. Write it as [a, b].")
        return [_coerce(item, args[0], source, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML reads "1e-4" (no dot) as a string; accept it as the number it obviously is.
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r} ({type(value).__name__}). "
                          f"Fix the value of {key}.")
    return value


def _apply_override(config: Config, item: str) -> None:
    source = f"command-line override '{item}'"
    if "=" not in item:
        raise ConfigError(f"{source}: expected section.key=value (e.g. train.batch_size=8).")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    node: Any = config
    if dotted.strip() in RETIRED:
        raise ConfigError(f"{source}: '{dotted.strip()}' was removed after commit 6f86a42 "
                          f"({RETIRED[dotted.strip()][1]}); leave it out.")
    for depth, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if name not in fields:
            prefix = ".".join(parts[:depth]) + "." if depth else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{name}'. {_suggest(name, fields, prefix)}")
        if depth == len(parts) - 1:
            hint = typing.get_type_hints(type(node))[name]
            try:
                value = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError as error:
                problem = str(error).splitlines()[0]
                raise ConfigError(f"{source}: {dotted} = {text!r} is not a YAML value ({problem}); quote strings "
                                  f"with braces or commas, e.g. {dotted}='[\"shards/{{00000..00099}}.tar\"]'.") \
                    from None
            if dataclasses.is_dataclass(hint):
                setattr(node, name, _build(hint, value, source, f"{dotted}."))
            else:
                setattr(node, name, _coerce(value, hint, source, dotted))
        else:
            node = getattr(node, name)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{source}: '{'.'.join(parts[:depth + 1])}' is a value, not a section.")


# ---------------------------------------------------------------------------------------------------------------------
# Validation of combinations


def validate(config: Config, source: str = "<config>", world_size: int = 1) -> None:
    """Refuses impossible combinations of values, each with the key to change and how."""
    for check in (_check_model, _check_loss, _check_train, _check_data):
        problem = check(config, world_size)
        if problem:
            raise ConfigError(f"{source}: {problem}")


def _check_model(config: Config, world_size: int) -> str | None:
    m = config.model
    positive = ["image_size", "patch_size", "vision_width", "vision_depth", "vision_heads", "hidden_size",
                "num_hidden_layers", "num_attention_heads", "intermediate_size", "embed_dim", "queue_size",
                "max_text_len", "max_position_embeddings"]
    for name in positive:
        if getattr(m, name) <= 0:
            return f"model.{name} = {getattr(m, name)} must be positive."
    if m.image_size % m.patch_size:
        return (f"model.image_size = {m.image_size} is not a multiple of model.patch_size = {m.patch_size}. "
                f"Use an image size divisible by the patch size.")
    if m.vision_width % m.vision_heads:
        return f"model.vision_width = {m.vision_width} is not divisible by model.vision_heads = {m.vision_heads}."
    if m.hidden_size % m.num_attention_heads:
        return (f"model.hidden_size = {m.hidden_size} is not divisible by model.num_attention_heads = "
                f"{m.num_attention_heads}.")
    if not 0 < m.fusion_layer < m.num_hidden_layers:
        return (f"model.fusion_layer = {m.fusion_layer} must lie in [1, model.num_hidden_layers - 1] = "
                f"[1, {m.num_hidden_layers - 1}] so that both the text and the fusion encoder have layers.")
    if m.max_text_len > m.max_position_embeddings:
        return (f"model.max_text_len = {m.max_text_len} exceeds model.max_position_embeddings = "
                f"{m.max_position_embeddings}. Lower max_text_len or raise max_position_embeddings.")
    if not 0.001 <= m.temp <= 0.5:
        return f"model.temp = {m.temp} lies outside the clamp range [0.001, 0.5]."
    if not 0.0 <= m.momentum < 1.0:
        return f"model.momentum = {m.momentum} must lie in [0, 1)."
    if not 0.0 < m.mlm_probability < 1.0:
        return f"model.mlm_probability = {m.mlm_probability} must lie in (0, 1)."
    return None


def _check_loss(config: Config, world_size: int) -> str | None:
    loss = config.loss
    if loss.objective == "debiased_pos" and not 0.0 < loss.tau_plus < 1.0:
        return (f"loss.tau_plus = {loss.tau_plus} must lie in (0, 1) for loss.objective = debiased_pos "
                f"(with tau_plus = 0 the loss is identically 0). Set loss.tau_plus=0.1, for example.")
    if loss.objective == "debiased_neg" and not 0.0 <= loss.tau_plus < 1.0:
        return f"loss.tau_plus = {loss.tau_plus} must lie in [0, 1) for loss.objective = debiased_neg."
    if not 0.0 <= loss.alpha <= 1.0:
        return f"loss.alpha = {loss.alpha} must lie in [0, 1]."
    if loss.uota_tau is not None and loss.uota_tau <= 0:
        return f"loss.uota_tau = {loss.uota_tau} must be positive (or null: the feature dimension)."
    if not 0.0 <= loss.mlm_content_probability <= 1.0:
        return f"loss.mlm_content_probability = {loss.mlm_content_probability} must lie in [0, 1]."
    if loss.mlm_content_probability > 0 and not loss.swap_word_classes:
        return ("loss.mlm_content_probability > 0 needs loss.swap_word_classes (the content words), e.g. "
                "[[red, green, blue], [circle, square]].")
    short = [words for words in loss.swap_word_classes if len(set(words)) < 2]
    if short:
        return f"loss.swap_word_classes: every class needs two or more words; {short[0]} has fewer."
    for name in ("cma_weight", "imc_weight", "lmi_weight", "itm_weight", "mlm_weight"):
        if getattr(loss, name) < 0:
            return f"loss.{name} = {getattr(loss, name)} must not be negative."
    return None


def _check_train(config: Config, world_size: int) -> str | None:
    train, queue = config.train, config.model.queue_size
    if train.batch_size <= 0:
        return f"train.batch_size = {train.batch_size} must be positive."
    per_step = train.batch_size * world_size
    if queue % per_step:
        fits = sorted({b for b in range(1, train.batch_size * 2 + 1) if queue % (b * world_size) == 0})[-3:]
        return (f"model.queue_size = {queue} is not divisible by train.batch_size x processes = "
                f"{train.batch_size} x {world_size} = {per_step} (every step enqueues that many features). "
                f"Change train.batch_size (e.g. to one of {fits}) or set model.queue_size to a multiple of {per_step}.")
    for name in ("epochs", "grad_accum_steps", "keep_last", "log_every", "max_nonfinite_steps",
                 "process_group_timeout_s"):
        if getattr(train, name) <= 0:
            return f"train.{name} = {getattr(train, name)} must be positive."
    for name in ("max_steps", "save_every"):
        value = getattr(train, name)
        if value is not None and value <= 0:
            return f"train.{name} = {value} must be positive (or null for no limit)."
    if train.warmup_steps < 0:
        return f"train.warmup_steps = {train.warmup_steps} must not be negative."
    if train.lr <= 0:
        return f"train.lr = {train.lr} must be positive."
    return None


def _check_data(config: Config, world_size: int) -> str | None:
    data = config.data
    if data.num_workers < 0:
        return f"data.num_workers = {data.num_workers} must not be negative."
    if not 0.0 < data.crop_scale_min <= 1.0:
        return f"data.crop_scale_min = {data.crop_scale_min} must lie in (0, 1]."
    if data.max_image_pixels <= 0:
        return f"data.max_image_pixels = {data.max_image_pixels} must be positive."
    if not data.pretrain_files:
        return "data.pretrain_files is empty. List at least one annotation file (relative to data.root)."
    if data.epoch_samples < 0 or data.shuffle_buffer < 1:
        return (f"data.epoch_samples = {data.epoch_samples} must not be negative and data.shuffle_buffer = "
                f"{data.shuffle_buffer} must be at least 1.")
    if data.source_weights and (data.pretrain_source != "webdataset" or
                                len(data.source_weights) != len(data.pretrain_files)):
        return (f"data.source_weights ({len(data.source_weights)} weights) weighs streamed sources: set "
                f"data.pretrain_source = webdataset and give one weight per entry of data.pretrain_files "
                f"({len(data.pretrain_files)}).")
    if any(weight < 0 for weight in data.source_weights) or (data.source_weights and not any(data.source_weights)):
        return f"data.source_weights = {data.source_weights}: weights must not be negative, and one must be positive."
    if config.train.log_sample_keys and data.pretrain_source != "webdataset":
        return ("train.log_sample_keys records the keys of streamed samples: it needs data.pretrain_source = "
                "webdataset.")
    box_terms = [name for name in ("region_class_weight", "grounding_weight") if getattr(config.loss, name) > 0]
    if box_terms and (data.pretrain_source != "coco" or not data.pretrain_instances):
        return (f"{' and '.join(f'loss.{name}' for name in box_terms)} > 0 need{'s' * (len(box_terms) == 1)} boxes: "
                f"data.pretrain_source = coco and data.pretrain_instances listing COCO instances files (e.g. "
                f"[annotations/instances_train2014.json]); or turn {'them' if len(box_terms) > 1 else 'the term'} "
                f"off with {' '.join(f'loss.{name}=0' for name in box_terms)}.")
    for name in ("grounding_weight", "region_class_weight"):
        weight = getattr(config.loss, name)
        if weight < 0:
            return f"loss.{name} = {weight} must not be negative."
        if weight > 0 and (data.hflip or data.randaugment):
            return (f"loss.{name} > 0 needs data.hflip = false and data.randaugment = false: boxes follow "
                    "the crop only.")
    if config.loss.region_class_weight > 0 and not config.loss.region_categories:
        return ("loss.region_class_weight > 0 needs loss.region_categories: the instances files' category names, in "
                "the head's order (e.g. [circle, square, triangle, cross] for the generated world).")
    if config.loss.grounding_objects < 1:
        return f"loss.grounding_objects = {config.loss.grounding_objects} must be at least 1."
    if config.loss.region_position_bins < 0 or (config.loss.region_position_bins == 1):
        return (f"loss.region_position_bins = {config.loss.region_position_bins}: give 0 (off) or at least 2 bands "
                "per axis (e.g. 4).")
    if config.eval.k_test <= 0:
        return f"eval.k_test = {config.eval.k_test} must be positive."
    for name in ("retrieval_images", "retrieval_captions_per_image", "every"):
        value = getattr(config.eval, name)
        if value is not None and value <= 0:
            return f"eval.{name} = {value} must be positive (or null)."
    if config.eval.retrieval_images is not None and config.eval.retrieval_images < 2:
        return "eval.retrieval_images must be at least 2 (retrieval ranks images against each other)."
    if config.eval.retrieval_k_test <= 0:
        return f"eval.retrieval_k_test = {config.eval.retrieval_k_test} must be positive."
    if config.vqa.min_answer_count <= 0:
        return f"vqa.min_answer_count = {config.vqa.min_answer_count} must be positive."
    return None
