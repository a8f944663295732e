"""Writes notebooks/NN_*.ipynb from the cell lists below (outputs stripped). The .ipynb files are the
product and are committed; edit here, then run `python scripts/build_notebooks.py`. A fork points the
notebooks' install cell and Colab badges at itself by changing tangpoem.resources.REPO_URL and re-running.

A cell is ("md", text), ("code", text) or ("parameters", text): the one cell papermill overrides; a code
cell may carry tags, ("code", text, [tags]), which tests/test_notebooks.py reads in the executed notebooks:
"figure" (the cell shows a PNG), "training" (the loop: a few log lines), "demo-..." (a demo whose output must
show what its prose says). The parameters cells are generated from the config's fields: every knob is None
(keep the config file's value), with its help text and the homework's value beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from tangpoem.config import FIELDS, Config
from tangpoem.resources import REPO_URL, colab_badge

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
DEFAULTS = Config()


def header(name: str, title: str, intro: str) -> list[tuple[str, str]]:
    badge = colab_badge(f"{name}.ipynb")
    return [("md", f"# {title}\n\n{badge}\n\n{intro}")]


PARAMS_MD = ("md", """## 參數 Parameters

這一格是 papermill 的 `parameters` 格：所有可調的旋鈕都在這裡。`config_file` 是起點（`None` = 作業的設定，Breeze-7B；
也可以是內建設定檔的名字，例如 `"nano-cpu"`、`"breeze-colab-t4"`）；旋鈕是 `None` 就沿用設定檔的值，設了值就蓋過它。
註解裡寫著作業的值。

