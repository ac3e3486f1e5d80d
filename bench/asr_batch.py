"""Batching finals: do two final transcripts in one CTranslate2 call (encode + greedy decode
of a batch of 2) beat two calls, on whisper-base int8 with 2 threads?

    .venv/bin/python bench/asr_batch.py

faster-whisper's own ``BatchedInferencePipeline`` batches the chunks of ONE long audio; two
sessions' finals can only be batched below it, on the CTranslate2 model. Prints best-of-3
times and writes ``bench/results/asr_batch.json``. Needs a quiet machine; the ratio
``batch_over_two_calls`` (below 1: batching wins) is what to read on a busy one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import ctranslate2
    from faster_whisper import WhisperModel

    from models.registry import resolve_asr
    from seetalk.config import ModelConfig
    from voice.audio import load_audio_file, resample

    audios = []
    for i, text in enumerate(QUESTIONS):
        path = f"/tmp/seetalk_asr_batch_{i}.wav"
        subprocess.run(["espeak-ng", "-w", path, text], check=True)
        a, rate = load_audio_file(path)
        audios.append(resample(a, rate, 16_000))
    model = WhisperModel(
        str(resolve_asr(ModelConfig())), device="cpu", compute_type="int8", cpu_threads=2
    )
    tok = model.hf_tokenizer
    prompt = [
        tok.token_to_id(t)
        for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
    ]

    def features(a: np.ndarray) -> np.ndarray:
        f = model.feature_extractor(a)
        out = np.zeros((f.shape[0], 3000), np.float32)
        out[:, : min(3000, f.shape[1])] = f[:, :3000]
        return out

    f1, f2 = (features(a) for a in audios)

    def gen(feats: list[np.ndarray]) -> Any:
        x = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(feats)))
        return model.model.generate(
            model.model.encode(x), [prompt] * len(feats), beam_size=1, max_length=60
        )

    gen([f1])
    gen([f1, f2])  # warm
    res: dict[str, Any] = {}
    for name, fn in (
        ("one_call_ms", lambda: gen([f1])),  # the reference: one whisper-base pass
        ("two_single_calls_ms", lambda: (gen([f1]), gen([f2]))),
        ("one_batch_of_2_ms", lambda: gen([f1, f2])),
    ):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        res[name] = round(best * 1000, 1)
        print(f"{name}: {res[name]}")
    # A ratio survives a busy machine better than the times themselves.
    res["batch_over_two_calls"] = round(res["one_batch_of_2_ms"] / res["two_single_calls_ms"], 3)
    res["load_average"] = round(os.getloadavg()[0], 2)
    print(f"batch of 2 / two calls: {res['batch_over_two_calls']} (load {res['load_average']})")
    res["texts"] = [tok.decode(x.sequences_ids[0]) for x in gen([f1, f2])]
    print(res["texts"])
    out = ROOT / "bench" / "results" / "asr_batch.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
