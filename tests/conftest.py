"""Shared fixtures: a synthetic parallel corpus (the copy task) written as aligned gzipped files; headless Chromium."""
import gzip
import os
import random
import shutil
from pathlib import Path

import pytest

# Tests never reach the hub: an unknown dataset id fails at once instead of after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = [f"{a}{b}" for a in "bcdfgklmnprst" for b in "aeiou"][:30]


def write_corpus(prefix: Path, pairs: list[tuple[str, str]]) -> str:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for lang, column in (("fr", 0), ("en", 1)):
        with gzip.open(f"{prefix}.{lang}.gz", "wt", encoding="utf-8") as f:
            f.writelines(p[column] + "\n" for p in pairs)
    return str(prefix)


def copy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]
    return [(s, s) for s in sentences]


@pytest.fixture(scope="session")
def copy_corpus(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("copy")
    return {"train": write_corpus(root / "train", copy_pairs(3000, 1)),
            "dev": write_corpus(root / "dev", copy_pairs(60, 2))}


def tiny_config(tmp: Path, corpus: dict[str, str], **train) -> str:
    """A config file for a seconds-long run on the copy corpus."""
    import yaml

    cfg = {"model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "dropout": 0.1},
           "data": {"train": [corpus["train"]], "dev": corpus["dev"], "vocab_size": 60, "max_tokens": 400,
                    "max_len": 32, "dev_bleu_sentences": 20},
           "train": {"max_steps": 40, "warmup_steps": 10, "lr_scale": 2.0, "log_every": 5, "eval_every": 20,
                     "save_every": 10, "threads": 1, **train}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="session")
def copy_model(tmp_path_factory, copy_corpus) -> Path:
    """A small model trained for ~10 s on the copy task (shared by the tests that need a model that works)."""
    from seq2seq.train import main as train_main

    tmp = tmp_path_factory.mktemp("copy_model")
    # peak lr 0.0027: small models take eq. 3 with a short warmup badly at lr_scale 1
    cfg = tiny_config(tmp, copy_corpus, max_steps=600, eval_every=600, save_every=600, warmup_steps=100,
                      lr_scale=0.15)
    code = train_main(["--config", cfg, "--out", str(tmp / "run"), "--dropout", "0", "--d-model", "64",
                       "--d-ff", "128", "--n-layers", "2", "--max-tokens", "800"])
    assert code == 0
    return tmp / "run"


# ---- headless Chromium (tests/test_attention_maps.py, tests/test_web_page.py) ---------------------------------

def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium is not installed (chromium and chromium-driver; scripts/install_chromium.sh "
                    "installs them, and CI runs it)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary  # and the driver's path below: Selenium Manager never goes to the network
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def alphas(elements) -> list[float]:
    """The alpha of each element's computed background colour (0 for transparent)."""
    out = []
    for el in elements:
        colour = el.value_of_css_property("background-color")  # "rgba(r, g, b, a)" or "rgb(r, g, b)"
        parts = colour[colour.index("(") + 1:-1].split(",")
        out.append(float(parts[3]) if len(parts) == 4 else 1.0)
    return out