Every knob lives in this cell (tagged `parameters`). `config_file` gives the starting values (None: the
homework's, Breeze-7B; or a shipped config such as `"nano-cpu"`); a knob left at `None` keeps the file's
value, a knob you set overrides it. The comments give the homework's values. `tangpoem notebooks run` sets
`config_file` for you.""")

INSTALL_MD = ("md", """## 安裝 Install (Colab)

在 Colab 的新執行環境裡從 GitHub 安裝 tangpoem；已經裝好（例如在 CI 或本機）時這格什麼都不做。
In a fresh Colab runtime this installs tangpoem from the repository; where it is importable it does nothing.""")

INSTALL = f'''import importlib.util

if importlib.util.find_spec("tangpoem") is None:  # only in a fresh runtime (Colab)
    %pip install -q "tangpoem[notebooks] @ git+{REPO_URL}"'''

CONFIG_MD = ("md", """## 設定 Config

把參數組成一個 `Config`（驗證過：打錯的值會在這裡就被擋下），並印出每個值從哪裡來。每本筆記本都在新的 kernel 裡執行，
彼此只透過 `output_dir` 裡的檔案溝通；在 Colab 裡（`mount_drive = None` 就是「在 Colab 就掛載」）`output_dir` 會放到 Google Drive。

The parameters become one validated `Config`, printed with where each value came from. Each notebook runs
in a fresh kernel; they share state only through files in `output_dir`, which in Colab lives on Google
Drive (`mount_drive = None` means "in Colab").""")

COMMON_PARAMS = '''config_file = None  # None: the homework's values; or a shipped config (e.g. "nano-cpu", "breeze-colab-t4") or a file
mount_drive = None  # None: on in Colab (output_dir on Google Drive, survives disconnects, shared by the notebooks)
hub_cache_on_drive = False  # True (Colab): downloaded models kept on Drive: ~15 GB of Drive for Breeze, slower loads, no re-download per runtime'''


def knob_lines(keys: list[str]) -> str:
    """One parameters-cell line per config key: None (keep the config file's value), the homework's value
    and the field's help text in the comment."""
    return "\n".join(f"{key} = None  # homework: {getattr(DEFAULTS, key)!r}; {FIELDS[key].metadata['help']}" for key in keys)


def parameters(keys: list[str], extra: str = "") -> str:
    return "\n".join(part for part in (COMMON_PARAMS, knob_lines(["output_dir", *keys]), extra.strip()) if part)


def config_cell(knobs: list[str], for_machine: bool = False, shown: str = "describe(cfg)", figures: bool = False) -> str:
    """The cell after the parameters: knob=knob pairs, as many to a line as fit in 120 characters; then it prints
    `shown`. It imports tangpoem.plots too where the notebook draws `figures`."""
    lines = [""]
    for pair in (f"{k}={k}," for k in ["output_dir", *knobs]):
        if lines[-1] and len(lines[-1]) + 1 + len(pair) > 120:
            lines.append("")
        lines[-1] = f"{lines[-1]} {pair}" if lines[-1] else f"    {pair}"
    machine = ", for_this_machine=True" if for_machine else ""
    build = ("lessons.config_from_parameters(config_file, dict(\n" + "\n".join(lines)
             + f"\n), mount_drive{machine}, hub_cache_on_drive=hub_cache_on_drive)")
    modules = "lessons, plots" if figures else "lessons"
    return f"from tangpoem import {modules}\nfrom tangpoem.config import describe\n\ncfg = {build}\nprint({shown})"


def preamble(keys: list[str], extra: str = "", for_machine: bool = False, figures: bool = False) -> list[tuple[str, str]]:
    return [PARAMS_MD, ("parameters", parameters(keys, extra)), INSTALL_MD, ("code", INSTALL), CONFIG_MD,
            ("code", config_cell(keys, for_machine, figures=figures))]


SHOW_FIG = "plots.save_png(fig, lessons.figure_path(cfg, {name!r}))  # writes the PNG and shows it"

LOGIN_MD = ("md", """## Hugging Face 登入 Hub login（TAIDE）

在 Colab 每本筆記本都有自己的執行環境，所以每本會載入 gated 模型（TAIDE）的筆記本都要登入一次；token 從環境變數 `HF_TOKEN`、
Colab 的 🔑 Secrets 或隱藏輸入框來，不會被印出。Breeze 與 nano 不需要登入。

In Colab each notebook has its own runtime, so every notebook that loads a gated model (TAIDE) logs in. The
token comes from `$HF_TOKEN`, a Colab secret or a hidden prompt, and is never shown. Breeze and nano need none.""")
LOGIN = ("code", "print(lessons.hub_login(cfg.model_name_or_path))")

# ----------------------------------------------------------------------------- 01

NB01_KNOBS = ["model_name_or_path", "data_dir", "seed"]
NB01 = header("01_setup", "01 · 環境設定 Setup", """作業五：用 4-bit NF4 + LoRA 微調一個 7B 語言模型（Breeze-7B 或 TAIDE-7B），
給它唐詩的第一聯，讓它寫完整首詩。這本筆記本準備環境：安裝、GPU、亂數種子、資料、Google Drive、Hugging Face 登入。

HW5: fine-tune a 7B LLM with 4-bit NF4 + LoRA so that, given the first couplet of a Tang poem, it writes the
rest. This notebook prepares the runtime: install, GPU check, seeds, data, Google Drive and the hub login.
Notebooks 02–07 follow in order.""") + [
    PARAMS_MD,
    ("parameters", parameters(NB01_KNOBS)),
    INSTALL_MD,
    ("code", INSTALL),
    CONFIG_MD,
    ("code", config_cell(NB01_KNOBS)),
    ("md", """## GPU 檢查 GPU check

4-bit NF4（bitsandbytes）需要 CUDA GPU；Colab 免費的 T4 有 15 GB，沒有 bf16，所以用 fp16 計算。
沒有 GPU 時請用 `configs/nano-cpu.yaml`（內建的小模型 tangpoem-nano）。

4-bit NF4 needs a CUDA GPU. A free Colab T4 has 15 GB and no bf16 (fp16 is used). Without a GPU, use
`configs/nano-cpu.yaml`: tangpoem-nano, a small Tang-poem model that ships with tangpoem."""),
    ("code", "print(lessons.describe_device())"),
    ("md", """## 固定亂數種子 Fixed seeds

同一個種子 → 同樣的資料順序、LoRA 初始值與抽樣結果。後面每一本筆記本的訓練與生成都會用 `cfg.seed` 自己再設一次
（每本都是新的 kernel）。

Same seed, same data order, LoRA initialisation and samples. Training and generation seed themselves from
`cfg.seed` again in later notebooks, since each runs in a fresh kernel."""),
    ("code", "from tangpoem.train import seed_everything\n\nseed_everything(cfg.seed)\nprint(f\"seed = {cfg.seed}\")"),
    ("md", """## 資料 Data

課程的三個檔案：`Tang_training_data.json`（5001 筆）、`Tang_testing_data.json`（15 首）、`Tang_testing_gt.txt`（答案）。
已經在 `data_dir` 就直接用；沒有的話從固定的 commit 下載並檢查 SHA-256。

The course's three files. If they are in `data_dir` they are used as they are; otherwise they are downloaded
from a pinned commit and checked against their SHA-256."""),
    ("code", "print(lessons.prepare_data(cfg.data_dir))"),
    ("md", """## Google Drive（選用 optional）

Colab 斷線時執行環境裡的檔案會消失，而且每本筆記本在 Colab 都有自己的執行環境。所以在 Colab 裡（`mount_drive = None`，
預設）上面的設定格會掛載 Google Drive，並把相對路徑的 `output_dir` 放到 `MyDrive/tangpoem/` 底下，checkpoint 才留得住，
下一本筆記本也找得到。`mount_drive = False` 關掉；不在 Colab 時不做事。

A Colab disconnect loses the runtime's files, and each notebook gets its own runtime. So in Colab
(`mount_drive = None`, the default) the config cell above mounted Drive and moved a relative `output_dir` under
`MyDrive/tangpoem/`, where checkpoints survive and the next notebook finds them. `mount_drive = False` turns it off.

`hub_cache_on_drive = True` 把下載的模型也放到 Drive：Breeze 約占 15 GB 的 Drive 空間、載入較慢（Drive 比執行環境的磁碟慢），
但每個新的執行環境不必再下載一次。預設關閉。
`hub_cache_on_drive = True` keeps the downloaded models on Drive too: ~15 GB of Drive for Breeze and slower
loads (Drive reads slower than the runtime's disk), but no 15 GB download in every new runtime. Off by default."""),
    ("code", "print(f\"output_dir: {cfg.output_dir}\")"),
    ("md", """## 選模型 Breeze 還是 TAIDE？ Choosing the model

作業可以用兩個繁體中文 7B 模型，`model_name_or_path` 二選一（預設 Breeze）：

| | Breeze-7B-Instruct v0.1 | TAIDE-LX-7B-Chat |
|---|---|---|
| hub id | `MediaTek-Research/Breeze-7B-Instruct-v0_1` | `taide/TAIDE-LX-7B-Chat` |
| 基底 base model | Mistral-7B（聯發科創新基地 MediaTek Research 繼續預訓練 + 指令微調） | Llama-2-7B（國科會 TAIDE 計畫，繁中繼續預訓練 + 指令微調） |
| tokenizer | Mistral 的 32k 詞表擴充到 61,952（多了約 3 萬個繁中 token） | Llama-2 的 32k 詞表加上 24,720 個中文字詞 |
| 上下文 context | 32k（sliding window 4k） | 4k |
| 授權 licence | Apache-2.0 | TAIDE L 類模型社群授權同意書（TAIDE L Models Community License） |
| 下載 access | 公開，不需登入 | gated：先在模型頁面同意授權，再登入（下一格） |

怎麼選：兩者都是 7B、都用同一個 prompt 與同樣的 4-bit + LoRA，T4 上的記憶體與時間相近。想立刻開始、不想處理授權，用 Breeze；
想比較 Llama-2 系的 TAIDE（或課程要求），先到 huggingface.co/taide/TAIDE-LX-7B-Chat 同意條款，設 `model_name_or_path = "taide/TAIDE-LX-7B-Chat"`。
兩者的 BOS/EOS 都是 `<s>`/`</s>`，都沒有 pad token（tangpoem 用 `<unk>` 補，見 04）。

Both are 7B Traditional-Chinese models that take the same prompt and the same 4-bit + LoRA recipe, with
similar memory and time on a T4. Breeze (Mistral-7B base, vocabulary extended to 61,952 tokens, Apache-2.0)
downloads without a login. TAIDE (Llama-2-7B base, 24,720 Chinese tokens added, the TAIDE L Models Community
License) is gated: accept its licence on its hub page, then log in below. Choose Breeze to start at once;
choose TAIDE to compare a Llama-2 family model or when the course asks for it."""),
    ("md", """## Hugging Face 登入 Hub login（TAIDE）

TAIDE 是 gated 模型，要先在模型頁面同意條款，再登入。**token 絕不寫進筆記本**：這格依序用環境變數 `HF_TOKEN`、
Colab 的 🔑 Secrets（名稱 `HF_TOKEN`），最後才用隱藏輸入框詢問；token 不會被印出或存進輸出。Breeze 不需要登入。
之後每本會載入模型的筆記本（02、03、05、06）都會再登入一次，因為在 Colab 它們各有自己的執行環境。

TAIDE is gated: accept its terms on the model page, then log in. The token never goes into the notebook: it is
read from `$HF_TOKEN`, a Colab secret named `HF_TOKEN`, or a hidden prompt, and is never printed.
Headless runs skip the prompt (set `HF_TOKEN` in the environment instead). Breeze needs no login. Notebooks
02, 03, 05 and 06 log in again: in Colab each has a runtime of its own."""),
    LOGIN,
    ("md", "下一步 Next: **02 · 模型與 tokenizer**（4-bit 載入、tokenizer、attention mask）。"),
]

# ----------------------------------------------------------------------------- 02

NB02_KNOBS = ["model_name_or_path", "load_in_4bit", "compute_dtype", "device", "trust_remote_code"]
NB02 = header("02_model_and_tokenizer", "02 · 模型與 Tokenizer  Model and tokenizer", """載入模型（在 GPU 上用 4-bit NF4），
看 tokenizer 怎麼把文字變成 token id，以及為什麼批次 padding 一定要搭配 attention mask。

Load the model (4-bit NF4 on a GPU), watch the tokenizer turn text into token ids, and see why a padded
batch needs its attention mask.""") + preamble(NB02_KNOBS, '''
example_text = "相見時難別亦難，東風無力百花殘。"  # the text the tokenizer cells take apart''', for_machine=True) + [
    LOGIN_MD,
    LOGIN,
    ("md", """## 4-bit NF4 量化設定 The quantization config

7B 模型的權重用 fp16 要約 14 GB，T4 放不下還要訓練；NF4 每個參數只用 4 bits（依常態分布的分位數設計，適合權重的分布），
double quantization 再把量化常數也量化（每參數約省 0.4 bit）。矩陣乘法時權重暫時還原成 `bnb_4bit_compute_dtype`。
沒有 GPU 時這裡只「顯示」會用的設定（T4 的 fp16），模型本身不量化載入。

A 7B model's fp16 weights take ~14 GB: too much for a T4 that must also train. NF4 stores each weight in 4
bits (quantiles of a normal distribution, matching how weights are spread); double quantization also
quantizes the scaling constants. Each matmul dequantizes to `bnb_4bit_compute_dtype`. On a CPU this cell shows
the config a T4 would use; the model below is then loaded without 4-bit. The table reads the fields of the
real `BitsAndBytesConfig` that `load_base_model` passes to `from_pretrained` (tangpoem.model.quantization_config)."""),
    ("code", """quantization = lessons.quantization_config_for(cfg)  # a transformers BitsAndBytesConfig
lessons.fields_table(quantization, lessons.QUANTIZATION_FIELDS)"""),
    ("md", "## 載入模型與 tokenizer  Load the model and tokenizer"),
    ("code", """from tangpoem.model import load_base_model, load_tokenizer

model, tokenizer = load_base_model(cfg), load_tokenizer(cfg)
print(f"{model.num_parameters():,} parameters, {model.get_memory_footprint() / 2**30:.2f} GiB in memory")"""),
    ("md", "同樣的參數量在不同精度下權重要多少記憶體 — weights alone, at each precision, for this model's size:"),
    ("code", "lessons.weight_memory(model.num_parameters())"),
    ("md", """## Tokenizer 實際運作 The tokenizer at work

`input_ids` 是 token 的編號（開頭的 BOS `<s>` 是 tokenizer 自動加的），`attention_mask` 標出哪些位置是真的內容（1）。
`convert_ids_to_tokens` 看每個 id 對應的 token，`decode` 把 id 變回文字。

`input_ids` are token numbers (the tokenizer adds BOS `<s>` in front); `attention_mask` marks real tokens
with 1. `convert_ids_to_tokens` shows each token, `decode` turns ids back into text."""),
    ("code", """encoded = tokenizer(example_text)
print("input_ids:     ", encoded["input_ids"])
print("attention_mask:", encoded["attention_mask"])
print("tokens:        ", tokenizer.convert_ids_to_tokens(encoded["input_ids"]))
print("decoded:       ", tokenizer.decode(encoded["input_ids"]))"""),
    ("md", """## Padding 與 attention mask

一個批次裡的句子長短不同，短的要補 pad。生成時補在**左邊**，新的 token 才會接在每句最後面。
pad 的位置 `attention_mask` 是 0。

Rows of a batch differ in length, so short ones are padded. For generation the padding goes on the **left**, so
new tokens follow each prompt; padded positions have attention mask 0."""),
    ("code", """tokenizer.padding_side = "left"
batch = tokenizer([example_text[:7], example_text], padding=True, return_tensors="pt")
print(batch["input_ids"])
print(batch["attention_mask"])"""),
    ("md", """拿掉 attention mask 會怎樣？短句補了很多 pad。下表取每一句「單獨跑」時最可能的下一個 token，比較它的機率：
單獨跑、補 pad 並帶 mask、補 pad 但不帶 mask。帶 mask 時機率和單獨跑一樣（只差浮點誤差）；不帶 mask 時模型把 pad 也當成內容讀進去，
機率就變了，最可能的 token 常常也換了（最後一欄）。沒有補 pad 的長句則不受影響。

What if the mask is left out? The short row gets many pads. For each row's most likely next token when run
alone, the table gives its probability alone, padded with the mask, and padded without it. With the mask it
matches (float noise); without it the model reads the pads as text, the probability moves and often the
prediction itself changes (last column). The unpadded row is unaffected."""),
    ("code", "lessons.attention_mask_demo(model, tokenizer, [example_text[:4], example_text])", ["demo-mask"]),
    ("md", "下一步 Next: **03 · 解碼**（temperature、top-k、top-p、長度、no-repeat n-gram）。"),
]

# ----------------------------------------------------------------------------- 03

GEN_KNOBS = ["seed", "do_sample", "temperature", "top_k", "top_p", "no_repeat_ngram_size", "max_new_tokens"]
NB03_KNOBS = ["model_name_or_path", "load_in_4bit", "prompt_mode", "data_dir", *GEN_KNOBS]
NB03 = header("03_decoding", "03 · 解碼 Decoding", """模型每一步只給出「下一個 token 的機率分布」；怎麼從分布裡挑 token 就是解碼。
這裡用模型真正的分布看 temperature、top-k、top-p，再看最大長度與 no-repeat n-gram、作業的設定為什麼讓很多首詩同一個開頭，
最後記下**微調前**模型對作業三個示範上聯的回答。

At each step the model gives a distribution over the next token; decoding is how a token is picked from it.
We look at temperature, top-k and top-p on the model's real distributions, then at the length limit and
no-repeat n-grams, and at why the homework's decoding gives many poems one opening, and keep the model's poems
for the homework's three demo couplets **before fine-tuning**.""") + preamble(
    NB03_KNOBS, '''
temperatures = [0.1, 0.5, 1.0, 2.0]  # the temperatures drawn side by side
answer_prefix = "春蠶到死"  # the start of an answer, so we look at a next character mid-verse
top_n = 20  # candidates drawn in the plots
demo_top_k = 5  # k in the top-k panel (the homework's top_k of 50 keeps all top_n shown: nothing would be cut)''', for_machine=True,
    figures=True) + [
    LOGIN_MD,
    LOGIN,
    ("md", "## 載入模型（還沒微調） Load the base model (no adapter)"),
    ("code", """from tangpoem.generate import DEMO_COUPLETS, demo_rows, generate, load_for_generation

model, tokenizer, _ = load_for_generation(cfg, adapter=None)"""),
    ("md", """## 下一個 token 的分布 The next-token distribution

給模型作業的 prompt（第一個示範上聯）加上答案的開頭 `answer_prefix`，看它對下一個字的前 `top_n` 個候選。

The homework prompt for the first demo couplet, plus the start of an answer; these are the model's `top_n`
candidates for the next character, with their probabilities (T = 1), the running total, and which ones
top-k (k = `demo_top_k`) and top-p (the config's `top_p`) keep."""),
    ("code", """dist = lessons.next_token_distribution(model, tokenizer, cfg, DEMO_COUPLETS[0], answer_prefix, top_n)
print(f"after: {dist.context}")
lessons.candidates_table(dist, demo_top_k, cfg.top_p)""", ["demo-top-k"]),
    ("md", """## Temperature 溫度

抽樣前 logits 先除以 T：T < 1 讓高機率的更高（作業用 0.1，幾乎等於 greedy），T > 1 讓分布變平、更隨機。

Logits are divided by T before the softmax: T < 1 sharpens (the homework's 0.1 is nearly greedy), T > 1
flattens and makes samples more random."""),
    ("code", """fig = plots.temperature_figure(dist.top_labels, {t: dist.top_probs(t) for t in temperatures})
""" + SHOW_FIG.format(name="03_temperature"), ["figure"]),
    ("md", """## Top-k 與 top-p

top-k 只留機率最高的 k 個；top-p（nucleus）留下「機率加總剛好達到 p」的最少幾個。被濾掉的（灰色）不會被抽到。
這張圖在 T = 1 下畫，判斷保留與否用的是 transformers 生成時同一套 warper。左圖用 `demo_top_k`（作業的 top_k = 50
比圖上的候選還多，什麼都不會被濾掉）；右圖是作業的 top_p = 0.3。

top-k keeps the k most likely tokens; top-p (nucleus) keeps the fewest whose probabilities reach p. Grey tokens
can never be sampled. Drawn at T = 1, with the same warpers `generate` uses deciding what is kept. The left
panel uses `demo_top_k` (the homework's top_k = 50 is more than the candidates shown, so it would cut none);
the right one the config's top_p (the homework's 0.3)."""),
    ("code", """kept_k, kept_p = dist.kept(top_k=demo_top_k), dist.kept(top_p=cfg.top_p)
fig = plots.top_k_top_p_figure(dist.top_labels, dist.top_probs(), kept_k, kept_p, demo_top_k, cfg.top_p)
""" + SHOW_FIG.format(name="03_top_k_top_p"), ["figure"]),
    ("md", """## 最大長度與 no-repeat n-gram  Length and repetition

`max_new_tokens` 是答案最多幾個 token（到了就停，即使詩還沒寫完）；`no_repeat_ngram_size = 3` 禁止任何連續 3 個 token 重複出現，
避免模型原地打轉。同一個上聯，不同設定：

`max_new_tokens` caps the answer (it stops there even mid-poem); `no_repeat_ngram_size = 3` forbids any
3 tokens from appearing twice, so the model cannot loop. One couplet, several settings:"""),
    ("code", """lessons.compare_decoding(model, tokenizer, cfg, DEMO_COUPLETS[0], {
    "greedy (do_sample=False)": dict(do_sample=False, no_repeat_ngram_size=0),
    "greedy + no_repeat_ngram_size=3": dict(do_sample=False, no_repeat_ngram_size=3),
    "T=1.0, top_k=0, top_p=1.0 (pure sampling)": dict(temperature=1.0, top_k=0, top_p=1.0),
    "homework 作業設定": {},
    "homework, max_new_tokens=12": dict(max_new_tokens=12),
})"""),
    ("md", """## 同一個開頭 One opening for many couplets

作業的設定（T = 0.1、top-p = 0.3）幾乎每一步都挑機率最高的字。模型對答案第一個字的分布常常很平（最高的也只有百分之幾），
這時最高的那個字往往不管上聯是什麼都一樣，於是很多首詩用同一個開頭（小模型像 tangpoem-nano 特別明顯）。下面是 15 首測試詩
的第一句：作業設定一欄，T 調高、top-p 放寬的一欄；最後一列是最常見的開頭（前四個字）出現幾次。作業仍用它自己的設定，
這裡只是看解碼會改變什麼。

The homework's decoding (T = 0.1, top-p = 0.3) nearly always takes the likeliest character. The model's
distribution over an answer's first character is often flat (the likeliest has a few percent), and then the
likeliest is often the same whatever the couplet, so many poems open alike (a small model such as tangpoem-nano
shows it most). The 15 test poems' first verses with the homework's decoding and with a higher temperature and a
wider top-p; the last row counts each column's commonest opening (first four characters). The homework keeps its
own decoding: this shows what decoding changes."""),
    ("code", """from tangpoem.data import load_test_rows

print(lessons.prepare_data(cfg.data_dir))
test_couplets = [row.input for row in load_test_rows(cfg.data_dir)]
lessons.openings(model, tokenizer, cfg, test_couplets, {  # 16 new tokens: the first verse is enough
    "homework 作業設定": dict(max_new_tokens=16),
    "T=0.8, top_p=0.9": dict(temperature=0.8, top_p=0.9, max_new_tokens=16),
})""", ["openings"]),
    ("md", """## 微調前的詩 Poems before fine-tuning

作業的三個示範上聯，用作業的解碼設定。結果存進 `output_dir`，06 會把它們和微調後的放在一起比較。

The homework's three demo couplets with the homework's decoding. Saved in `output_dir` for 06's before/after table."""),
    ("code", """before = generate(model, tokenizer, demo_rows(DEMO_COUPLETS), cfg)
print(lessons.save_demo_poems(cfg, DEMO_COUPLETS, before))
lessons.poems_table(DEMO_COUPLETS, before, "before fine-tuning 微調前")"""),
    ("md", "下一步 Next: **04 · 資料與 token**（資料集、prompt、label mask）。"),
]

# ----------------------------------------------------------------------------- 04

NB04_KNOBS = ["model_name_or_path", "prompt_mode", "data_dir", "num_train_data", "cutoff_len"]
NB04 = header("04_data_and_tokens", "04 · 資料與 Token  Data and tokens", """訓練資料長什麼樣子、多長、
作業的 prompt，以及最重要的：**loss 只看哪些 token**（label mask）。

What the training rows look like, how long they are, the homework's prompt and, most important, **which
tokens the loss learns** (the label mask).""") + preamble(NB04_KNOBS, '''
example_index = 0  # the row drawn token by token''', figures=True) + [
    ("md", "## 資料集 The dataset\n\n每筆有 instruction、input（第一聯）、output（詩的其餘部分）。 Each row: instruction, input (the first couplet), output (the rest)."),
    ("code", """from tangpoem.data import load_train_rows

print(lessons.prepare_data(cfg.data_dir))
rows = load_train_rows(cfg.data_dir, cfg.num_train_data)
lessons.rows_table(rows, limit=3)"""),
    ("md", """## Tokenize 與長度 Tokenizing and lengths

每筆變成 prompt + 答案 + EOS 的 token；超過 `cutoff_len` 的只截答案。左圖是答案的字數（五言/七言、絕句/律詩），右圖是每筆的 token 數。

Each row becomes prompt + answer + EOS tokens; past `cutoff_len` only the answer is cut. Left: answer length in
characters (5- or 7-character verses, 4 or 8 of them); right: tokens per row against `cutoff_len`."""),
    ("code", """from tangpoem.model import load_tokenizer
from tangpoem.tokens import encode_training_rows

tokenizer = load_tokenizer(cfg)
encoded = encode_training_rows(tokenizer, rows, cfg.cutoff_len, cfg.prompt_mode)
print(encoded.summary())"""),
    ("code", """fig = plots.length_figure([len(r.output) for r in rows], [len(r.input_ids) for r in encoded.rows], cfg.cutoff_len)
""" + SHOW_FIG.format(name="04_lengths"), ["figure"]),
    ("md", """## 作業的 prompt  The course prompt

訓練和生成用同一個函式組 prompt（只有一份）。模型的答案接在 `[/INST]` 後面。

Training and generation build the prompt with the same function; the answer follows `[/INST]`."""),
    ("code", """from tangpoem.prompt import build_prompt

row = rows[example_index]
print(build_prompt(tokenizer, row.instruction, row.input, cfg.prompt_mode))
print(row.output)"""),
    ("md", """## Label mask：loss 看哪些 token

`labels` 和 `input_ids` 一樣長；prompt 的位置設成 `IGNORE_INDEX`（-100），loss 不算它們，模型只學「接下來的詩」和結尾的 EOS `</s>`
（學會 EOS 才知道什麼時候停）。橘色 = 計入 loss，淺色 = 被遮住。

`labels` has one entry per token; prompt positions are `IGNORE_INDEX` (-100) and left out of the loss, so the
model learns the rest of the poem and the closing EOS (which teaches it to stop). Orange: learned; pale: masked."""),
    ("code", """tokens, learned = lessons.row_tokens(tokenizer, encoded.rows[example_index].input_ids, encoded.rows[example_index].labels)
fig = plots.label_mask_figure(tokens, learned, per_line=20)
""" + SHOW_FIG.format(name="04_label_mask"), ["figure"]),
    ("md", """## 一個批次 A batch

`collate` 把幾筆補到一樣長（右邊補 pad）。這裡拿最短和最長的兩筆，表格是短的那筆的結尾：答案的最後幾個字、EOS `</s>`，
然後是 pad（`<unk>`）：pad 的 `attention_mask` 是 0，`labels` 是 -100，所以 pad 既不被讀、也不進 loss；EOS 的 label 是它自己，模型學會停。

`collate` pads rows to one length, on the right. Here the shortest and the longest rows; the table is the end
of the shorter one: the answer's last tokens, EOS, then the pads (`<unk>`) with attention mask 0 and label
-100, so they are neither read nor learned. EOS keeps its own id as label: the model learns to stop."""),
    ("code", """from tangpoem.tokens import collate

batch = collate(lessons.shortest_and_longest(encoded.rows), tokenizer.pad_token_id)
print({name: tuple(t.shape) for name, t in batch.items()})
lessons.batch_table(batch, tokenizer, row=0)  # where the shorter row ends and its padding starts""", ["demo-batch"]),
    ("md", """## 和作業程式碼的差別 What tangpoem changes from the homework's code

作業的程式碼有三個會悄悄傷害訓練或生成的地方，tangpoem 各改了一處：

| 作業 the homework's code | tangpoem | 避免的 bug the bug it avoids |
|---|---|---|
| 載入時 `tokenizer.pad_token = tokenizer.eos_token`（訓練前才改成 `pad_token_id = 0`） | pad 一律用 `<unk>`（`model.fix_pad_token`），labels 由長度決定、不看 pad id | pad = EOS 時，按 pad id 遮 label 的 collator 會連真正的 EOS 一起遮掉：模型學不會停，一直寫到 `max_new_tokens` |
| tokenizer 設 `add_eos_token=True`：微調前推論的 prompt 結尾也多了 `</s>` | 只在訓練答案的後面加 EOS；推論的 prompt 不加（`tokens.encode_prompt`） | prompt 以 EOS 結尾等於告訴模型「文字已經結束」，和訓練時看到的 prompt 不一樣 |
| prompt 長度用 `padding="max_length"` 量，再交給 `DataCollatorForLanguageModeling` | `tokens.encode_training_row` 直接寫 labels（prompt = -100），`collate` 保留它們 | 量出來的長度永遠是 `cutoff_len`（下一格），而且那個 collator 又從 `input_ids` 重建 labels：prompt mask 從沒進到 loss，模型也在學背 prompt |

The homework's code has three quiet bugs; tangpoem changes one thing for each. Pad with `<unk>`, never EOS
(the homework's loading cell sets pad = EOS; a collator that masks pad ids then masks the real EOS too, so the
model never learns to stop). No EOS at the end of the inference prompt (its `add_eos_token=True` tokenizer
appended one before fine-tuning: a prompt that says "the text ends here", unlike any training prompt). A label mask that reaches the loss (the homework measured the prompt with
`padding="max_length"`, which always gives `cutoff_len`, and `DataCollatorForLanguageModeling` then rebuilt the
labels from `input_ids` anyway, so the loss also learned the prompt). The next cell measures the prompt both ways."""),
    ("code", "lessons.homework_prompt_length(tokenizer, rows[example_index], cfg.cutoff_len, cfg.prompt_mode)"),
    ("md", "下一步 Next: **05 · 微調**（超參數、LoRA、訓練、loss 曲線）。"),
]

# ----------------------------------------------------------------------------- 05

NB05_KNOBS = ["model_name_or_path", "load_in_4bit", "data_dir", "num_train_data", "cutoff_len", "lora_r",
              "lora_alpha", "lora_dropout", "lora_target_modules", "seed", "num_epochs", "max_steps",
              "learning_rate", "micro_batch_size", "batch_size", "warmup_steps", "logging_steps", "save_steps",
              "save_total_limit", "gradient_checkpointing", "checkpointed_layers", "val_size", "best_metric", "report_to"]
NB05 = header("05_finetune", "05 · 微調 Fine-tuning", """用 LoRA 微調：凍結（4-bit 的）原模型，只訓練插在旁邊的小矩陣。
先看超參數，再一步一步準備（資料、模型、LoRA、optimizer），讀訓練迴圈，訓練，最後畫 loss 曲線。

LoRA fine-tuning: the (4-bit) base model stays frozen and only small matrices beside it are trained. The
hyperparameters; the set-up step by step (data, model, LoRA, optimizer); the training loop, read and run; the
loss curve.""") + [
    ("md", """## 超參數 Hyperparameters（papermill 參數）

作業的旋鈕都在這一格，預設就是作業的值：
- `num_train_data`：用前幾筆訓練（作業 1040，最多 5001；越多越好但越久）。
- `batch_size` / `micro_batch_size`：每次更新看 16 筆，但一次只放 4 筆進 GPU，累積 4 次梯度（`gradient_accumulation_steps` 在下一格算出，不是參數）。
- `learning_rate` 3e-4、`warmup_steps` 50：先線性升溫再線性下降。
- `num_epochs` / `max_steps`：跑幾輪，或最多幾步（`max_steps` 用於快速測試）。
- `lora_r` 8、`lora_alpha` 16、`lora_dropout` 0.05、`lora_target_modules`：LoRA 矩陣的秩、縮放（alpha/r）、dropout，插在哪些線性層。
- `save_steps` / `save_total_limit`：每幾步存一個 checkpoint、最多留幾個；`logging_steps`：每幾步記一次 loss。
- `gradient_checkpointing`：省記憶體（T4 需要），慢約 30%。`checkpointed_layers`：只有前 N 層重算，後面的層留著 activation，比較快但比較佔記憶體（`breeze-colab-t4` 設 20，共 32 層；記憶體不夠就設 32，每層都重算）。
- 作業的 `VAL_SET_SIZE = 0`：不切驗證集，每一筆都拿來訓練；tangpoem 的 `val_size` 預設也是 0。設成例如 64，就在第 1040 筆之後留 64 筆課程資料，每次存檔都驗證（loss 與詩的分數），`checkpoint_index = "best"` 依 `best_metric` 挑最好的 checkpoint；`report_to` 送到 TensorBoard 或 trackio（提早停止的 `early_stopping_patience` 寫在設定檔裡）。

**要多久？** 作業說在 Colab 的 T4 上：1040 筆約 25 分鐘（整本約 50 分鐘），5000 筆約 100 分鐘（整本約 120 分鐘）。
tangpoem 的 `breeze-colab-t4` 跑一樣的步數（1040 筆 = 65 步），但**我們沒有在真的 T4 上量過**，請把作業的數字當作估計。

The homework's knobs with its values. Each step sees `batch_size` rows, `micro_batch_size` at a time, so
gradients accumulate `batch_size / micro_batch_size` times (derived in the next cell, never a parameter).
With `gradient_checkpointing`, only the first `checkpointed_layers` layers recompute in the backward; the others
keep their activations: faster, more memory (`breeze-colab-t4`: 20 of 32; set 32 if a T4 runs out of memory).
The homework's `VAL_SET_SIZE = 0` keeps no validation rows: every row trains; tangpoem's `val_size` is 0 by
default too. Set it (e.g. 64) to score every save on course rows after the training ones (loss and the poems'
grades); `checkpoint_index = "best"` then picks by `best_metric`, and `report_to` sends it all to TensorBoard or
trackio (`early_stopping_patience`, in a config file, stops a run that no longer improves).
**How long?** The homework gives, on a Colab T4: ~25 min of fine-tuning for 1040 rows (~50 min for the whole
notebook) and ~100 min for 5000 rows (~120 min). tangpoem's `breeze-colab-t4` runs the same 65 steps for 1040
rows, but has **not been timed on a real T4**: take the homework's figures as the estimate."""),
    ("parameters", parameters(NB05_KNOBS, '''
resume = "auto"  # "auto": continue from the latest checkpoint in output_dir if there is one (after a disconnect); True / False force it''')),
    INSTALL_MD,
    ("code", INSTALL),
    CONFIG_MD,
    ("code", config_cell(NB05_KNOBS, for_machine=True, figures=True,
                         shown='describe(cfg), f"gradient_accumulation_steps = {cfg.gradient_accumulation_steps}", sep="\\n"')),
    LOGIN_MD,
    LOGIN,
    ("md", """## 準備 Set-up

`prepare` 做訓練前的每一件事，然後交給迴圈：固定亂數種子、tokenize 資料（含 label mask，見 04）、載入原模型（GPU 上是 4-bit NF4）、
k-bit 準備、加上 LoRA、AdamW optimizer 與 warmup + 線性下降的學習率；`output_dir` 已有 checkpoint 時（`resume`）從那裡接著訓練。

`prepare` does everything before the loop: seeds, the tokenized rows with their label mask (see 04), the base
model (4-bit NF4 on a GPU), the k-bit preparation, the LoRA adapters, AdamW and the warmup-then-linear
schedule; with `resume`, the state of the last checkpoint in `output_dir`."""),
    ("code", """from tangpoem import train

print(lessons.prepare_data(cfg.data_dir))
run = train.prepare(cfg, resume)"""),
    ("md", """## LoRA 設定 The LoraConfig

LoRA 在每個目標線性層旁加上兩個小矩陣 B·A（秩 r），原本的權重 W 凍結不動：輸出是 W·x + (alpha/r)·B·A·x。
這是 `prepare` 交給 peft 的那個 `LoraConfig`（`tangpoem.model.lora_config`）。

Beside each target layer LoRA adds B·A of rank r while W stays frozen: W·x + (alpha/r)·B·A·x. This is the
`LoraConfig` that `prepare` gave peft (`tangpoem.model.lora_config`)."""),
    ("code", """from tangpoem.model import lora_config

lessons.fields_table(lora_config(cfg), lessons.LORA_FIELDS)"""),
    ("md", """## 可訓練的參數與 k-bit 準備 Trainable parameters and the k-bit preparation

下表是模型的參數：可訓練的只有 LoRA 矩陣。占比看模型大小：作業的 Breeze-7B 用 r = 8 插在 7 種線性層，
每層 655,360 個、32 層共約 2,100 萬，占 74.9 億的 **0.28%**；小小的 nano 占比大得多（表中的數字）。

k-bit 準備（`peft.prepare_model_for_kbit_training`，只對 4-bit 模型）：凍結所有原本的權重；把不是 4-bit 的參數
（embedding、LayerNorm/RMSNorm、`lm_head`）從 fp16/bf16 轉成 **fp32**，因為 fp16 訓練時這些地方的數值最容易溢位或失準；
再開 gradient checkpointing，並讓 embedding 的輸出需要梯度，梯度才能穿過被重算的層流到 LoRA。代價是 Breeze 的兩個
embedding 矩陣（61,952 × 4,096）變成 fp32，多用約 1 GB。在 GPU 上下表會看到 `nf4 (in uint8)` 的凍結權重和 fp32 的其餘部分；
在 CPU 上沒有 4-bit，全部是 float32。

The table counts the model's parameters: only the LoRA matrices train. Their share depends on the model's
size: the homework's Breeze-7B with r = 8 on the seven projections has 655,360 per layer, ~21 M over 32 layers,
**0.28%** of 7.49 B; tiny nano's share is far larger (the table's figure). The k-bit preparation
(`peft.prepare_model_for_kbit_training`, 4-bit models only) freezes every base weight, casts what is not 4-bit
(embeddings, norms, `lm_head`) from fp16/bf16 to **fp32**, where fp16 training overflows or loses precision
first, and turns on gradient checkpointing with input gradients so that gradients reach the adapters through
the recomputed layers. The price: Breeze's two 61,952 × 4,096 embedding matrices in fp32, ~1 GB more. On a
GPU the table shows the frozen `nf4 (in uint8)` weights beside fp32 ones; on a CPU everything is float32."""),
    ("code", "lessons.parameters_table(run.model)"),
    ("md", """## 訓練迴圈 The training loop

這就是 `train.train_loop`：Hugging Face 課程的迴圈（forward、backward、optimizer step），加上梯度累積、clipping，
每一步結束把 loss 交給 callbacks（記錄、印出、存 checkpoint）。

This is `train.train_loop`: the Hugging Face course's loop (forward, backward, optimizer step) plus gradient
accumulation and clipping; each step's figures go to the callbacks (history, log lines, checkpoints)."""),
    ("code", """import inspect

print(inspect.getsource(train.train_loop))"""),
    ("md", """## 訓練 Train

每 `logging_steps` 步印一行 loss（手動執行的筆記本另有一條進度條）；每 `save_steps` 步存一個 checkpoint 到 `output_dir`。
Colab 斷線後重新執行整本：`resume = "auto"` 會從最後一個 checkpoint 接著訓練。`run.modes` 是設定檔打開的加速選項
（作業的設定沒有開任何一個）。

A loss line every `logging_steps` steps (a notebook run by hand also gets one live bar); a checkpoint in
`output_dir` every `save_steps`. After a disconnect, run the notebook again: `resume = "auto"` continues from the
last checkpoint. `run.modes` are the speed levers the config turns on (the homework's turns on none)."""),
    ("code", """from tangpoem.callbacks import Callbacks, default_callbacks
from tangpoem.checkpoints import list_checkpoints

with run.modes:
    train.train_loop(run, Callbacks(default_callbacks(run)))
print(f"{len(run.history)} steps; checkpoints: {[p.name for p in list_checkpoints(run.output_dir)]}")""", ["training"]),
    ("md", """## Loss 曲線 The loss curve

淡藍線是每一步的訓練 loss（很吵），粗藍線是它的移動平均（EMA），標題寫的是平滑後的 loss；灰色虛線是學習率（warmup 之後線性下降）。
loss 下降代表模型越來越會接這些詩。

Faint blue: the training loss of each step (noisy); bold blue: its moving average (EMA), which the title quotes;
grey: the learning rate (warmup, then linear decay)."""),
    ("code", "fig = plots.loss_figure(run.history)\n" + SHOW_FIG.format(name="05_loss"), ["figure"]),
    ("md", """## 驗證 Validation

`val_size > 0` 時，每次存檔都用沒訓練過的課程資料驗證：左邊是驗證 loss 和訓練 loss，右邊是驗證詩的分數（字的 F1、格式、平仄、押韻）。
它們不一定一起變好（例如平仄可能下降），06 的 `checkpoint_index = "best"` 依 `best_metric` 選最好的那個。
TensorBoard（`report_to: tensorboard`）：`%load_ext tensorboard`，再 `%tensorboard --logdir <output_dir>/tensorboard`。

With `val_size > 0` every save is checked on course rows the run never trains on: left, the validation loss beside
the training loss; right, the validation poems' scores (char F1, form, 平仄, rhyme). They need not improve together
(平仄 may fall); `checkpoint_index = "best"` in 06 picks the best by `best_metric`. TensorBoard (`report_to:
tensorboard`): `%load_ext tensorboard`, then `%tensorboard --logdir <output_dir>/tensorboard` (docs/tracking.md)."""),
    ("code", "fig = plots.validation_figure(run.history, run.eval_history)\n" + SHOW_FIG.format(name="05_validation"), ["figure"]),
    ("md", "下一步 Next: **06 · 生成**（選 checkpoint、寫 results.txt、微調前後比較）。"),
]

# ----------------------------------------------------------------------------- 06

NB06_KNOBS = ["model_name_or_path", "load_in_4bit", "data_dir", "checkpoint_index", "generation_batch_size", *GEN_KNOBS,
              "results_dir"]
NB06_APP = "launch_app = False  # True: the last cell serves a web page to try the model (a public link in Colab)"
NB06 = header("06_generate", "06 · 生成 Generate", """選一個 checkpoint，為 15 首測試詩寫出下文，存成繳交用的 `results.txt`，
再把作業三個示範上聯的微調前後放在一起比較。

Pick a checkpoint, write the 15 test poems into `results.txt` (the file you hand in), and compare the demo
couplets before and after fine-tuning.""") + preamble(NB06_KNOBS, NB06_APP, for_machine=True) + [
    LOGIN_MD,
    LOGIN,
    ("md", """## Checkpoints

05 存下的 checkpoint（只有 LoRA 權重，幾 MB）。`checkpoint_index` 選一個：`-1` 是最後一個。

The checkpoints 05 saved (LoRA weights only, a few MB). `checkpoint_index` picks one; -1 is the last."""),
    ("code", "lessons.checkpoints_table(cfg)"),
    ("md", "## 載入原模型 + 選到的 adapter  Base model plus the chosen adapter"),
    ("code", """from tangpoem.generate import load_for_generation

# the adapter `checkpoint_index` picks, kept apart from the base weights (not merged, even with dense_generation):
# the cells below switch it off for "before" and the app swaps it
model, tokenizer, adapter = load_for_generation(cfg, adapter_apart=True)
print(f"adapter: {adapter}")"""),
    ("md", """## 15 首測試詩 → results.txt

每行是 `編號. 上聯 + 模型寫的下文`，這就是要繳交的格式。One line per poem: `N. couplet + continuation`, the hand-in format."""),
    ("code", """from tangpoem.data import load_test_rows
from tangpoem.generate import generate, write_results

print(lessons.prepare_data(cfg.data_dir))
test_rows = load_test_rows(cfg.data_dir)
results_txt, results_json = write_results(test_rows, generate(model, tokenizer, test_rows, cfg), cfg.results_path)
print(results_txt.read_text(encoding="utf-8"))"""),
    ("md", """## 微調前後 Before and after

「微調前」是 03 存下的原模型回答（沒有的話，這裡把 adapter 關掉再生成一次），「微調後」是加上 adapter 的回答。

"Before" is the base model's answer saved by 03 (or, if missing, this model with its adapter switched off);
"after" is with the adapter."""),
    ("code", """from tangpoem.generate import DEMO_COUPLETS

lessons.before_after(model, tokenizer, cfg, DEMO_COUPLETS)"""),
    ("md", "下一步 Next: **07 · 評分**（和標準答案比較）。"),
    ("md", """## 試玩 Try it in a web page

在網頁上輸入任何上聯，原模型（關掉 adapter）和微調後的模型各寫一首，並標出體裁、每個字的平仄和押韻；可以調整解碼參數、
換 checkpoint。用的就是上面已經載入的模型（記憶體裡只有一份）。在參數格設 `launch_app = True` 再執行這一格；
在 Colab 會得到一個公開的 gradio.live 連結。

Any couplet in, the base model's poem (adapter off) and the fine-tuned one side by side, with form, 平仄 and
rhyme marked; sliders for decoding, a checkpoint picker. It uses the model loaded above (one copy in memory).
Set `launch_app = True` in the parameters cell and run this cell; in Colab you get a public link. From a
terminal: `tangpoem app --config CONFIG`."""),
    ("code", """from tangpoem.app import Poet, build_app, launch

if launch_app:  # needs gradio: %pip install "gradio>=6"; stop the app with app.close()
    app, url, public_url = launch(build_app(Poet(cfg, model, tokenizer, adapter)), share=lessons.in_colab(), block=False)
else:
    print("launch_app is False: set it to True in the parameters cell to try the model in a web page")"""),
]

# ----------------------------------------------------------------------------- 07

NB07 = header("07_grade", "07 · 評分 Grade", """用專案的評分器把 `results.txt` 和標準答案 `Tang_testing_gt.txt` 比較：每首一列，最後一列是平均。

Score `results.txt` against the ground truth with the project's grader: one row per poem and the mean.""") + preamble(["data_dir", "results_dir"], '''
judge_url = None  # an OpenAI-compatible endpoint for the LLM judge, e.g. "http://127.0.0.1:8000/v1" (vLLM, llama.cpp, OpenAI); None: off
judge_model = None  # the judge's model name at that endpoint, e.g. "Qwen/Qwen2.5-7B-Instruct"; the key comes from $OPENAI_API_KEY''') + [
    ("md", """## 分數 Scores

分數都在 0–1，越高越好，比較前先正規化（簡繁、標點）：
- **charF1**：字的重疊（不管位置）；**chrF** / **BLEU**：字元 n-gram 的重疊；**editSim**：1 − 編輯距離。
- **verses ok**：句數和答案一樣；**lengths ok**：每句字數對（五言/七言）。
- **pingze** / **rhyme**：平仄與押韻合不合格律（不看答案，只看詩本身）。

All scores are in [0, 1], higher is better, on normalised text (script variants, punctuation): character
overlap (charF1), character n-grams (chrF, BLEU), edit similarity; the form checks (verse count, verse length);
and prosody (tonal pattern, rhyme), which judge the poem itself, not its match to the answer."""),
    ("code", """print(lessons.prepare_data(cfg.data_dir))
from tangpoem.grade.course import GRADES_FILE, grade_results, grades_table

result = grade_results(cfg)
print(f"graded {result.path}; full report: {cfg.results_path / GRADES_FILE}")
grades_table(result)"""),
    ("md", """## 修補紀錄 Repair notes

評分器會修補常見的格式問題（例如答案重複了上聯），也會註明沒有計分的部分（例如比標準答案多寫的句子），在這裡逐條列出；
什麼都沒有就只說一句檔案格式正確。

The grader repairs common format slips (such as a repeated first couplet) and notes what it did not score
(such as verses past the answer's); each is listed here, or one line says there was nothing to note."""),
    ("code", "print(lessons.repair_notes(result))"),
    ("md", """## LLM 評審 The LLM judge（選用 optional）

課程用 GPT-4 當評審：每首詩給「格式」與「內容」各 0–10 分，格式 ≥ 8、內容 ≥ 7 算通過，再依通過的首數給分。設了 `judge_url`
與 `judge_model`（任何 OpenAI 相容的服務：vLLM、llama.cpp 的 server 或 OpenAI），這格就照同樣的規則評分；沒設的話它會說怎麼打開。
評審的回答存在 `output_dir/judge-cache`，重跑不會再問一次。

The course graded with a GPT-4 judge: a format and a content score (0-10) per poem, passing at 8 and 7, and
marks from the number of poems that pass. With `judge_url` and `judge_model` set (any OpenAI-compatible
endpoint: vLLM, llama.cpp's server, OpenAI) this cell does the same; unset, it says how to turn it on.
Answers are cached in `output_dir/judge-cache`, so a re-run asks nothing twice."""),
    ("code", """lessons.judge_table(result, judge_url, judge_model, cache_dir=f"{cfg.output_dir}/judge-cache")""", ["demo-judge"]),
    ("md", "完成！To re-run everything headless: `tangpoem notebooks run --config configs/nano-cpu.yaml --out runs/nano`."),
]

NOTEBOOKS = {
    "01_setup": NB01, "02_model_and_tokenizer": NB02, "03_decoding": NB03, "04_data_and_tokens": NB04,
    "05_finetune": NB05, "06_generate": NB06, "07_grade": NB07,
}


def build(cells: list[tuple]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}, "colab": {"provenance": []}, "accelerator": "GPU"}
    for kind, text, *tags in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(text)
            cell_tags = ["parameters"] if kind == "parameters" else [*(tags[0] if tags else [])]
            if cell_tags:
                cell.metadata["tags"] = cell_tags
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"c{i:02d}"
    return nb


def main() -> int:
    for name, cells in NOTEBOOKS.items():
        path = NOTEBOOKS_DIR / f"{name}.ipynb"
        nb = build(cells)
        nbformat.validate(nb)
        path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
